"""Trainer callbacks shared by every method: progress bar, metrics log, non-finite guard."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuneloop.errors import TuneloopError
from tuneloop.progress import Progress


class NonFiniteLoss(TuneloopError):
    """Training produced a NaN or infinite loss; nothing is saved."""


class ProgressCallback(TrainerCallback):
    """One bar over optimizer steps showing loss, tokens/s and ETA."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.start = 0.0
        self.tokens0 = 0

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self.bar = Progress(total=state.max_steps, desc="training", unit="step")
        self.start = time.perf_counter()
        self.tokens0 = state.num_input_tokens_seen or 0

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self.bar is not None:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            tokens = (state.num_input_tokens_seen or 0) - self.tokens0
            self.bar.postfix(tok_s=f"{tokens / elapsed:.0f}")
            self.bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if self.bar is not None and logs and "loss" in logs:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            tokens = (state.num_input_tokens_seen or 0) - self.tokens0
            self.bar.postfix(loss=f"{logs['loss']:.4f}", tok_s=f"{tokens / elapsed:.0f}")

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self.bar is not None:
            self.bar.close()


class MetricsLogCallback(TrainerCallback):
    """Append every log entry to `metrics.jsonl` in the run directory; stop on NaN/inf loss."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.history: list[dict[str, Any]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if not logs:
            return
        entry = {"step": state.global_step, "epoch": state.epoch, **logs}
        if "num_input_tokens_seen" not in entry:
            entry["num_input_tokens_seen"] = state.num_input_tokens_seen
        self.history.append(entry)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        for key in ("loss", "grad_norm"):
            value = logs.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                raise NonFiniteLoss(
                    f"{key} became {value} at step {state.global_step}; stopping without saving"
                )
