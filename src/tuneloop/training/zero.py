"""DeepSpeed ZeRO for `training.distributed: zero1 | zero2 | zero3` (with `--nproc N`).

ZeRO splits what every DDP process would otherwise hold a full copy of: stage 1 the
optimizer state, stage 2 also the gradients, stage 3 also the weights. `accelerate` builds
the DeepSpeed engine from the recipe (no JSON file to write); the training loop in
train/loop.py keeps its own accounting, so a ZeRO run computes what one process computes:

- The loop owns gradient accumulation (`managed_gradient_accumulation: false`): every
  micro-batch's `backward` accumulates locally, and `step` reduces and updates once. The
  loss is the loop's own sum over target tokens (not divided again by the accumulation
  count), exactly as in the DDP path.
- The NaN guard still runs before the update: the loop checks the loss before calling
  `step`, and DeepSpeed skips an update whose gradient norm is not finite, which the loop
  then reports as a stopped run.
- The optimizer is the loop's `torch.optim.AdamW` (DeepSpeed's FusedAdam would compile a
  C++ extension); weights and optimizer state stay fp32, with bf16 autocast in the forward
  pass when the recipe's precision asks for it, as in every other path.
- Checkpoints keep tuneloop's layout: rank 0 writes the gathered trainable weights, and
  `extra.pt` holds every rank's ZeRO partition (DeepSpeed's per-rank state dicts reduced to
  tensors and plain values, so they load with `torch.load(weights_only=True)` and a
  tampered file cannot run code), so `--resume --nproc N` continues exactly. The final
  model is gathered into plain tensors on rank 0, so it is saved like any other run's.

On a CPU the process group is gloo (DeepSpeed's CPU accelerator falls back to it when
oneCCL is not installed). DeepSpeed is an optional dependency: `pip install deepspeed`.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

from tuneloop.errors import TrainingError

STAGES = {"zero1": 1, "zero2": 2, "zero3": 3}


def stage_of(distributed: str) -> int | None:
    """The ZeRO stage a `training.distributed` value names, or None (ddp, fsdp)."""
    return STAGES.get(distributed)


def require_deepspeed() -> None:
    """Raise a clear error, before any process starts, when DeepSpeed is not installed."""
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise TrainingError(
            "training.distributed zero1/zero2/zero3 needs DeepSpeed: pip install deepspeed "
            "(or use training.distributed ddp or fsdp, which need nothing extra)"
        ) from None


def ds_config(
    stage: int, batch_size: int, accumulation: int, world: int, max_norm: float, hidden: int
) -> dict:
    """The DeepSpeed config for one run: the loop's batch geometry and clipping, ZeRO
    `stage`, fp32 state, no offload, no DeepSpeed logging.

    Communication buckets are sized from the model's hidden size (hidden^2 elements, the
    rule `accelerate` and transformers apply for "auto"). DeepSpeed's defaults (5e8
    elements, 2 GB in fp32) are meant for billion-parameter models on GPUs; on the 135M
    bundled model they made ZeRO-3 use more memory per process than DDP."""
    bucket = max(hidden, 64) ** 2
    zero_opt: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": False,
        "reduce_bucket_size": bucket,
        "allgather_bucket_size": bucket,
    }
    if stage == 3:
        zero_opt["stage3_prefetch_bucket_size"] = int(0.9 * bucket)
        zero_opt["stage3_param_persistence_threshold"] = 10 * hidden
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": batch_size * accumulation * world,
        "gradient_clipping": max_norm,
        "managed_gradient_accumulation": False,  # the loop decides when a step ends
        "zero_optimization": zero_opt,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def make_accelerator(
    stage: int, cfg: Any, world: int, cuda: bool, hidden: int, **kwargs: Any
) -> Any:
    """An `accelerate.Accelerator` whose `prepare` builds a ZeRO `stage` engine.

    accelerate only turns DeepSpeed on when it is not told `cpu=True`, so on a CPU the
    process group backend is named explicitly (gloo)."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    require_deepspeed()
    import deepspeed.ops

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # DeepSpeed's CPU backend would compile its shared-memory all-reduce (a C++ extension,
    # built at first use) although only inference calls it; training needs no compiler
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    config = ds_config(
        stage, cfg.batch_size, cfg.gradient_accumulation_steps, world, cfg.max_grad_norm, hidden
    )
    return Accelerator(
        mixed_precision="no",  # bf16 is autocast in the forward pass (see ZeroEngine)
        deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config, zero3_init_flag=False),
        kwargs_handlers=[InitProcessGroupKwargs(backend="nccl" if cuda else "gloo")],
        **kwargs,
    )


