"""The training loop every method shares: exact accounting, checkpoints, resume, guards.

Why tuneloop owns this loop instead of handing batches to `transformers.Trainer`:

- **Loss normalisation.** The loss of one optimizer step is the sum of the objective's loss
  over every micro-batch (and every process) divided by the summed normaliser: target
  tokens for SFT and pretraining, pairs for preference objectives (objectives.py). So batch
  8 equals batch 1 with 8 accumulation steps, and 2 processes equal 1 with the same global
  batch, up to float rounding (tests check both).
- **Exact resume.** The data order is a pure function of (seed, epoch); a checkpoint stores
  the position, the optimizer, the scheduler, every RNG state and the objective's own state,
  so a resumed run computes the same future losses as an uninterrupted one.
- **Guards.** A non-finite loss or gradient norm stops the run at that step, before the
  optimizer touches the weights, and nothing is saved; SIGTERM or Ctrl-C finishes the current
  step, writes a checkpoint and exits.

What differs by method is the objective (objectives.py: collate, loss, normaliser,
statistics); what differs by parallel mode is the layout (layouts.py: DDP, FSDP2, ZeRO),
chosen once. `run_loop` reads top to bottom: set up, resume, then per step: micro-batches ->
guarded update -> log -> validate -> checkpoint; then the best weights and a plain model.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tuneloop.errors import TrainingError, TrainingInterrupted
from tuneloop.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    rotate,
    save_checkpoint,
    set_rng_state,
)
from tuneloop.training.layouts import (
    Layout,
    layout_name,
    load_trainable_state,
    make_accelerator,
    make_layout,
    trainable_state,
)
from tuneloop.training.objectives import (
    CE_CHUNK,
    SFT,
    Objective,
    collate,
    fused_linear_cross_entropy,
    loss_module,
    token_loss_sum,
)

# the loss pieces lived here before objectives.py; callers may still import them from here
__all__ = [
    "CE_CHUNK",
    "LoopConfig",
    "LoopResult",
    "NonFiniteLoss",
    "TrainState",
    "batch_plan",
    "collate",
    "fused_linear_cross_entropy",
    "load_trainable_state",
    "loss_module",
    "run_loop",
    "token_loss_sum",
    "trainable_state",
]

MEGABATCH = 50  # batches per length-sorted megabatch (as in transformers' length grouping)


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
    l2_to_base: float = 0.0  # training/regularize.py
    ewc: float = 0.0  # training/regularize.py

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


# --- the state a checkpoint carries ----------------------------------------------------------


@dataclass
class TrainState:
    """Where a run is; saved as the checkpoint's state.json, so every field is plain JSON.

    `loss_tokens` counts the objective's normaliser units (target tokens, or pairs); the
    name is the one checkpoints have always used."""

    step: int = 0
    tokens: int = 0
    loss_sum: float = 0.0  # normaliser-weighted, for the run's mean train loss
    loss_tokens: float = 0.0
    best_eval_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    train_s: float = 0.0
    world: int = 1
    layout: str = "ddp"
    objective: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> TrainState:
        """The state of checkpoint `where`; unknown keys are ignored (older checkpoints
        lack `world`, `layout` and `objective`: single-process DDP, no objective state)."""
        known = {f.name for f in fields(cls)}
        try:
            state = cls(**{k: v for k, v in data.items() if k in known})
            int(state.step), float(state.loss_sum), float(state.loss_tokens), int(state.world)
        except (TypeError, ValueError) as err:
            raise TrainingError(f"checkpoint {where}: state.json is malformed ({err})") from None
        return state

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record_eval(self, loss: float, step: int, min_delta: float) -> None:
        """Track the best validation loss and how many evaluations since it improved."""
        if self.best_eval_loss is None or loss < self.best_eval_loss - min_delta:
            self.best_eval_loss, self.best_step, self.bad_evals = loss, step, 0
        else:
            self.bad_evals += 1


@dataclass
class _Plan:
    """The run's geometry: which examples each process takes at each step."""

    lengths: list[int]
    global_batch: int
    accumulation: int
    seed: int
    group_by_length: bool
    world: int
    n_batches: int = 0
    steps_per_epoch: int = 1

    def __post_init__(self) -> None:
        self.n_batches = len(batch_plan(self.lengths, self.global_batch, self.seed, 0, False))
        rest = len(self.lengths) % self.global_batch
        if self.world > 1 and rest and rest < self.world:
            self.n_batches -= 1  # a last batch too small to give every process an example
        self.steps_per_epoch = max(1, math.ceil(self.n_batches / self.accumulation))

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """This process's example indices for each micro-batch of optimizer step `step`."""
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        plan = batch_plan(self.lengths, self.global_batch, self.seed, epoch, self.group_by_length)
        micro = plan[: self.n_batches][
            in_epoch * self.accumulation : (in_epoch + 1) * self.accumulation
        ]
        out = []
        for ids in micro:
            per = math.ceil(len(ids) / self.world)
            out.append(ids[rank * per : (rank + 1) * per] or ids[:1])
        return out


