"""Classification scores from generated answers: accuracy, precision/recall/F1, confusions.

A generated answer is compared with the reference label after `metrics.normalize`
(case, punctuation and spacing do not count), and reported under the label's own
spelling. An answer that matches no label of the set counts as its own outcome, "not in
the label set": it is wrong for accuracy, lowers the recall of the true class, and adds
to no class's precision (it was not a prediction of any class). So micro-averaged
precision is over answers that named a label, and micro recall equals accuracy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from tuneloop.evaluation.metrics import normalize
from tuneloop.intervals import bootstrap

OUTSIDE = "(not in label set)"


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def label_outcomes(
    preds: Sequence[str], refs: Sequence[str], labels: Sequence[str] | None = None
) -> tuple[list[str], list[str], list[str]]:
    """(predicted label or OUTSIDE, reference label, the label set) per example, in the
    labels' own spelling. The label set is `labels`, else the distinct references."""
    names = list(dict.fromkeys(labels if labels is not None else refs))
    by_norm: dict[str, str] = {}
    for name in names:
        key = normalize(name)
        if key in by_norm:
            raise ValueError(
                f"labels {by_norm[key]!r} and {name!r} are the same after normalisation "
                "(case, punctuation, spacing); answers could not tell them apart"
            )
        by_norm[key] = name
    pred_labels = [by_norm.get(normalize(p), OUTSIDE) for p in preds]
    ref_labels = [by_norm.get(normalize(r), r) for r in refs]
    return pred_labels, ref_labels, names


def _scores(pred: Sequence[str], ref: Sequence[str], names: Sequence[str]) -> dict[str, Any]:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for p, r in zip(pred, ref, strict=True):
        if p == r:
            tp[r] += 1
            continue
        fn[r] += 1
        if p != OUTSIDE:
            fp[p] += 1
    per_class = {}
    for name in names:
        p, r, f = _prf(tp[name], fp[name], fn[name])
        per_class[name] = {
            "precision": p,
            "recall": r,
            "f1": f,
            "support": tp[name] + fn[name],
        }
    present = [n for n in names if per_class[n]["support"] or fp[n]]
    macro = {
        k: sum(per_class[n][k] for n in present) / len(present) if present else 0.0
        for k in ("precision", "recall", "f1")
    }
    micro_p, micro_r, micro_f = _prf(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    return {
        "accuracy": sum(tp.values()) / len(ref) if ref else 0.0,
        "macro": macro,
        "micro": {"precision": micro_p, "recall": micro_r, "f1": micro_f},
        "per_class": per_class,
    }


def classification_report(
    preds: Sequence[str],
    refs: Sequence[str],
    labels: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy, macro and micro precision/recall/F1 (with bootstrap intervals for accuracy
    and macro-F1), per-class scores, the confusion matrix and the most frequent
    confusion pairs.

    Macro averages run over the classes that occur in the references or the answers (a
    class absent from both says nothing about the model), as scikit-learn does.
    """
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} answers for {len(refs)} references")
    pred, ref, names = label_outcomes(preds, refs, labels)
    for i, r in enumerate(ref):
        if r not in names:
            raise ValueError(f"example {i}: reference {r!r} is not in the label set")
    out = _scores(pred, ref, names)
    n = len(ref)
    if n:
        out["accuracy_ci"] = bootstrap(
            n, lambda idx: sum(pred[i] == ref[i] for i in idx) / len(idx), resamples, seed=seed
        ).as_dict()
        out["macro_f1_ci"] = bootstrap(
            n,
            lambda idx: _scores([pred[i] for i in idx], [ref[i] for i in idx], names)["macro"][
                "f1"
            ],
            resamples,
            seed=seed,
        ).as_dict()
    pairs = Counter((r, p) for p, r in zip(pred, ref, strict=True) if p != r)
    out["confusions"] = [
        {"reference": r, "predicted": p, "count": c} for (r, p), c in pairs.most_common()
    ]
    out["outside_label_set"] = sum(p == OUTSIDE for p in pred)
    columns = [*names, OUTSIDE]
    col = {name: j for j, name in enumerate(columns)}
    matrix = [[0] * len(columns) for _ in names]
    row = {name: i for i, name in enumerate(names)}
    for p, r in zip(pred, ref, strict=True):
        matrix[row[r]][col[p]] += 1
    out["confusion_matrix"] = {"rows": names, "columns": columns, "counts": matrix}
    out["examples"] = n
    return out
