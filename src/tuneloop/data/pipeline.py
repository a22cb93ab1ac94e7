"""Every registered curation step, importable in one place, and the runner for a list."""

from __future__ import annotations

from typing import Any

# Importing the step modules registers their steps.
from tuneloop.data import (  # noqa: F401
    clean,
    decontaminate,
    dedup,
    pii,
    preference,
    score,
    split,
    synth,
    validate,
)
from tuneloop.data.records import Row
from tuneloop.data.steps import STEPS, StepLog, run_step


def run_steps(
    rows: list[Row], steps: list[tuple[str, dict[str, Any]]], progress: bool = True
) -> tuple[list[Row], list[StepLog]]:
    """Run steps in order; each step's log records what it dropped or changed and why."""
    import sys

    logs = []
    shared: dict[str, Any] = {}  # what one step tells the later ones (StepLog.shared)
    for name, params in steps:
        if progress:
            print(f"  {name} ({len(rows)} rows) ...", file=sys.stderr, flush=True)
        rows, log = run_step(name, rows, shared=shared, **params)
        logs.append(log)
    return rows, logs


__all__ = ["STEPS", "StepLog", "run_steps"]
