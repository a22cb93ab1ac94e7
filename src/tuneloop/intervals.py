"""Bootstrap confidence intervals for any aggregate of per-example results.

Why the bootstrap for everything: evaluation sets are small (hundreds of rows), and the
difference between two checkpoints is often inside the noise. A percentile bootstrap
over examples works the same for a mean (accuracy), a corpus statistic (BLEU, macro-F1)
and a rating fitted from games (Elo), so every number in a report gets the same kind of
interval. Resampling is seeded, so a report is reproducible.

A foundation module (importable from every layer) rather than part of `evaluation`: a
training method reports intervals too (a reward model's validation pair accuracy in its
run record), and `training` must not import `evaluation`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """A statistic with its percentile-bootstrap interval at `level` (e.g. 0.95)."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "level": self.level}


def bootstrap(
    n: int,
    statistic: Callable[[Sequence[int]], float],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """`statistic(indices)` on all `n` items, with a percentile interval from `resamples`
    draws of `n` indices with replacement.

    The statistic gets indices rather than values so corpus-level metrics (recomputed from
    the resampled items) and means are handled alike.
    """
    import numpy as np

    if n <= 0:
        raise ValueError("bootstrap needs at least one item")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    value = float(statistic(range(n)))
    rng = np.random.default_rng(seed)
    draws = np.array([float(statistic(rng.integers(0, n, n).tolist())) for _ in range(resamples)])
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Interval(value, value, value, level)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(value, float(low), float(high), level)


def mean_interval(
    values: Sequence[float], resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> Interval:
    """The mean of per-example scores with its bootstrap interval."""
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return bootstrap(len(arr), lambda idx: float(arr[list(idx)].mean()), resamples, level, seed)
