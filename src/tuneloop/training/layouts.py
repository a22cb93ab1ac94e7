"""The parallel layouts the training loop runs under: one small class per mode.

Every layout answers the same questions, so the loop never branches on the mode:

- `sync(last)`: the context for one micro-batch's forward and backward (gradients are
  reduced across processes only on the step's last micro-batch);
- `backward(loss)`, then `clip(max_norm)` (the gradient norm before clipping) and
  `update()` (the optimizer step), with the loop's non-finite check in between;
- `checkpoint_parts(main)`: full trainable weights (rank 0), the optimizer state to save and
  any extra state, gathered from every process (a collective: every process calls it);
- `load(checkpoint)` and `load_weights(weights, where)` to resume or to restore the best step;
- `release(main)`: hand the caller a plain model (rank 0 saves it like any other run's).

`DDPLayout` is also the single-process layout (accelerate's wrapping is then a no-op).
`FSDPLayout` shards the model with PyTorch FSDP2 (`fully_shard`, one unit per transformer
block) and gathers full weights for checkpoints, so checkpoints look the same whichever way
the run was split. `ZeroLayout` drives DeepSpeed ZeRO through train/zero.py.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from tuneloop.errors import TrainingError
from tuneloop.training import zero


class StateOnly:
    """Stands in for the optimizer when its (gathered) state is all there is to save."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


def trainable_state(model: Any) -> dict[str, Any]:
    """The model's trainable weights by name, as CPU copies."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, weights: dict[str, Any], where: Path) -> None:
    """Copy saved trainable weights into `model`; an error naming the mismatch if the
    checkpoint does not hold exactly this model's trainable weights."""
    import torch

    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:3]
        extra = sorted(set(weights) - expected)[:3]
        raise TrainingError(
            f"checkpoint {where} does not match this model's trainable weights (missing "
            f"{missing}, unexpected {extra}); was the recipe's adapter changed?"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def layout_name(distributed: str, world: int) -> str:
    """The layout a run uses: the recipe's `training.distributed` with several processes,
    else `ddp` (one process needs no sharding)."""
    return distributed if world > 1 else "ddp"


def make_accelerator(cfg: Any, world: int, hidden: int, run_path: Path) -> Any:
    """The `accelerate.Accelerator` for this run's layout (ZeRO builds a DeepSpeed one)."""
    import torch
    from accelerate import Accelerator

    common = {"log_with": cfg.report_to or None, "project_dir": str(run_path)}
    stage = zero.stage_of(cfg.distributed) if world > 1 else None
    if stage:
        return zero.make_accelerator(stage, cfg, world, torch.cuda.is_available(), hidden, **common)
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision="bf16" if cfg.bf16 else "no",
        **common,
    )


Factory = Callable[[], Any]


