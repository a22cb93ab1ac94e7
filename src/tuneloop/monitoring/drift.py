"""Has production moved away from what the model was trained on? Two-sample tests on
prompt embeddings, and the prompts nothing in the training or eval data resembles.

- **MMD** (kernel two-sample test): the maximum mean discrepancy between the reference and
  recent embeddings under a Gaussian kernel whose bandwidth is the median pairwise distance
  of the pooled sample; the p-value is from permutations of the pooled sample (the share of
  label shuffles with an MMD at least as large), so it needs no distributional assumption.
- **Classifier test**: a logistic regression tries to tell recent from reference
  embeddings; its cross-validated ROC AUC is 0.5 when they are indistinguishable and
  approaches 1 as they separate. It is the effect size: with thousands of prompts a tiny,
  harmless shift is statistically significant, so an alert needs both `p < alpha` and
  `AUC >= min_auc`.
- **Uncovered prompts**: a recent prompt whose nearest reference example is less similar
  than almost every reference example is to its own nearest neighbour (below the
  `quantile` of the reference set's leave-one-out nearest-neighbour similarities).

The level and power of the tests are checked by simulation in tests/monitoring/test_drift.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneloop.results import Serializable

MAX_PER_SIDE = 1000  # larger samples are subsampled (the kernel matrix is (n+m)^2)


@dataclass
class DriftResult(Serializable):
    mmd2: float
    p_value: float
    auc: float
    alpha: float
    min_auc: float
    alert: bool
    n_reference: int
    n_recent: int
    permutations: int

    def line(self) -> str:
        verdict = "DRIFT" if self.alert else "no drift"
        return (
            f"{verdict}: MMD² {self.mmd2:.4f} (permutation p = {self.p_value:.4f}, alpha "
            f"{self.alpha}), classifier AUC {self.auc:.3f} (alert at >= {self.min_auc}); "
            f"{self.n_recent} recent vs {self.n_reference} reference prompts"
        )


def _subsample(x: Any, rng: Any) -> Any:
    if len(x) <= MAX_PER_SIDE:
        return x
    return x[rng.choice(len(x), MAX_PER_SIDE, replace=False)]


def mmd_test(x: Any, y: Any, permutations: int = 500, seed: int = 0) -> tuple[float, float]:
    """(unbiased MMD² between samples x and y, permutation p-value)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x, y = _subsample(np.asarray(x, np.float64), rng), _subsample(np.asarray(y, np.float64), rng)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"the MMD test needs two samples of at least 2, got {n} and {m}")
    pooled = np.concatenate([x, y])
    sq = (pooled**2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * pooled @ pooled.T, 0)
    median = float(np.median(d2[np.triu_indices(len(pooled), 1)]))
    k = np.exp(-d2 / max(median, 1e-12))
    np.fill_diagonal(k, 0.0)

    def stat(labels: Any) -> Any:
        """MMD² for each row of a (P, n+m) 0/1 matrix (1 = first sample)."""
        a = labels.astype(np.float64)
        b = 1.0 - a
        ka, kb = a @ k, b @ k
        xx = (ka * a).sum(1) / (n * (n - 1))
        yy = (kb * b).sum(1) / (m * (m - 1))
        xy = (ka * b).sum(1) / (n * m)
        return xx + yy - 2 * xy

    observed = float(stat(np.r_[np.ones(n), np.zeros(m)][None, :])[0])
    base = np.r_[np.ones(n), np.zeros(m)]
    perms = np.stack([rng.permutation(base) for _ in range(permutations)])
    null = np.concatenate([stat(perms[i : i + 100]) for i in range(0, permutations, 100)])
    p = (1 + int((null >= observed).sum())) / (1 + permutations)
    return observed, p


def classifier_auc(x: Any, y: Any, seed: int = 0, folds: int = 5) -> float:
    """Cross-validated ROC AUC of a logistic regression telling y (recent) from x."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(seed)
    x, y = _subsample(np.asarray(x), rng), _subsample(np.asarray(y), rng)
    features = np.concatenate([x, y])
    target = np.r_[np.zeros(len(x)), np.ones(len(y))]
    folds = max(2, min(folds, len(x), len(y)))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(
        LogisticRegression(max_iter=1000, C=1.0), features, target, cv=cv,
        method="predict_proba",
    )[:, 1]  # fmt: skip
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(target, scores))


def drift_test(
    reference: Any,
    recent: Any,
    alpha: float = 0.01,
    min_auc: float = 0.6,
    permutations: int = 500,
    seed: int = 0,
) -> DriftResult:
    """Both tests and the alert (p < alpha and AUC >= min_auc)."""
    mmd2, p = mmd_test(reference, recent, permutations, seed)
    auc = classifier_auc(reference, recent, seed)
    return DriftResult(
        mmd2=mmd2,
        p_value=p,
        auc=auc,
        alpha=alpha,
        min_auc=min_auc,
        alert=p < alpha and auc >= min_auc,
        n_reference=len(reference),
        n_recent=len(recent),
        permutations=permutations,
    )


@dataclass
class Uncovered(Serializable):
    text: str
    similarity: float  # to its nearest reference example
    neighbours: list[tuple[str, float]] = field(default_factory=list)
    index: int = 0  # position among the recent prompts


def uncovered(
    reference_texts: list[str],
    reference: Any,
    recent_texts: list[str],
    recent: Any,
    quantile: float = 0.05,
    neighbours: int = 3,
) -> tuple[list[Uncovered], float]:
    """Recent prompts far from every reference example, least covered first, and the
    similarity threshold used (embeddings are L2-normalised: dot product = cosine)."""
    import numpy as np

    ref = np.asarray(reference, np.float32)
    new = np.asarray(recent, np.float32)
    if len(ref) < 2 or len(new) == 0:
        return [], float("nan")
    own = ref @ ref.T
    np.fill_diagonal(own, -np.inf)
    threshold = float(np.quantile(own.max(1), quantile))
    sims = new @ ref.T
    best = sims.max(1)
    out = []
    for i in np.argsort(best):
        if best[i] >= threshold:
            break
        near = np.argsort(-sims[i])[:neighbours]
        out.append(
            Uncovered(
                text=recent_texts[i],
                similarity=float(best[i]),
                neighbours=[(reference_texts[j], float(sims[i, j])) for j in near],
                index=int(i),
            )
        )
    return out, threshold