@dataclass
class _Step:
    """One optimizer step's outcome, summed over its micro-batches and every process."""

    loss: float  # loss sum / count
    count: float  # the normaliser: target tokens or pairs
    tokens: int  # input tokens (for throughput)
    stats: dict[str, float]  # sums (divide by count to report)


@dataclass
class _Window:
    """What the next log line averages over."""

    loss: float = 0.0
    count: float = 0.0
    tokens: int = 0
    stats: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def add(self, step: _Step) -> None:
        self.loss += step.loss * step.count
        self.count += step.count
        self.tokens += step.tokens
        for k, v in step.stats.items():
            self.stats[k] = self.stats.get(k, 0.0) + v

    def entry(
        self, step: int, epoch: float, grad_norm: float, lr: float, seen: int
    ) -> dict[str, Any]:
        """The metrics line of `step`: means over the window, then the step's state."""
        n = max(self.count, 1.0)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {
            "step": step,
            "epoch": epoch,
            "loss": self.loss / n,
            **{k: v / n for k, v in sorted(self.stats.items())},
            "grad_norm": grad_norm,
            "learning_rate": lr,
            "tokens_seen": seen,
            "tokens_per_s": self.tokens / elapsed,
        }


def _split(out: Any) -> tuple[Any, dict[str, Any]]:
    """An objective module's output as (loss sum, statistics)."""
    return out if isinstance(out, tuple) else (out, {})


def _reduce(accelerator: Any, values: list[float]) -> list[float]:
    """Sum `values` over every process (one collective)."""
    import torch

    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return [float(x) for x in accelerator.reduce(t, "sum")]


def _reduce_max(accelerator: Any, value: float) -> list[float]:
    import torch

    t = torch.tensor([float(value)], device=accelerator.device)
    return [float(x) for x in accelerator.reduce(t, "max")]


def _train_step(
    layout: Layout, objective: Objective, micro: list[list[Any]], pad_id: int, world: int
) -> _Step:
    """Forward and backward over the step's micro-batches; the update is the caller's."""
    import torch

    accelerator = layout.accelerator
    batches = [objective.collate(examples, pad_id) for examples in micro]
    tokens = sum(objective.tokens(e) for examples in micro for e in examples)
    count, all_tokens = _reduce(accelerator, [sum(objective.count(b) for b in batches), tokens])
    loss_sum = torch.zeros((), dtype=torch.float64)
    stats: dict[str, Any] = {}
    for k, batch in enumerate(batches):
        batch = {key: v.to(accelerator.device) for key, v in batch.items()}
        with layout.sync(k == len(batches) - 1), layout.autocast():
            loss, batch_stats = _split(layout.net(**batch))
        # DDP and ZeRO average gradients over processes, hence the factor `world`
        layout.backward(loss * world / max(count, 1.0))
        loss_sum += loss.detach().double().cpu()
        for name, value in batch_stats.items():
            stats[name] = stats.get(name, 0.0) + float(value)
    names = sorted(stats)
    totals = _reduce(accelerator, [float(loss_sum), *(stats[n] for n in names)])
    named = dict(zip(names, totals[1:], strict=True))
    return _Step(totals[0] / max(count, 1.0), count, int(all_tokens), named)


