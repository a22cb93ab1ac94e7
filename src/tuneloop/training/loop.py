"""The training loop every method shares: exact accounting, checkpoints, resume, guards.

Why tuneloop owns this loop instead of handing batches to `transformers.Trainer`:

- **Loss normalisation.** The loss of one optimizer step is the sum of token losses over
  every micro-batch (and every process) divided by the number of target tokens in all of
  them. So batch 8 equals batch 1 with 8 accumulation steps, and 2 processes equal 1 with
  the same global batch, up to float rounding (tests check both).
- **Exact resume.** The data order is a pure function of (seed, epoch); a checkpoint stores
  the position, the optimizer, the scheduler and every RNG state, so a resumed run computes
  the same future losses as an uninterrupted one.
- **Guards.** A non-finite loss or gradient norm stops the run at that step, before the
  optimizer touches the weights, and nothing is saved; SIGTERM or Ctrl-C finishes the current
  step, writes a checkpoint and exits.

`accelerate` provides devices, mixed precision and DDP wrapping, so the same loop runs on
a laptop and under torchrun. With `training.distributed: fsdp` the loop shards the model
itself with PyTorch FSDP2 (`fully_shard`) and gathers full weights for checkpoints and the
final model, so checkpoints look the same whichever way the run was split. With
`zero1`/`zero2`/`zero3`, accelerate builds a DeepSpeed ZeRO engine and the loop drives it
through train/zero.py (its backward and step), keeping the same accounting and guards.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import TrainingError, TrainingInterrupted
from tuneloop.training import zero
from tuneloop.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    rotate,
    save_checkpoint,
    set_rng_state,
)
from tuneloop.training.tokenize import IGNORE, Example

MEGABATCH = 50  # batches per length-sorted megabatch (as in transformers' length grouping)
CE_CHUNK = 4096  # target positions per output-layer chunk (see CausalLMLoss)


class NonFiniteLoss(TrainingError):
    """The loss or the gradient norm became NaN or infinite; nothing was saved."""


@dataclass
class LoopConfig:
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_steps: int | None = None
    save_steps: int | None = None
    save_total_limit: int = 2
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    load_best_at_end: bool = True
    seed: int = 0
    logging_steps: int = 5
    group_by_length: bool = True
    distributed: str = "ddp"  # or "fsdp", "zero1".."zero3"; only with several processes
    attention: str = "auto"  # or "eager" / "sdpa"; see choose_attention
    bf16: bool = False
    report_to: list[str] = field(default_factory=list)

    @classmethod
    def from_training(cls, training: Any, bf16: bool, learning_rate: float) -> LoopConfig:
        """From a recipe's `training` section (its learning rate resolved by the caller)."""
        names = {f for f in cls.__dataclass_fields__ if f not in ("bf16", "learning_rate")}
        return cls(
            bf16=bf16, learning_rate=learning_rate, **{k: getattr(training, k) for k in names}
        )


@dataclass
class LoopResult:
    steps: int
    epochs: float
    train_loss: float
    final_loss: float | None
    tokens: int
    train_s: float
    best_step: int | None = None
    best_eval_loss: float | None = None
    stopped_early: bool = False
    resumed_from: int | None = None
    attention: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "train_loss": self.train_loss,
            "train_steps": self.steps,
            "train_epochs": round(self.epochs, 4),
            "train_tokens": self.tokens,
            "train_tokens_per_s": self.tokens / max(self.train_s, 1e-9),
        }
        if self.final_loss is not None:
            out["final_loss"] = self.final_loss
        if self.best_eval_loss is not None:
            out["eval_loss"] = self.best_eval_loss
            out["best_step"] = self.best_step
        if self.stopped_early:
            out["stopped_early"] = True
        if self.attention:
            out["attention"] = self.attention
        return out


# --- data order ----------------------------------------------------------------------------


