"""The `split` step: train / validation / test, stratified, with duplicates kept together.

Near-duplicate clusters are assigned as a unit, so a paraphrase of a test row never sits in
train (the classic leak that inflates held-out scores). Stratification keeps each label's
share the same in every split; a cluster takes the majority label of its members.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from tuneloop.data.records import Row
from tuneloop.data.steps import StepLog, step
from tuneloop.errors import DataError

SPLITS = ("train", "validation", "test")


def assign_splits(
    groups: list[list[int]],
    strata: list[str],
    validation: float,
    test: float,
    seed: int,
) -> dict[int, str]:
    """Map each group index to a split; groups in one stratum fill test, then validation."""
    rng = random.Random(seed)
    by_stratum: dict[str, list[int]] = defaultdict(list)
    for g, stratum in enumerate(strata):
        by_stratum[stratum].append(g)
    out: dict[int, str] = {}
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        rng.shuffle(members)
        size = sum(len(groups[g]) for g in members)
        targets = {"test": round(size * test), "validation": round(size * validation)}
        filled = {"test": 0, "validation": 0}
        for g in members:
            n = len(groups[g])
            dest = "train"
            for name in ("test", "validation"):
                # take the group if it brings the split closer to its target
                if targets[name] and abs(filled[name] + n - targets[name]) < abs(
                    filled[name] - targets[name]
                ):
                    dest = name
                    break
            if dest != "train":
                filled[dest] += n
            out[g] = dest
    return out


@step("split")
def split(
    rows: list[Row],
    log: StepLog,
    validation: float = 0.1,
    test: float = 0.0,
    stratify: str | None = "auto",
    keep_clusters_together: bool = True,
    threshold: float = 0.8,
    seed: int = 0,
) -> list[Row]:
    """Give every row a `split` field.

    stratify: "label" (by the row's label), "auto" (by label when rows have labels), or None.
    keep_clusters_together: put each near-duplicate cluster (MinHash, `threshold`) in one split.
    After a dedup step of the same run that compared whole rows at a threshold no higher
    than `threshold`, with the rows since only dropped, none can be left, and the clusters
    are not computed again (`dedup.left_near_free`; the card's split details say
    `near_duplicates_from: dedup`).
    """
    if not 0 <= validation < 1 or not 0 <= test < 1 or validation + test >= 1:
        raise DataError("split: validation and test must be fractions in [0, 1) summing below 1")
    if stratify not in ("auto", "label", None):
        raise DataError(f"split: stratify must be 'label', 'auto' or null, not {stratify!r}")
    if not rows:
        return rows
    if keep_clusters_together:
        from tuneloop.data.dedup import _texts, cluster_ids, left_near_free

        texts = _texts(rows, "all")
        if left_near_free(log.shared, texts, threshold):
            # an earlier dedup left none: every row is its own cluster (see left_near_free)
            ids = list(range(len(rows)))
            log.details["near_duplicates_from"] = "dedup"
        else:
            ids = cluster_ids(rows, threshold=threshold, texts=texts)
            log.details["near_duplicates_from"] = "split"
        del texts
    else:
        ids = list(range(len(rows)))
    members: dict[int, list[int]] = defaultdict(list)
    for i, cid in enumerate(ids):
        members[cid].append(i)
    groups = list(members.values())
    labels = [r.get("label") for r in rows]
    use_labels = stratify == "label" or (stratify == "auto" and any(x is not None for x in labels))
    strata = []
    for group in groups:
        if use_labels:
            counts = Counter(str(labels[i]) for i in group)
            strata.append(min(counts, key=lambda k: (-counts[k], k)))
        else:
            strata.append("all")
    assignment = assign_splits(groups, strata, validation, test, seed)
    out = [dict(r) for r in rows]
    per_split: Counter[str] = Counter()
    per_label: dict[str, Counter[str]] = defaultdict(Counter)
    for g, group in enumerate(groups):
        for i in group:
            out[i]["split"] = assignment[g]
            per_split[assignment[g]] += 1
            if use_labels:
                per_label[str(labels[i])][assignment[g]] += 1
    log.details.update(
        {
            "counts": {name: per_split.get(name, 0) for name in SPLITS},
            "stratified_by": "label" if use_labels else None,
            "clusters_kept_together": sum(1 for g in groups if len(g) > 1),
            "rows_in_multi_row_clusters": sum(len(g) for g in groups if len(g) > 1),
            "per_label": {k: dict(v) for k, v in sorted(per_label.items())},
            "seed": seed,
        }
    )
    return out