class ZeroEngine:
    """The loop's view of a prepared DeepSpeed engine: backward, step, and the collectives
    that move full weights and partitioned optimizer state in and out of it."""

    def __init__(self, engine: Any, stage: int, bf16: bool) -> None:
        self.engine = engine
        self.stage = stage
        self.bf16 = bf16

    @property
    def model(self) -> Any:
        """The wrapped model (inside the loss module)."""
        return self.engine.module.model

    def autocast(self) -> Any:
        import torch

        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.engine.device.type, dtype=torch.bfloat16)

    def backward(self, loss: Any) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        """Reduce, clip and update; returns the gradient norm before clipping (not finite:
        DeepSpeed skipped the update)."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def _gathered(self, params: list[Any], modifier_rank: int | None = None) -> Any:
        if self.stage < 3:  # stages 1-2 keep full weights in every process
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)

    def trainable_weights(self, main: bool) -> dict[str, Any]:
        """Full trainable weights by name on rank 0 (empty elsewhere). A collective."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        with self._gathered([p for _, p in named]):
            if not main:
                return {}
            return {n: p.detach().cpu().clone() for n, p in named}

    def load_weights(self, weights: dict[str, Any], load: Any, where: Any) -> None:
        """Load full trainable weights (every process passes them) with `load`
        (loop.load_trainable_state); under stage 3, rank 0's copy is re-partitioned."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        with self._gathered(params, modifier_rank=0):
            load(self.model, weights, where)

    def optimizer_state(self) -> dict[str, Any]:
        """Every rank's ZeRO optimizer partition as tensors and plain values, gathered to
        all. A collective."""
        import torch.distributed as dist

        mine = plain_partition(self.engine.optimizer.state_dict())
        ranks: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        return {"ranks": ranks}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Restore this rank's partition from `optimizer_state()`'s output (the loop has
        checked the checkpoint's layout, stage included). The weights must be loaded first:
        the fp32 partitions are refreshed from them (exact in fp32)."""
        optimizer = self.engine.optimizer
        ranks = [live_partition(sd, optimizer.loss_scaler) for sd in state["ranks"]]
        optimizer.load_state_dict(ranks, load_from_fp32_weights=False)

    def release(self, main: bool) -> None:
        """Hand the caller a plain model: under stage 3, gather every weight, put plain
        tensors back on rank 0 (tied weights stay one parameter) and remove DeepSpeed's
        hooks. A collective."""
        import torch

        if self.stage < 3:
            return
        model = self.model
        made: dict[int, Any] = {}
        with self._gathered(list(model.parameters())):
            if main:
                for p in model.parameters():
                    if id(p) not in made:
                        made[id(p)] = torch.nn.Parameter(
                            p.detach().clone(), requires_grad=p.requires_grad
                        )
        self.engine.destroy()
        if not main:
            return
        for module in model.modules():
            for leaf, param in list(module._parameters.items()):
                if param is not None:
                    module._parameters[leaf] = made[id(param)]


# DeepSpeed's optimizer state_dict holds three things that are not tensors or plain values:
# the loss scaler (an object; the loop trains in fp32, so it is the static scale 1, but its
# plain attributes are kept anyway), the ZeRO stage (an IntEnum) and the parameter slice
# mappings (dataclasses, read only by DeepSpeed's universal-checkpoint converter, never by
# load_state_dict). Everything else is tensors, lists, dicts, numbers and a version string.
_SCALER, _STAGE, _SLICES = "loss_scaler", "zero_stage", "param_slice_mappings"
_PLAIN = (bool, int, float, str, type(None))


def plain_partition(state: dict[str, Any]) -> dict[str, Any]:
    """One rank's DeepSpeed optimizer state_dict as tensors and plain containers, which
    `torch.load(weights_only=True)` rebuilds without running code from the file."""
    out = dict(state)
    scaler = out.pop(_SCALER, None)
    if scaler is not None:
        out[_SCALER] = {k: v for k, v in vars(scaler).items() if type(v) in _PLAIN}
    out.pop(_SLICES, None)
    if _STAGE in out:
        out[_STAGE] = int(out[_STAGE])
    return out


def live_partition(state: dict[str, Any], scaler: Any) -> dict[str, Any]:
    """`plain_partition`'s inverse for loading: the engine's own loss scaler (given the
    saved plain attributes it already has) and the ZeRO stage as DeepSpeed's enum."""
    from deepspeed.runtime.zero.config import ZeroStageEnum

    out = dict(state)
    saved = out.pop(_SCALER, None) or {}
    if not isinstance(saved, dict):
        raise TrainingError("the checkpoint's ZeRO loss-scaler state is malformed")
    for key, value in saved.items():
        if isinstance(key, str) and hasattr(scaler, key) and type(value) in _PLAIN:
            setattr(scaler, key, value)
    out[_SCALER] = scaler
    if _STAGE in out:
        out[_STAGE] = ZeroStageEnum(out[_STAGE])
    return out