def batch_plan(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool
) -> list[list[int]]:
    """The batches of one epoch: a pure function of its arguments (so resume is exact).

    With group_by_length, shuffled megabatches of MEGABATCH batches are sorted by length, so
    each batch holds similar lengths (little padding) while the order stays random; the
    batch with the longest example goes first so an out-of-memory error shows at once.
    """
    import numpy as np

    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    size = batch_size * MEGABATCH
    batches: list[list[int]] = []
    for lo in range(0, len(order), size):
        mega = sorted(order[lo : lo + size], key=lambda i: -lengths[i])
        batches += [mega[i : i + batch_size] for i in range(0, len(mega), batch_size)]
    longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]])
    first = batches.pop(longest)
    rest = [batches[i] for i in rng.permutation(len(batches)).tolist()]
    return [first, *rest]


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels (IGNORE on padding).

    Packed rows (examples with `positions`, from `pack_examples`) get position_ids and no
    attention mask instead: from the restarting positions transformers builds a
    block-diagonal causal mask, so no token attends across the examples of a row. Padding
    then continues the positions as a segment of its own.
    """
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    packed = any(e.positions is not None for e in examples)
    positions = torch.arange(width, dtype=torch.long).repeat(len(examples), 1)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
        if packed:
            if e.positions is not None:
                positions[row, :n] = torch.tensor(e.positions)
            positions[row, n:] = torch.arange(width - n)
    if packed:
        return {"input_ids": ids, "position_ids": positions, "labels": labels}
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_loss_sum(model: Any, batch: dict[str, Any]) -> Any:
    """Summed next-token cross-entropy over the batch's target tokens (the plain way: full
    logits for every position). The loop uses `CausalLMLoss`, which must agree with this."""
    import torch.nn.functional as F

    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    logits = out.logits[:, :-1, :].float()
    targets = batch["labels"][:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def _loss_module() -> Any:
    import torch
    import torch.nn.functional as F

    class CausalLMLoss(torch.nn.Module):
        """The model plus its loss, as one module (so DDP/FSDP wrap the whole forward).

        The output layer runs only on positions that have a target: in SFT most positions
        are prompt tokens, and with a 49k-token vocabulary the full logits are the largest
        tensor of the step. Beyond `ce_chunk` target positions (pretraining blocks), the
        output layer and the loss run fused, chunk by chunk (`fused_linear_cross_entropy`),
        so those logits are never held whole. Models whose logits are post-processed
        (soft-capping, scaling) take the plain path.
        """

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            config = getattr(base, "config", None)
            special = getattr(config, "final_logit_softcapping", None) or getattr(
                config, "logit_scale", None
            )
            decoder = getattr(base, "get_decoder", lambda: None)()
            head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
            self._parts = None if special or decoder is None or head is None else (decoder, head)
            self.ce_chunk = CE_CHUNK
            self._fusable = isinstance(head, torch.nn.Linear) and head.bias is None

        def forward(
            self,
            input_ids: Any,
            labels: Any,
            attention_mask: Any = None,
            position_ids: Any = None,
        ) -> Any:
            # packed rows (see collate) carry position ids and no attention mask;
            # transformers builds the per-example mask from them only without a KV cache
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
            if position_ids is not None:
                inputs["position_ids"] = position_ids
            if self._parts is None:
                return token_loss_sum(self.model, {**inputs, "labels": labels})
            decoder, head = self._parts
            hidden = decoder(**inputs)[0]
            targets = labels[:, 1:]
            keep = targets != IGNORE
            hidden, targets = hidden[:, :-1][keep], targets[keep]
            if hidden.size(0) > self.ce_chunk and self._fusable:
                # many targets (pretraining): never hold the (targets x vocabulary) logits
                return fused_linear_cross_entropy(hidden, head.weight, targets, self.ce_chunk)
            return F.cross_entropy(head(hidden).float(), targets, reduction="sum")

    return CausalLMLoss


def fused_linear_cross_entropy(hidden: Any, weight: Any, targets: Any, chunk: int) -> Any:
    """sum(cross_entropy(hidden @ weight.T, targets)), with the logits one chunk of rows at
    a time: peak memory holds one (chunk x vocabulary) block instead of all the logits.

    The gradients are computed chunk by chunk in the forward pass (softmax minus one-hot,
    times the weight / the hidden states) and only scaled in the backward pass, so nothing
    is recomputed: the same three matrix products as the plain path. Under autocast the
    products run in the autocast dtype and the softmax in fp32, as the plain path does.
    """
    return _fused_ce()(hidden, weight, targets, chunk)


_FUSED_CE: Any = None


def _fused_ce() -> Any:
    global _FUSED_CE
    if _FUSED_CE is not None:
        return _FUSED_CE.apply
    import torch

    class FusedLinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, chunk: int) -> Any:
            device = hidden.device.type
            ctx.weight_dtype = weight.dtype
            dtype = (
                torch.get_autocast_dtype(device)
                if torch.is_autocast_enabled(device)
                else weight.dtype
            )
            with torch.autocast(device, enabled=False):
                w = weight.to(dtype)
                total = torch.zeros((), dtype=torch.float32, device=hidden.device)
                grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
                grad_weight = (
                    torch.zeros_like(weight, dtype=torch.float32)
                    if ctx.needs_input_grad[1]
                    else None
                )
                for lo in range(0, hidden.size(0), chunk):
                    h = hidden[lo : lo + chunk].to(dtype)
                    t = targets[lo : lo + chunk]
                    logits = (h @ w.t()).float()
                    lse = torch.logsumexp(logits, dim=-1)
                    total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                    if grad_hidden is None and grad_weight is None:
                        continue
                    probs = torch.exp(logits - lse[:, None])  # d loss / d logits ...
                    probs[torch.arange(t.size(0), device=t.device), t] -= 1.0  # ... - one-hot
                    g = probs.to(dtype)
                    if grad_hidden is not None:
                        grad_hidden[lo : lo + chunk] = (g @ w).to(hidden.dtype)
                    if grad_weight is not None:
                        grad_weight += (g.t() @ h).float()
            ctx.save_for_backward(
                *(x if x is not None else torch.empty(0) for x in (grad_hidden, grad_weight))
            )
            return total

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            grad_hidden, grad_weight = ctx.saved_tensors
            gh = grad_hidden * grad_out if ctx.needs_input_grad[0] else None
            gw = (grad_weight * grad_out).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
            return gh, gw, None, None

    _FUSED_CE = FusedLinearCrossEntropy
    return _FUSED_CE.apply


def loss_module(model: Any) -> Any:
    """Wrap `model` in the loss module the loop trains (see CausalLMLoss)."""
    return _loss_module()(model)


def _targets(batch: dict[str, Any]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


EAGER_MAX_TOKENS = 512  # measured CPU crossover (docs/performance.md)


def choose_attention(setting: str, longest: int, device_type: str) -> str:
    """The attention kernel to train with: the setting, or for `auto` the measured faster.

    On a CPU, PyTorch's flash-attention kernel (what `sdpa` runs) has a slow backward for
    short sequences: plain matmul + softmax ("eager") trained SmolLM2-135M 20-35% faster up
    to 512 tokens, and sdpa won from 1,024 (its memory also grows linearly, not
    quadratically). On a GPU, sdpa (flash / memory-efficient kernels) is the better choice.
    """
    if setting != "auto":
        return setting
    return "eager" if device_type == "cpu" and longest <= EAGER_MAX_TOKENS else "sdpa"


def _set_attention(model: Any, name: str) -> str | None:
    """Switch the model's attention kernel; returns the previous one (None if unknown)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    old = getattr(config, "_attn_implementation", None)
    if old is None or not hasattr(base, "set_attn_implementation") or old == name:
        return old
    base.set_attn_implementation(name)
    return old