def _validate(
    layout: Layout,
    objective: Objective,
    examples: list[Any],
    batch_size: int,
    pad_id: int,
    rank: int,
    world: int,
) -> dict[str, float]:
    """The objective's validation metrics over `examples` (shared out over processes)."""
    import torch

    accelerator = layout.accelerator
    layout.net.eval()
    # sorted by length: batches of similar lengths waste no compute on padding
    mine = sorted(range(rank, len(examples), world), key=lambda i: objective.length(examples[i]))
    loss_sum, count, stats = 0.0, 0.0, {}
    with torch.no_grad(), layout.autocast():
        for lo in range(0, len(mine), batch_size):
            batch = objective.collate([examples[i] for i in mine[lo : lo + batch_size]], pad_id)
            count += objective.count(batch)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            loss, batch_stats = _split(layout.net(**batch))
            loss_sum += float(loss.double())
            for name, value in batch_stats.items():
                stats[name] = stats.get(name, 0.0) + float(value)
    names = sorted(stats)
    totals = _reduce(accelerator, [loss_sum, count, *(stats[n] for n in names)])
    layout.net.train()
    n = max(totals[1], 1.0)
    means = {k: v / n for k, v in zip(names, totals[2:], strict=True)}
    return objective.eval_entry(totals[0] / n, means)


def _save(
    layout: Layout,
    scheduler: Any,
    state: TrainState,
    objective: Objective,
    ckpt_dir: Path,
    keep_last: int,
) -> Path | None:
    """Write a checkpoint of the current step (rank 0 writes; every process takes part)."""
    import torch

    accelerator = layout.accelerator
    world, main = accelerator.num_processes, accelerator.is_main_process
    rngs = None
    if world > 1:  # each process's random state, so a resume continues every stream
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, rng_state())
        rngs = {"ranks": gathered}
    weights, optimizer, extra = layout.checkpoint_parts(main)
    if not main:
        return None
    bad = next((n for n, w in weights.items() if not torch.isfinite(w).all()), None)
    if bad is not None:
        raise NonFiniteLoss(
            f"weights became non-finite at step {state.step} ({bad}); no checkpoint "
            "written, nothing saved"
        )
    state.objective = objective.state_dict()
    path = save_checkpoint(
        ckpt_dir, state.step, weights, optimizer, scheduler, state.to_dict(), rngs, extra
    )
    best = state.best_step
    rotate(ckpt_dir, keep_last, {ckpt_dir / f"step-{best:06d}"} if best is not None else set())
    return path


def _resume(
    resume: Path | bool,
    run_path: Path,
    layout: Layout,
    scheduler: Any,
    objective: Objective,
    total_steps: int,
) -> TrainState:
    """Load a checkpoint into the layout, the scheduler, the objective and the RNGs."""
    accelerator = layout.accelerator
    world = accelerator.num_processes
    path = latest_checkpoint(run_path / "checkpoints") if resume is True else Path(resume)
    ckpt = load_checkpoint(path)
    state = TrainState.from_dict(ckpt["state"], path)
    if state.world != world:
        raise TrainingError(
            f"{path} was written by a {state.world}-process run; resume it with the same "
            f"number of processes (--nproc {state.world}), so the global batch is the same"
        )
    if state.layout != layout.name:
        raise TrainingError(f"{path}: resume with training.distributed {state.layout}, as the run")
    layout.load(ckpt)
    scheduler.load_state_dict(ckpt["optimizer"]["scheduler"])
    objective.load_state_dict(state.objective)
    rngs = ckpt["rng"]
    set_rng_state(rngs["ranks"][accelerator.process_index] if "ranks" in rngs else rngs)
    if accelerator.is_main_process:
        _truncate_log(run_path / "metrics.jsonl", state.step)
        print(
            f"resumed from step {state.step} of {total_steps} ({path})",
            file=sys.stderr,
            flush=True,
        )
    return state


