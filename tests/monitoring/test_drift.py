"""The drift tests' false-alarm rate and power, by simulation; uncovered prompts."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.monitoring.drift import classifier_auc, drift_test, mmd_test, uncovered

TRIALS = 40


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_same_distribution_rarely_alarms_and_a_shift_is_found() -> None:
    """At alpha 0.05 the MMD permutation test rejects about 5% of same-distribution pairs
    (binomial: more than 6 of 40 would happen with probability < 1%), and finds a modest
    mean shift (0.35 sd per dimension) nearly every time; the full alert (p and AUC) never
    fires without a shift."""
    rng = np.random.default_rng(0)
    false_p = false_alert = found = 0
    aucs_null, aucs_shift = [], []
    for t in range(TRIALS):
        a, b = rng.normal(size=(60, 16)), rng.normal(size=(60, 16))
        shifted = rng.normal(size=(60, 16)) + 0.35
        null = drift_test(a, b, alpha=0.05, permutations=200, seed=t)
        alt = drift_test(a, shifted, alpha=0.05, permutations=200, seed=t)
        false_p += null.p_value < 0.05
        false_alert += null.alert
        found += alt.alert
        aucs_null.append(null.auc)
        aucs_shift.append(alt.auc)
    assert false_p <= 6, f"{false_p}/{TRIALS} false rejections at alpha 0.05"
    assert false_alert <= 2
    assert found >= 36, f"power {found}/{TRIALS}"
    assert abs(np.mean(aucs_null) - 0.5) < 0.07
    assert np.mean(aucs_shift) > 0.75


def test_mmd_is_zero_mean_under_the_null_and_validates_sizes() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    mmd2, p = mmd_test(x, x[::-1].copy(), permutations=99)
    assert p > 0.5  # the same sample: nothing to find
    assert abs(mmd2) < 0.05
    with pytest.raises(ValueError, match="at least 2"):
        mmd_test(x[:1], x)
    assert classifier_auc(x, rng.normal(size=(50, 4)) + 3) > 0.95


def test_uncovered_prompts_are_the_ones_far_from_every_reference_example() -> None:
    rng = np.random.default_rng(2)
    centres = _unit(rng.normal(size=(3, 32)))
    ref = _unit(np.repeat(centres, 20, 0) + 0.1 * rng.normal(size=(60, 32)))
    near = _unit(centres[[0, 1]] + 0.03 * rng.normal(size=(2, 32)))  # well inside clusters
    far = _unit(rng.normal(size=(2, 32)))
    recent = np.concatenate([near, far])
    found, threshold = uncovered(
        [f"ref {i}" for i in range(60)], ref, ["near a", "near b", "far a", "far b"], recent
    )
    assert sorted(u.text for u in found) == ["far a", "far b"]
    assert all(u.similarity < threshold for u in found)
    assert len(found[0].neighbours) == 3 and found[0].neighbours[0][1] >= found[0].neighbours[1][1]