# --- the loop ------------------------------------------------------------------------------


class _StopSignal:
    """SIGTERM/SIGINT set a flag; the loop saves at the end of the step and exits."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases and norm weights (as transformers does)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, weights: dict[str, Any], where: Path) -> None:
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


def _peak_memory_gb(accelerator: Any) -> float:
    """The most memory any process has held so far, in GB: the device's allocated peak on
    a GPU, the process's peak resident set on a CPU. A collective (a max over processes)."""
    import resource

    import torch

    if accelerator.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(accelerator.device) / 1e9
    else:  # ru_maxrss is KiB on Linux, bytes on macOS
        unit = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 1e9
    if accelerator.num_processes > 1:
        peak = float(accelerator.reduce(torch.tensor([peak], device=accelerator.device), "max"))
    return round(peak, 3)


def _hidden_size(model: Any) -> int:
    """The model's hidden size (0 when its config does not say)."""
    config = getattr(model, "config", None)
    return int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0)


def launched_world() -> int:
    """How many processes torchrun started (1 outside torchrun)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _schedule(cfg: LoopConfig, steps_per_epoch: int, has_eval: bool) -> tuple[int, int, int]:
    """(total steps, eval every, save every)."""
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    default_every = steps_per_epoch  # plus the final step, which is always validated
    eval_every = (cfg.eval_steps or default_every) if has_eval else 0
    save_every = cfg.save_steps or eval_every or default_every
    return total, eval_every, save_every


def run_loop(
    model: Any,
    train: list[Example],
    cfg: LoopConfig,
    run_path: Path,
    pad_id: int,
    validation: list[Example] | None = None,
    resume: Path | bool = False,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, Any], None] | None = None,
    desc: str = "training",
) -> LoopResult:
    """Train `model` (its trainable parameters) on `train`; see the module docstring.

    resume: False for a fresh run, True for the latest checkpoint in `run_path`, or the
    path of one checkpoint. on_log receives every metrics entry (after metrics.jsonl);
    on_step(step, model) runs after each optimizer step (tests use it to inject faults).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import get_scheduler

    from tuneloop.progress import Progress

    if not train:
        raise TrainingError("no training examples left after tokenisation")
    AcceleratorState._reset_state(True)  # one process may run several trainings (sweeps, tests)
    launched = launched_world()
    zero_stage = zero.stage_of(cfg.distributed) if launched > 1 else None
    if zero_stage:
        accelerator = zero.make_accelerator(
            zero_stage,
            cfg,
            launched,
            torch.cuda.is_available(),
            _hidden_size(model),
            log_with=cfg.report_to or None,
            project_dir=str(run_path),
        )
    else:
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision="bf16" if cfg.bf16 else "no",
            log_with=cfg.report_to or None,
            project_dir=str(run_path),
        )
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    global_batch = cfg.batch_size * world
    lengths = [len(e.input_ids) for e in train]
    n_batches = len(batch_plan(lengths, global_batch, cfg.seed, 0, False))
    if world > 1 and len(train) % global_batch and len(train) % global_batch < world:
        n_batches -= 1  # a last batch too small to give every process an example is dropped
    steps_per_epoch = max(1, math.ceil(n_batches / cfg.gradient_accumulation_steps))
    total_steps, eval_every, save_every = _schedule(cfg, steps_per_epoch, bool(validation))

    torch.manual_seed(cfg.seed)
    attention = choose_attention(cfg.attention, max(lengths), accelerator.device.type)
    old_attention = _set_attention(model, attention)
    fsdp = cfg.distributed == "fsdp" and world > 1
    net = loss_module(model)
    if fsdp:  # shard first: the optimizer must hold the sharded parameters
        _fsdp_shard(net, world, accelerator.device.type)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    ds: zero.ZeroEngine | None = None
    if not fsdp:
        net, prepared = accelerator.prepare(net, optimizer)
        if zero_stage:  # keep the client optimizer: the scheduler drives its param groups
            ds = zero.ZeroEngine(net, zero_stage, cfg.bf16)
        else:
            optimizer = prepared
    net.train()
    autocast = ds.autocast if ds else accelerator.autocast
    layout_name = "fsdp" if fsdp else f"zero{zero_stage}" if ds else "ddp"

    def inner() -> Any:
        if ds:
            return ds.model
        return net.model if fsdp else accelerator.unwrap_model(net).model

    ckpt_dir = run_path / "checkpoints"
    metrics_path = run_path / "metrics.jsonl"

    state: dict[str, Any] = {
        "step": 0,
        "tokens": 0,
        "loss_sum": 0.0,  # token-weighted, for the run's mean train loss
        "loss_tokens": 0,
        "best_eval_loss": None,
        "best_step": None,
        "bad_evals": 0,
        "train_s": 0.0,
    }
    resumed_from = None
    if resume:
        path = latest_checkpoint(ckpt_dir) if resume is True else Path(resume)
        ckpt = load_checkpoint(path)
        written_by = ckpt["state"].get("world", 1)
        if written_by != world:
            raise TrainingError(
                f"{path} was written by a {written_by}-process run; resume it with the same "
                f"number of processes (--nproc {written_by}), so the global batch is the same"
            )
        layout = ckpt["state"].get("layout", "ddp")
        if layout != layout_name:
            raise TrainingError(f"{path}: resume with training.distributed {layout}, as the run")
        if fsdp:
            _fsdp_load_weights(net, ckpt["weights"])
            _fsdp_load_optimizer(net, optimizer, ckpt["optimizer"]["optimizer"])
        elif ds:
            ds.load_weights(ckpt["weights"], load_trainable_state, path)
            ds.load_optimizer_state(ckpt["extra"]["zero"])
        else:
            load_trainable_state(inner(), ckpt["weights"], path)
            optimizer.load_state_dict(ckpt["optimizer"]["optimizer"])
        scheduler.load_state_dict(ckpt["optimizer"]["scheduler"])
        state.update(ckpt["state"])
        rngs = ckpt["rng"]
        set_rng_state(rngs["ranks"][rank] if "ranks" in rngs else rngs)
        resumed_from = state["step"]
        if main:
            _truncate_log(metrics_path, resumed_from)
            print(
                f"resumed from step {resumed_from} of {total_steps} ({path})",
                file=sys.stderr,
                flush=True,
            )
    history = _read_log(metrics_path)

    def log(entry: dict[str, Any]) -> None:
        history.append(entry)
        if main:
            with metrics_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
            if cfg.report_to:
                accelerator.log({k: v for k, v in entry.items() if k != "step"}, entry["step"])
            if on_log:
                on_log(entry)

    def checkpoint() -> Path | None:
        saved_optimizer: Any = optimizer
        rngs, extra = None, None
        if world > 1:  # each process's random state, so a resume continues every stream
            import torch.distributed as dist

            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rng_state())
            rngs = {"ranks": gathered}
            state["world"] = world
        if fsdp:  # every process takes part in gathering the shards; rank 0 writes
            weights, full_optimizer = _fsdp_full_state(net, optimizer)
            saved_optimizer = _StateOnly(full_optimizer)
        elif ds:  # likewise: full weights, and every process's optimizer partition
            weights = ds.trainable_weights(main)
            saved_optimizer, extra = _StateOnly({}), {"zero": ds.optimizer_state()}
        if world > 1:
            state["layout"] = layout_name
        if not main:
            return None
        if not (fsdp or ds):
            weights = trainable_state(inner())
        bad = next((n for n, w in weights.items() if not torch.isfinite(w).all()), None)
        if bad is not None:
            raise NonFiniteLoss(
                f"weights became non-finite at step {state['step']} ({bad}); no checkpoint "
                "written, nothing saved"
            )
        path = save_checkpoint(
            ckpt_dir, state["step"], weights, saved_optimizer, scheduler, state, rngs, extra
        )
        best = state["best_step"]
        keep = {ckpt_dir / f"step-{best:06d}"} if best is not None else set()
        rotate(ckpt_dir, cfg.save_total_limit, keep)
        return path

    def evaluate() -> float:
        assert validation is not None
        net.eval()
        total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        # sorted by length: batches of similar lengths waste no compute on padding
        mine = sorted(
            range(rank, len(validation), world), key=lambda i: len(validation[i].input_ids)
        )
        size = cfg.batch_size * 2
        with torch.no_grad(), autocast():
            for lo in range(0, len(mine), size):
                batch = collate([validation[i] for i in mine[lo : lo + size]], pad_id)
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                total[0] += net(**batch).double()
                total[1] += _targets(batch)
        total = accelerator.reduce(total, "sum")
        net.train()
        return float(total[0] / total[1].clamp(min=1))

    if cfg.report_to and main:
        accelerator.init_trackers(run_path.name, config=json.loads(json.dumps(cfg.__dict__)))
    bar = Progress(total_steps, desc, "step") if main else None
    if bar:
        bar.update(state["step"])
    window = {"loss": 0.0, "targets": 0, "tokens": 0, "start": time.perf_counter()}
    stopped_early = False
    last_entry: dict[str, Any] = {}
    with _StopSignal() as stop:
        while state["step"] < total_steps and not stopped_early:
            step_start = time.perf_counter()
            epoch, in_epoch = divmod(state["step"], steps_per_epoch)
            plan = batch_plan(lengths, global_batch, cfg.seed, epoch, cfg.group_by_length)[
                :n_batches
            ]
            ga = cfg.gradient_accumulation_steps
            micro = plan[in_epoch * ga : (in_epoch + 1) * ga]
            batches, real_tokens = [], 0
            for ids in micro:
                per = math.ceil(len(ids) / world)
                mine = [train[i] for i in ids[rank * per : (rank + 1) * per] or ids[:1]]
                real_tokens += sum(len(e.input_ids) for e in mine)
                batches.append(collate(mine, pad_id))
            # target tokens (the loss denominator) and input tokens, over every process
            count = torch.tensor(
                [float(sum(_targets(b) for b in batches)), float(real_tokens)],
                device=accelerator.device,
            )
            counts = accelerator.reduce(count, "sum")
            n_targets, step_tokens = float(counts[0]), int(counts[1])
            step_loss = torch.zeros((), dtype=torch.float64)
            for k, batch in enumerate(batches):
                batch = {key: v.to(accelerator.device) for key, v in batch.items()}
                sync = k == len(batches) - 1
                if fsdp:  # FSDP2: reduce-scatter gradients only on the last micro-batch
                    net.set_requires_gradient_sync(sync)
                    ctx: Any = nullcontext()
                elif ds:  # DeepSpeed reduces when the loop calls step()
                    ctx = nullcontext()
                else:
                    ctx = nullcontext() if sync else accelerator.no_sync(net)
                with ctx, autocast():
                    loss_sum = net(**batch)
                # DDP and ZeRO average gradients over processes, hence the factor `world`
                scaled = loss_sum * world / max(n_targets, 1.0)
                if ds:
                    ds.backward(scaled)
                else:
                    accelerator.backward(scaled)
                step_loss += loss_sum.detach().double().cpu()
            total_loss = accelerator.reduce(step_loss.to(accelerator.device), "sum")
            loss = float(total_loss) / max(n_targets, 1.0)
            step_no = state["step"] + 1
            if not math.isfinite(loss):
                raise NonFiniteLoss(
                    f"loss became {loss} at step {step_no}; stopped before the update, nothing "
                    "saved (lower training.learning_rate, or check the data)"
                )
            lr = scheduler.get_last_lr()[0]
            if ds:  # DeepSpeed clips and updates in one call, and skips a non-finite update
                grad_norm = ds.step()
            elif fsdp:  # gradients are DTensor shards; the norm is reduced over processes
                trainable = [p for p in net.parameters() if p.requires_grad]
                norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            else:
                grad_norm = float(accelerator.clip_grad_norm_(net.parameters(), cfg.max_grad_norm))
            if not math.isfinite(grad_norm):
                raise NonFiniteLoss(
                    f"gradient norm became {grad_norm} at step {step_no}; stopped before the "
                    "update, nothing saved (lower training.learning_rate, or check the data)"
                )
            if not ds:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state["step"] = step_no
            state["tokens"] += step_tokens
            state["loss_sum"] += loss * n_targets
            state["loss_tokens"] += n_targets
            state["train_s"] += time.perf_counter() - step_start
            window["loss"] += loss * n_targets
            window["targets"] += n_targets
            window["tokens"] += step_tokens
            if on_step:
                on_step(step_no, inner())
            epoch_f = step_no / steps_per_epoch
            if bar:
                bar.update(1)
            if step_no % cfg.logging_steps == 0 or step_no == total_steps:
                elapsed = max(time.perf_counter() - window["start"], 1e-9)
                last_entry = {
                    "step": step_no,
                    "epoch": round(epoch_f, 4),
                    "loss": window["loss"] / max(window["targets"], 1.0),
                    "grad_norm": grad_norm,
                    "learning_rate": lr,
                    "tokens_seen": state["tokens"],
                    "tokens_per_s": window["tokens"] / elapsed,
                    "peak_memory_gb": _peak_memory_gb(accelerator),
                }
                log(last_entry)
                if bar:
                    tok_s = window["tokens"] / elapsed
                    bar.postfix(loss=f"{last_entry['loss']:.4f}", tok_s=f"{tok_s:.0f}")
                window = {"loss": 0.0, "targets": 0, "tokens": 0, "start": time.perf_counter()}
            evaluated = False
            if eval_every and (step_no % eval_every == 0 or step_no == total_steps):
                eval_loss = evaluate()
                evaluated = True
                best = state["best_eval_loss"]
                if best is None or eval_loss < best - cfg.early_stopping_min_delta:
                    state["best_eval_loss"], state["best_step"] = eval_loss, step_no
                    state["bad_evals"] = 0
                else:
                    state["bad_evals"] += 1
                log(
                    {
                        "step": step_no,
                        "epoch": round(epoch_f, 4),
                        "eval_loss": eval_loss,
                        "eval_perplexity": math.exp(min(eval_loss, 50.0)),
                    }
                )
                if bar:
                    bar.postfix(eval_loss=f"{eval_loss:.4f}")
                patience = cfg.early_stopping_patience
                if patience and state["bad_evals"] >= patience:
                    stopped_early = True
            if world > 1:  # a signal may reach the processes at different steps: agree
                flag = torch.tensor([float(stop.received or 0)], device=accelerator.device)
                stop.received = int(accelerator.reduce(flag, "max")) or None
            # the last step needs no checkpoint: the final model is saved by the caller, and
            # the best one (if not the last) was checkpointed when it was measured
            due = evaluated or step_no % save_every == 0 or stop.received
            if due and step_no < total_steps and not stopped_early:
                checkpoint()
            if stop.received and step_no < total_steps:
                if bar:
                    bar.close()
                name = signal.Signals(stop.received).name
                raise TrainingInterrupted(
                    f"{name} received: saved checkpoint at step {step_no} in {ckpt_dir}; "
                    f"resume with: tuneloop train --resume {run_path}"
                )
    if bar:
        bar.close()
    if cfg.report_to and main:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    best_step = state["best_step"]
    if (
        cfg.load_best_at_end
        and best_step is not None
        and best_step != state["step"]
        and (ckpt_dir / f"step-{best_step:06d}").is_dir()
    ):
        best = load_checkpoint(ckpt_dir / f"step-{best_step:06d}")
        if fsdp:
            _fsdp_load_weights(net, best["weights"])
        elif ds:
            ds.load_weights(best["weights"], load_trainable_state, best["path"])
        else:
            load_trainable_state(inner(), best["weights"], best["path"])
    if fsdp:  # hand the caller a plain model (rank 0 saves it): gather, then unshard
        _fsdp_unshard(net, main)
    if ds:
        ds.release(main)
    if old_attention is not None:  # the kernel was a training choice; give the model back
        _set_attention(model, old_attention)
    losses = [h["loss"] for h in history if "loss" in h]
    return LoopResult(
        steps=state["step"],
        epochs=state["step"] / steps_per_epoch,
        train_loss=state["loss_sum"] / max(state["loss_tokens"], 1.0),
        final_loss=losses[-1] if losses else None,
        tokens=int(state["tokens"]),
        train_s=state["train_s"],
        best_step=best_step,
        best_eval_loss=state["best_eval_loss"],
        stopped_early=stopped_early,
        resumed_from=resumed_from,
        attention=attention,
        history=history,
    )


# --- FSDP2 (training.distributed: fsdp) ----------------------------------------------------


class _StateOnly:
    """Stands in for the optimizer when its (gathered) state is all there is to save."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


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


def _read_log(path: Path) -> list[dict[str, Any]]:
    """The entries of a run's metrics.jsonl; a torn last line is skipped.

    The log is appended line by line, so a crash or a full disk mid-write leaves a partial
    last line: that entry is lost with the crash, and the resumed run rewrites it. A bad
    line anywhere else means the file was damaged otherwise, and is an error naming it.
    """
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            if number == len(lines):
                break  # torn by a crash mid-append
            raise TrainingError(
                f"{path}:{number} is not a JSON object; the metrics log is damaged (remove "
                "the line, or the file to lose the curve before the checkpoint)"
            )
        entries.append(entry)
    return entries


def _truncate_log(path: Path, step: int) -> None:
    """Drop log entries after `step` (and a torn last line), so a resumed run's
    metrics.jsonl is one clean curve."""
    from tuneloop.files import atomic_write_jsonl

    atomic_write_jsonl(path, (e for e in _read_log(path) if e.get("step", 0) <= step))