def run_loop(
    model: Any,
    train: list[Any],
    cfg: LoopConfig,
    run_path: Path,
    pad_id: int,
    validation: list[Any] | None = None,
    resume: Path | bool = False,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, Any], None] | None = None,
    desc: str = "training",
    objective: Objective = SFT,
    general: tuple[list[Any], str] | None = None,
) -> LoopResult:
    """Train `model` (its trainable parameters) on `train` for `objective`; see the module
    docstring.

    resume: False for a fresh run, True for the latest checkpoint in `run_path`, or the
    path of one checkpoint. on_log receives every metrics entry (after metrics.jsonl);
    on_step(step, model) runs after each optimizer step (tests use it to inject faults).
    general: tokenised general text and a key naming the starting model, for EWC's Fisher.
    """
    import torch
    from accelerate.state import AcceleratorState
    from transformers import get_scheduler

    from tuneloop.progress import Progress

    if not train:
        raise TrainingError("no training examples left after tokenisation")
    AcceleratorState._reset_state(True)  # one process may run several trainings (sweeps, tests)
    accelerator = make_accelerator(cfg, launched_world(), _hidden_size(model), run_path)
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    lengths = [objective.length(e) for e in train]
    plan = _Plan(
        lengths,
        cfg.batch_size * world,
        cfg.gradient_accumulation_steps,
        cfg.seed,
        cfg.group_by_length,
        world,
    )
    total_steps, eval_every, save_every = _schedule(cfg, plan.steps_per_epoch, bool(validation))

    torch.manual_seed(cfg.seed)
    attention = choose_attention(
        cfg.attention,
        max(lengths),
        accelerator.device.type,
        _largest_batch_attention(objective, train, lengths, cfg.batch_size, model, pad_id),
        free_memory_bytes(),
    )
    old_attention = _set_attention(model, attention)
    layout, scheduler = make_layout(
        layout_name(cfg.distributed, world),
        accelerator,
        objective.module(model),
        lambda: torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate),
        lambda optimizer: get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=math.ceil(cfg.warmup_ratio * total_steps),
            num_training_steps=total_steps,
        ),
        cfg.bf16,
    )
    # built before a resume loads weights: it keeps the start
    regulariser = _regulariser(layout, cfg, world, pad_id, general, run_path, main)
    ckpt_dir, metrics_path = run_path / "checkpoints", run_path / "metrics.jsonl"
    state = TrainState(world=world, layout=layout.name)
    if resume:
        state = _resume(resume, run_path, layout, scheduler, objective, total_steps)
    resumed_from = state.step if resume else None
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

    if cfg.report_to and main:
        accelerator.init_trackers(run_path.name, config=json.loads(json.dumps(cfg.__dict__)))
    bar = Progress(total_steps, desc, "step") if main else None
    if bar:
        bar.update(state.step)
    window, stopped_early = _Window(), False
    with _StopSignal() as stop:
        while state.step < total_steps and not stopped_early:
            started = time.perf_counter()
            micro = [[train[i] for i in ids] for ids in plan.micro_batches(state.step, rank)]
            step = _train_step(layout, objective, micro, pad_id, world)
            step_no = state.step + 1
            if not math.isfinite(step.loss):
                raise NonFiniteLoss(
                    f"loss became {step.loss} at step {step_no}; stopped before the update, "
                    "nothing saved (lower training.learning_rate, or check the data)"
                )
            lr = scheduler.get_last_lr()[0]
            if regulariser is not None:
                regulariser.add_gradients()  # after the all-reduce, before clipping
            grad_norm = layout.clip(cfg.max_grad_norm)
            if not math.isfinite(grad_norm):
                raise NonFiniteLoss(
                    f"gradient norm became {grad_norm} at step {step_no}; stopped before the "
                    "update, nothing saved (lower training.learning_rate, or check the data)"
                )
            layout.update()
            scheduler.step()
            state.step, state.tokens = step_no, state.tokens + step.tokens
            state.loss_sum += step.loss * step.count
            state.loss_tokens += step.count
            state.train_s += time.perf_counter() - started
            window.add(step)
            if on_step:
                on_step(step_no, layout.model)
            epoch = round(step_no / plan.steps_per_epoch, 4)
            if bar:
                bar.update(1)
            if step_no % cfg.logging_steps == 0 or step_no == total_steps:
                entry = window.entry(step_no, epoch, grad_norm, lr, state.tokens)
                entry["peak_memory_gb"] = _peak_memory_gb(accelerator)
                if regulariser is not None:
                    entry["ewc" if cfg.ewc > 0 else "l2_to_base"] = round(regulariser.value(), 6)
                log(entry)
                if bar:
                    bar.postfix(loss=f"{entry['loss']:.4f}", tok_s=f"{entry['tokens_per_s']:.0f}")
                window = _Window()
            evaluated = bool(eval_every) and (step_no % eval_every == 0 or step_no == total_steps)
            if evaluated:
                assert validation is not None
                metrics = _validate(
                    layout, objective, validation, cfg.batch_size * 2, pad_id, rank, world
                )
                state.record_eval(metrics["eval_loss"], step_no, cfg.early_stopping_min_delta)
                log({"step": step_no, "epoch": epoch, **metrics})
                if bar:
                    bar.postfix(eval_loss=f"{metrics['eval_loss']:.4f}")
                patience = cfg.early_stopping_patience
                stopped_early = bool(patience and state.bad_evals >= patience)
            if world > 1:  # a signal may reach the processes at different steps: agree
                stop.received = int(max(_reduce_max(accelerator, stop.received or 0))) or None
            # the last step needs no checkpoint: the final model is saved by the caller, and
            # the best one (if not the last) was checkpointed when it was measured
            due = evaluated or step_no % save_every == 0 or stop.received
            if due and step_no < total_steps and not stopped_early:
                _save(layout, scheduler, state, objective, ckpt_dir, cfg.save_total_limit)
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
    best = ckpt_dir / f"step-{state.best_step:06d}" if state.best_step is not None else None
    if cfg.load_best_at_end and best and state.best_step != state.step and best.is_dir():
        layout.load_weights(load_checkpoint(best)["weights"], best)
    layout.release(main)  # a plain model for the caller (rank 0 saves it)
    if old_attention is not None:  # the kernel was a training choice; give the model back
        _set_attention(model, old_attention)
    losses = [h["loss"] for h in history if "loss" in h]
    return LoopResult(
        steps=state.step,
        epochs=state.step / plan.steps_per_epoch,
        train_loss=state.loss_sum / max(state.loss_tokens, 1.0),
        final_loss=losses[-1] if losses else None,
        tokens=int(state.tokens),
        train_s=state.train_s,
        best_step=state.best_step,
        best_eval_loss=state.best_eval_loss,
        stopped_early=stopped_early,
        resumed_from=resumed_from,
        attention=attention,
        history=history,
    )


