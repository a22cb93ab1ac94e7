"""Inter-annotator agreement: how far human labels can be trusted before training on them.

The human feedback studio collects labels (preferences, ratings, categories) from several
people. Before those labels become training data or the yardstick a judge is measured
against, one wants to know whether the raters agree more than chance would make them:
labels that raters cannot reproduce teach a model noise.

- `cohen_kappa`: two raters over the same items;
- `fleiss_kappa`: any number of raters, every item labelled by the same number of them;
- `krippendorff_alpha`: any number of raters with missing labels, at the nominal, ordinal,
  interval or ratio level (a 1-5 rating that is off by one is a smaller disagreement than
  one off by four);
- `agreement`: all of them at once from the studio's unit -> {rater -> label} mapping.

For every statistic 1 is perfect agreement and 0 is what chance alone gives; below 0 the
raters disagree more often than chance would.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

LEVELS = ("nominal", "ordinal", "interval", "ratio")


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Cohen's kappa between two raters' labels of the same items (1 = full agreement,
    0 = what chance alone gives): how far a judge can be trusted against human labels."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} labels against {len(b)}")
    if not a:
        raise ValueError("kappa needs at least one item")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def fleiss_kappa(units: Sequence[Sequence[Any]]) -> float:
    """Fleiss' kappa: chance-corrected agreement of many raters on nominal labels.

    Each unit is the list of labels its raters gave. The raters need not be the same
    people from unit to unit, but every unit must have the same number (>= 2) of labels,
    because the statistic is the share of agreeing rater pairs per unit, and that share is
    only comparable between units with the same number of pairs. The categories are the
    labels seen. When chance alone would always agree (a single category), the result is
    1.0 if the raters did agree and 0.0 otherwise, as for `cohen_kappa`.
    """
    if not units:
        raise ValueError("Fleiss' kappa needs at least one unit")
    raters = len(units[0])
    for index, unit in enumerate(units):
        if len(unit) != raters or len(unit) < 2:
            raise ValueError(
                f"Fleiss' kappa needs the same number (>= 2) of labels on every unit: "
                f"unit {index} has {len(unit)}, unit 0 has {raters}"
            )
    categories: dict[Any, int] = {}
    for unit in units:
        for label in unit:
            categories.setdefault(label, len(categories))
    counts = np.zeros((len(units), len(categories)))
    for row, unit in enumerate(units):
        for label, count in Counter(unit).items():
            counts[row, categories[label]] = count
    # share of agreeing (ordered) rater pairs in each unit, then on average
    per_unit = ((counts * counts).sum(axis=1) - raters) / (raters * (raters - 1))
    observed = float(per_unit.mean())
    shares = counts.sum(axis=0) / (len(units) * raters)
    expected = float((shares * shares).sum())
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def _missing(value: Any) -> bool:
    """None, and NaN as numeric tables write a missing label, are no label."""
    return value is None or (isinstance(value, numbers.Real) and math.isnan(value))


def _distances(values: list[Any], frequencies: np.ndarray, level: str) -> np.ndarray:
    """The squared distance between every two values at `level` (Krippendorff's metrics)."""
    if level == "nominal":
        return 1.0 - np.eye(len(values))
    if level == "ordinal":
        # Two ranks are as far apart as the number of values coded between them, each end
        # counting half: a rare value between two common ones barely separates them.
        cumulative = np.cumsum(frequencies)
        low = np.minimum.outer(np.arange(len(values)), np.arange(len(values)))
        high = np.maximum.outer(np.arange(len(values)), np.arange(len(values)))
        between = cumulative[high] - cumulative[low] + frequencies[low]
        return (between - (frequencies[low] + frequencies[high]) / 2) ** 2
    points = np.asarray(values, dtype=float)
    difference = np.subtract.outer(points, points)
    if level == "interval":
        return difference**2
    total = np.add.outer(points, points)
    ratio = np.divide(difference, total, out=np.zeros_like(difference), where=total != 0)
    return ratio**2


def krippendorff_alpha(units: Sequence[Sequence[Any | None]], level: str = "nominal") -> float:
    """Krippendorff's alpha: agreement of any number of raters with missing labels.

    `units` is the reliability data as units x raters: each row one unit, each column one
    rater, None (or NaN) where that rater did not label that unit. Unlike the kappas it
    needs no complete table, which human labelling never gives, and `level` says how far
    apart two different labels are: "nominal" (different is different), "ordinal" (by rank,
    weighted by how often the values between them were used), "interval" (squared
    difference) or "ratio" (squared difference relative to the sum). Units with fewer than
    two labels carry no information on agreement and are ignored. When the labels never
    differ, so no disagreement is expected, the result is 1.0.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}: expected one of {', '.join(LEVELS)}")
    pairable = [
        [value for value in unit if not _missing(value)]
        for unit in units
        if sum(not _missing(value) for value in unit) >= 2
    ]
    if not pairable:
        raise ValueError("Krippendorff's alpha needs pairable values, but no unit has two labels")
    if level in ("interval", "ratio"):
        for unit in pairable:
            for value in unit:
                if not isinstance(value, numbers.Real):
                    raise ValueError(f"the {level} level needs numeric labels, got {value!r}")
    seen = list(dict.fromkeys(value for unit in pairable for value in unit))
    if level == "nominal":
        values = seen
    else:
        try:
            values = sorted(seen)
        except TypeError as error:
            raise ValueError(f"the {level} level needs labels that can be ordered") from error
    index = {value: position for position, value in enumerate(values)}

    # The coincidence matrix: every ordered pair of labels within a unit, each unit's pairs
    # weighted 1 / (labels - 1) so that every label contributes one pairing in total.
    coincidences = np.zeros((len(values), len(values)))
    for unit in pairable:
        counted = Counter(index[value] for value in unit)
        positions = np.fromiter(counted.keys(), dtype=int)
        counts = np.fromiter(counted.values(), dtype=float)
        weight = 1.0 / (len(unit) - 1)
        coincidences[np.ix_(positions, positions)] += weight * np.outer(counts, counts)
        coincidences[positions, positions] -= weight * counts
    frequencies = coincidences.sum(axis=0)
    total = frequencies.sum()
    distance = _distances(values, frequencies, level)
    observed = float((coincidences * distance).sum())
    expected = float((np.outer(frequencies, frequencies) * distance).sum()) / (total - 1)
    if expected == 0.0:
        return 1.0
    return 1.0 - observed / expected


def agreement(
    labels: Mapping[Hashable, Mapping[str, Any]], level: str = "nominal"
) -> dict[str, Any]:
    """Every agreement statistic of the studio's labels, so one report answers "can these
    labels be trusted?" whatever the design of the labelling.

    `labels` maps each unit to {rater: label}; a rater who did not label a unit is absent
    (or None). Each statistic uses the units it can: percent agreement and alpha every
    unit with two labels or more, Cohen's kappa every pair of raters with two shared units
    (averaged over the pairs, each listed in "cohen_pairs"), Fleiss' kappa the units with
    the most common number of labels (on a tie, the larger number). Percent agreement and
    the kappas compare labels as nominal; only alpha uses `level`. A statistic that is
    undefined on these labels is None (or the pair left out) rather than an error.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}: expected one of {', '.join(LEVELS)}")
    given = {
        unit: {rater: label for rater, label in sorted(row.items()) if not _missing(label)}
        for unit, row in labels.items()
    }
    raters = sorted({rater for row in given.values() for rater in row})
    pairable = [row for row in given.values() if len(row) >= 2]

    percent = None
    if pairable:
        shares = []
        for row in pairable:
            m = len(row)
            agreeing = sum(c * (c - 1) for c in Counter(row.values()).values())
            shares.append(agreeing / (m * (m - 1)))
        percent = float(np.mean(shares))

    shared: dict[tuple[str, str], tuple[list[Any], list[Any]]] = {}
    for row in pairable:
        for first, second in combinations(row, 2):  # rows are sorted by rater
            a, b = shared.setdefault((first, second), ([], []))
            a.append(row[first])
            b.append(row[second])
    cohen_pairs = []
    for (first, second), (a, b) in sorted(shared.items()):
        if len(a) < 2:
            continue
        try:
            kappa = cohen_kappa(a, b)
        except ValueError:
            continue
        cohen_pairs.append({"raters": [first, second], "units": len(a), "kappa": float(kappa)})
    cohen = float(np.mean([p["kappa"] for p in cohen_pairs])) if cohen_pairs else None

    fleiss = None
    fleiss_units = 0
    sizes = Counter(len(row) for row in pairable)
    if sizes:
        size = max(sizes, key=lambda s: (sizes[s], s))
        chosen = [list(row.values()) for row in pairable if len(row) == size]
        try:
            fleiss = float(fleiss_kappa(chosen))
            fleiss_units = len(chosen)
        except ValueError:
            fleiss = None

    alpha = None
    if pairable:
        table = [[row.get(rater) for rater in raters] for row in pairable]
        try:
            alpha = float(krippendorff_alpha(table, level))
        except ValueError:
            alpha = None

    return {
        "units": len(pairable),
        "raters": raters,
        "labels": sum(len(row) for row in given.values()),
        "percent_agreement": percent,
        "cohen_kappa": cohen,
        "cohen_pairs": cohen_pairs,
        "fleiss_kappa": fleiss,
        "fleiss_units": fleiss_units,
        "krippendorff_alpha": alpha,
        "level": level,
    }
