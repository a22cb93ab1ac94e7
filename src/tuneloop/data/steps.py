"""Curation steps: small composable units with one contract.

A step is a function `step(rows, log, **params) -> rows`. It returns the rows it keeps
(changed or not) and records, in `log`, every row it dropped or changed with a reason.
Nothing else is needed to write one: register it with `@step("name")` and it can be used
in a `curate.yaml`. The data card is built from these logs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneloop.data.records import Row
from tuneloop.errors import DataError

SAMPLES_PER_REASON = 3


@dataclass
class StepLog:
    """What one step did: counts per reason, a few sample rows per reason, step details."""

    step: str
    params: dict[str, Any] = field(default_factory=dict)
    rows_in: int = 0
    rows_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    changed: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[Row]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    # told of every dropped row (synth keeps each draft with the reason it was dropped)
    watch: Callable[[Row, str], None] | None = field(default=None, repr=False, compare=False)
    # facts a step leaves for the later steps of one run (never written to the card): the
    # dedup step leaves the digests of the texts it kept, so a split after it can tell
    # that no near duplicate is left without finding them all again
    shared: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def drop(self, row: Row, reason: str) -> None:
        self.dropped[reason] += 1
        self._sample(f"dropped: {reason}", row)
        if self.watch is not None:
            self.watch(row, reason)

    def change(self, row: Row, reason: str) -> None:
        self.changed[reason] += 1
        self._sample(f"changed: {reason}", row)

    def flag(self, row: Row, reason: str) -> None:
        """Count a problem found in a row (kept or not) and keep a sample of it.

        Flags count every reason found, so they can add up to more than the rows; the card
        shows them as warnings with these samples, so a user can judge a kept row too.
        """
        flagged = self.details.setdefault("flagged", {})
        flagged[reason] = flagged.get(reason, 0) + 1
        self._sample(f"flagged: {reason}", row)

    def _sample(self, key: str, row: Row) -> None:
        bucket = self.samples.setdefault(key, [])
        if len(bucket) < SAMPLES_PER_REASON:
            bucket.append(row)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "params": self.params,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": dict(self.dropped),
            "changed": dict(self.changed),
            "samples": self.samples,
            "details": self.details,
            "seconds": round(self.seconds, 3),
        }


StepFn = Callable[..., list[Row]]
STEPS: dict[str, StepFn] = {}


def step(name: str) -> Callable[[StepFn], StepFn]:
    """Register a curation step under `name`."""

    def register(fn: StepFn) -> StepFn:
        if name in STEPS:
            raise ValueError(f"curation step {name!r} registered twice")
        STEPS[name] = fn
        return fn

    return register


def run_step(
    name: str,
    rows: list[Row],
    watch: Callable[[Row, str], None] | None = None,
    shared: dict[str, Any] | None = None,
    **params: Any,
) -> tuple[list[Row], StepLog]:
    """Run one registered step with accounting (rows in/out, time); `watch(row, reason)`
    hears of every row it drops; `shared` is the run's `StepLog.shared` (one dict passed to
    every step of a run; a fresh one when None)."""
    import tuneloop.data.pipeline  # noqa: F401  (registers every built-in step)

    if name not in STEPS:
        import difflib

        close = difflib.get_close_matches(name, list(STEPS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(sorted(STEPS))}"
        raise DataError(f"unknown curation step {name!r}{hint}")
    log = StepLog(
        step=name,
        params=params,
        rows_in=len(rows),
        watch=watch,
        shared=shared if shared is not None else {},
    )
    start = time.perf_counter()
    try:
        out = STEPS[name](rows, log, **params)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise DataError(f"step {name!r}: {err}") from None
        raise
    log.seconds = time.perf_counter() - start
    log.rows_out = len(out)
    return out, log