EAGER_MAX_TOKENS = 512  # measured CPU crossover (docs/performance.md)
EAGER_MEMORY_SHARE = 0.25  # eager's attention maps may take this share of free memory


def _regulariser(
    layout: Layout,
    cfg: LoopConfig,
    world: int,
    pad_id: int,
    general: tuple[list[Any], str] | None,
    run_path: Path,
    main: bool,
) -> Any:
    """The pull toward the start the config asks for (None: none), its cost written to
    `regulariser.json` in the run folder. `layout.model` is read only when one is asked
    for: unwrapping imports DeepSpeed where it is installed, whose logger then writes to
    the CLI's stdout."""
    if cfg.l2_to_base <= 0 and cfg.ewc <= 0:
        return None
    model = layout.model
    name = "ewc" if cfg.ewc > 0 else "l2_to_base"
    if cfg.l2_to_base > 0 and cfg.ewc > 0:
        raise TrainingError("set one of training.l2_to_base and training.ewc, not both")
    if world > 1 and cfg.distributed != "ddp":
        raise TrainingError(
            f"training.{name} works with one process or DDP, not {cfg.distributed}: "
            "a sharded layout holds no whole LoRA matrices on one rank"
        )
    from tuneloop.training import regularize

    started = time.perf_counter()
    record: dict[str, Any] = {"kind": name}
    if name == "l2_to_base":
        reg = regularize.L2ToBase(model, cfg.l2_to_base)
    else:
        if general is None:
            raise TrainingError(
                "training.ewc needs general text for the Fisher; this method does not "
                "provide it (EWC is built for method: sft)"
            )
        from tuneloop.config.home import tuneloop_home

        examples, key = general
        reg = regularize.EWC(model, cfg.ewc)
        fisher, record["fisher"] = regularize.cached_fisher(
            model, examples, pad_id, reg.targets(), key, tuneloop_home() / "cache" / "fisher"
        )
        reg.set_fisher(fisher)
    record.update(
        weight=reg.weight,
        extra_memory_mb=round(reg.extra_bytes() / 2**20, 1),
        setup_s=round(time.perf_counter() - started, 1),
    )
    if main:
        run_path.mkdir(parents=True, exist_ok=True)
        (run_path / "regulariser.json").write_text(json.dumps(record, indent=2) + "\n")
    return reg