class Layout:
    """One parallel mode; see the module docstring."""

    name = "ddp"

    def __init__(self, accelerator: Any, net: Any, optimizer: Any) -> None:
        self.accelerator = accelerator
        self.net = net
        self.optimizer = optimizer

    @property
    def model(self) -> Any:
        """The model being trained (inside the objective's module, unwrapped)."""
        return self.accelerator.unwrap_model(self.net).model

    def autocast(self) -> Any:
        return self.accelerator.autocast()

    def sync(self, last: bool) -> Any:
        return nullcontext() if last else self.accelerator.no_sync(self.net)

    def backward(self, loss: Any) -> None:
        self.accelerator.backward(loss)

    def clip(self, max_norm: float) -> float:
        return float(self.accelerator.clip_grad_norm_(self.net.parameters(), max_norm))

    def update(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def checkpoint_parts(self, main: bool) -> tuple[dict[str, Any], Any, dict | None]:
        weights = trainable_state(self.model) if main else {}
        return weights, self.optimizer, None

    def load(self, ckpt: dict[str, Any]) -> None:
        self.load_weights(ckpt["weights"], ckpt["path"])
        self.optimizer.load_state_dict(ckpt["optimizer"]["optimizer"])

    def load_weights(self, weights: dict[str, Any], where: Path) -> None:
        load_trainable_state(self.model, weights, where)

    def release(self, main: bool) -> None:
        pass


class DDPLayout(Layout):
    """Data parallel (and the single-process case): every process holds the whole model;
    accelerate wraps it and all-reduces gradients on the last micro-batch."""

    name = "ddp"


class FSDPLayout(Layout):
    """FSDP2: parameters, gradients and optimizer state sharded over the processes."""

    name = "fsdp"

    @property
    def model(self) -> Any:
        return self.net.model

    def sync(self, last: bool) -> Any:
        self.net.set_requires_gradient_sync(last)  # reduce-scatter on the last micro-batch
        return nullcontext()

    def clip(self, max_norm: float) -> float:
        import torch

        # gradients are DTensor shards; the norm is reduced over processes
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def checkpoint_parts(self, main: bool) -> tuple[dict[str, Any], Any, dict | None]:
        weights, optimizer = _fsdp_full_state(self.net, self.optimizer)
        return weights, StateOnly(optimizer), None

    def load(self, ckpt: dict[str, Any]) -> None:
        _fsdp_load_weights(self.net, ckpt["weights"])
        _fsdp_load_optimizer(self.net, self.optimizer, ckpt["optimizer"]["optimizer"])

    def load_weights(self, weights: dict[str, Any], where: Path) -> None:
        _fsdp_load_weights(self.net, weights)

    def release(self, main: bool) -> None:
        _fsdp_unshard(self.net, main)


class ZeroLayout(Layout):
    """DeepSpeed ZeRO stage 1-3 (train/zero.py): DeepSpeed reduces, clips and updates in
    `step`, which the loop calls as `clip` (it skips a non-finite update itself)."""

    def __init__(self, accelerator: Any, engine: zero.ZeroEngine, optimizer: Any) -> None:
        super().__init__(accelerator, engine.engine, optimizer)
        self.engine = engine
        self.name = f"zero{engine.stage}"

    @property
    def model(self) -> Any:
        return self.engine.model

    def autocast(self) -> Any:
        return self.engine.autocast()

    def sync(self, last: bool) -> Any:
        return nullcontext()  # DeepSpeed reduces when the loop calls step()

    def backward(self, loss: Any) -> None:
        self.engine.backward(loss)

    def clip(self, max_norm: float) -> float:
        return self.engine.step()

    def update(self) -> None:
        pass

    def checkpoint_parts(self, main: bool) -> tuple[dict[str, Any], Any, dict | None]:
        weights = self.engine.trainable_weights(main)
        return weights, StateOnly({}), {"zero": self.engine.optimizer_state()}

    def load(self, ckpt: dict[str, Any]) -> None:
        self.load_weights(ckpt["weights"], ckpt["path"])
        self.engine.load_optimizer_state(ckpt["extra"]["zero"])

    def load_weights(self, weights: dict[str, Any], where: Path) -> None:
        self.engine.load_weights(weights, load_trainable_state, where)

    def release(self, main: bool) -> None:
        self.engine.release(main)


def make_layout(
    name: str,
    accelerator: Any,
    net: Any,
    new_optimizer: Factory,
    new_scheduler: Callable[[Any], Any],
    bf16: bool,
) -> tuple[Layout, Any]:
    """Set up layout `name` for `net` (the objective's module); returns (layout, scheduler).

    The order matters and is the same for every mode: FSDP shards before the optimizer is
    built (it must hold the sharded parameters); the scheduler is built on the client
    optimizer before accelerate or DeepSpeed prepares it (DeepSpeed keeps the client
    optimizer's parameter groups, which the scheduler drives)."""
    if name == "fsdp":
        _fsdp_shard(net, accelerator.num_processes, accelerator.device.type)
        optimizer = new_optimizer()
        scheduler = new_scheduler(optimizer)
        net.train()
        return FSDPLayout(accelerator, net, optimizer), scheduler
    optimizer = new_optimizer()
    scheduler = new_scheduler(optimizer)
    net, prepared = accelerator.prepare(net, optimizer)
    net.train()
    stage = zero.stage_of(name)
    if stage:
        return ZeroLayout(accelerator, zero.ZeroEngine(net, stage, bf16), optimizer), scheduler
    return DDPLayout(accelerator, net, prepared), scheduler


# --- FSDP2 helpers ---------------------------------------------------------------------------


def _fsdp_shard(net: Any, world: int, device_type: str) -> None:
    """Shard `net` over `world` processes: one FSDP unit per transformer block (the classes
    the model names in `_no_split_modules`) plus the root (embeddings, final norm, head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = net.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    block_names = set(getattr(base, "_no_split_modules", None) or [])
    blocks = [m for m in net.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise TrainingError(
            f"training.distributed fsdp: {type(base).__name__} names no transformer block "
            "class (_no_split_modules); use training.distributed ddp"
        )
    mesh = init_device_mesh(device_type, (world,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(net, mesh=mesh)


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _fsdp_full_state(net: Any, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainable weights by parameter name, full optimizer state), gathered on rank 0
    (empty elsewhere). A collective: every process must call it."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    full = get_model_state_dict(net, options=_full_options())
    opt = get_optimizer_state_dict(net, optimizer, options=_full_options())
    names = [n for n, p in net.model.named_parameters() if p.requires_grad]
    weights = {n: full[f"model.{n}"] for n in names} if full else {}
    return weights, opt


def _fsdp_load_weights(net: Any, weights: dict[str, Any]) -> None:
    """Load full trainable weights (every process passes them) into the sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(
        net,
        {f"model.{n}": w for n, w in weights.items()},
        options=StateDictOptions(full_state_dict=True, strict=False),
    )


def _fsdp_load_optimizer(net: Any, optimizer: Any, full: dict[str, Any]) -> None:
    """Load a gathered (full) optimizer state into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(
        net, optimizer, full, options=StateDictOptions(full_state_dict=True, strict=False)
    )


def _fsdp_unshard(net: Any, main: bool) -> None:
    """Gather every weight on rank 0 and put plain tensors back in the model there, so the
    caller saves it like any model (tied weights stay one parameter). A collective."""
    import torch
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(net, options=_full_options())
    if not main:
        return
    made: dict[int, Any] = {}
    for prefix, module in net.model.named_modules():
        for leaf, param in list(module._parameters.items()):
            if param is None:
                continue
            key = f"model.{prefix}.{leaf}" if prefix else f"model.{leaf}"
            if id(param) not in made:
                made[id(param)] = torch.nn.Parameter(
                    full[key].clone(), requires_grad=param.requires_grad
                )
            module._parameters[leaf] = made[id(param)]