def choose_attention(
    setting: str,
    longest: int,
    device_type: str,
    attention_bytes: int = 0,
    free_bytes: int | None = None,
) -> str:
    """The attention kernel to train with: the setting, or for `auto` the measured faster
    one that fits in memory.

    On a CPU, PyTorch's flash-attention kernel (what `sdpa` runs) has a slow backward for
    short sequences: plain matmul + softmax ("eager") trained SmolLM2-135M 20-35% faster up
    to 512 tokens, and sdpa won from 1,024. Eager keeps every layer's attention
    probabilities for the backward pass (rows x heads x length^2 floats per layer: about
    9 GB for 16 rows of 512 tokens on SmolLM2-135M; an HH SFT run at 8 x 512 peaked at
    14 GB with eager, 2026-12-02).
    `attention_bytes` is that estimate for the largest micro-batch (`eager_attention_bytes`);
    eager is chosen only when it is at most EAGER_MEMORY_SHARE of `free_bytes` (the memory
    available now; unknown means no limit). On a GPU, sdpa (flash / memory-efficient
    kernels) is the better choice.
    """
    if setting != "auto":
        return setting
    if device_type != "cpu" or longest > EAGER_MAX_TOKENS:
        return "sdpa"
    if free_bytes is not None and attention_bytes > EAGER_MEMORY_SHARE * free_bytes:
        return "sdpa"
    return "eager"


def eager_attention_bytes(batch: dict[str, Any], model: Any) -> int:
    """Bytes eager attention keeps for the backward of one micro-batch: per layer, the
    float32 probabilities (and the scores they came from) of every head over every
    sequence that has gradients (each `*input_ids` tensor of the batch)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    squares = sum(
        int(v.shape[0]) * int(v.shape[1]) ** 2
        for k, v in batch.items()
        if k.endswith("input_ids") and getattr(v, "dim", lambda: 0)() == 2
    )
    return squares * layers * heads * 4 * 2


def free_memory_bytes() -> int | None:
    """Memory the system can give now (Linux MemAvailable); None where it cannot say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _set_attention(model: Any, name: str) -> str | None:
    """Switch the model's attention kernel; returns the previous one (None if unknown)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    old = getattr(config, "_attn_implementation", None)
    if old is None or not hasattr(base, "set_attn_implementation") or old == name:
        return old
    base.set_attn_implementation(name)
    return old


# --- pieces of the loop ------------------------------------------------------------------


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


def _largest_batch_attention(
    objective: Any, train: list[Any], lengths: list[int], batch_size: int, model: Any, pad_id: int
) -> int:
    """Eager attention's memory for a micro-batch of the longest examples (the worst case)."""
    longest = sorted(range(len(train)), key=lengths.__getitem__, reverse=True)[:batch_size]
    return eager_attention_bytes(objective.collate([train[i] for i in longest], pad_id), model)


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
