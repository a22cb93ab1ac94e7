"""Classification scores and bootstrap intervals, checked against independent computations."""

from __future__ import annotations

import math
import random

import pytest

from tuneloop.evaluation.classification import OUTSIDE, classification_report, label_outcomes
from tuneloop.intervals import bootstrap, mean_interval


def _random_case(seed: int) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(seed)
    labels = [f"intent_{k}" for k in range(6)]
    refs = [rng.choice(labels[:5]) for _ in range(200)]  # intent_5 never a reference
    preds = []
    for r in refs:
        roll = rng.random()
        if roll < 0.6:
            preds.append(r.upper() + " ")  # right, spelled differently
        elif roll < 0.9:
            preds.append(rng.choice(labels))
        else:
            preds.append("something else")
    return preds, refs, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_report_matches_scikit_learn(seed: int) -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    preds, refs, labels = _random_case(seed)
    report = classification_report(preds, refs, labels, resamples=50)
    pred, ref, _ = label_outcomes(preds, refs, labels)
    assert report["accuracy"] == pytest.approx(accuracy_score(ref, pred))
    # sklearn's macro over the classes present in y_true or y_pred, minus the OUTSIDE bucket
    present = sorted({*ref, *pred} - {OUTSIDE})
    p, r, f, _ = precision_recall_fscore_support(
        ref, pred, labels=present, average="macro", zero_division=0
    )
    assert report["macro"]["precision"] == pytest.approx(p)
    assert report["macro"]["recall"] == pytest.approx(r)
    assert report["macro"]["f1"] == pytest.approx(f)
    p, r, f, _ = precision_recall_fscore_support(
        ref, pred, labels=present, average="micro", zero_division=0
    )
    assert report["micro"]["precision"] == pytest.approx(p)
    assert report["micro"]["recall"] == pytest.approx(r)
    assert report["micro"]["f1"] == pytest.approx(f)
    per = precision_recall_fscore_support(ref, pred, labels=labels, zero_division=0)
    for k, name in enumerate(labels):
        assert report["per_class"][name]["f1"] == pytest.approx(per[2][k])
        assert report["per_class"][name]["support"] == per[3][k]
    cm = confusion_matrix(ref, pred, labels=[*labels, OUTSIDE])
    assert report["confusion_matrix"]["counts"] == cm[: len(labels)].tolist()
    assert report["outside_label_set"] == sum(p == OUTSIDE for p in pred) > 0
    top = report["confusions"][0]
    assert top["count"] == max(
        cm[i][j] for i in range(len(labels)) for j in range(len(labels) + 1) if i != j
    )


def test_labels_are_reported_in_their_own_spelling() -> None:
    report = classification_report(
        ["Card Arrival", "card_arrival!", "lost card", "-1"],
        ["card_arrival"] * 3 + ["1"],
        labels=["card_arrival", "lost_card", "1", "-1"],
        resamples=10,
    )
    # case, punctuation and "_" vs " " do not count: all three name a label
    assert report["per_class"]["card_arrival"]["support"] == 3
    assert report["accuracy"] == pytest.approx(2 / 4)
    pairs = {(c["reference"], c["predicted"]) for c in report["confusions"]}
    assert pairs == {("card_arrival", "lost_card"), ("1", "-1")}  # a sign is not punctuation
    with pytest.raises(ValueError, match="same after normalisation"):
        classification_report(["a"], ["card_arrival"], labels=["card_arrival", "Card-Arrival"])


def test_unknown_reference_and_length_mismatch_are_errors() -> None:
    with pytest.raises(ValueError, match="example 1: reference 'c'"):
        classification_report(["a", "b"], ["a", "c"], labels=["a", "b"])
    with pytest.raises(ValueError, match="2 answers for 1 references"):
        classification_report(["a", "b"], ["a"])


def test_bootstrap_interval_covers_the_truth_and_shrinks_with_n() -> None:
    rng = random.Random(0)
    small = [float(rng.random() < 0.7) for _ in range(100)]
    large = [float(rng.random() < 0.7) for _ in range(2000)]
    a, b = mean_interval(small), mean_interval(large)
    assert a.low <= a.value <= a.high and b.low <= b.value <= b.high
    assert (b.high - b.low) < (a.high - a.low) / 3  # ~sqrt(20) narrower
    # a normal-approximation check: the 95% half-width is about 1.96 * sd / sqrt(n)
    sd = (b.value * (1 - b.value) / len(large)) ** 0.5
    assert (b.high - b.low) / 2 == pytest.approx(1.96 * sd, rel=0.2)
    assert mean_interval(small, seed=3) == mean_interval(small, seed=3)  # seeded
    with pytest.raises(ValueError):
        bootstrap(0, lambda idx: 0.0)


def test_bootstrap_95_percent_intervals_cover_the_truth_about_95_percent_of_the_time() -> None:
    rng = random.Random(1)
    covered = 0
    for trial in range(200):
        sample = [float(rng.random() < 0.7) for _ in range(100)]
        ci = mean_interval(sample, resamples=200, seed=trial)
        covered += ci.low <= 0.7 <= ci.high
    assert 0.88 <= covered / 200 <= 0.99


def _tournament(strengths: dict[str, float], games: int, tie_rate: float, seed: int) -> list:
    """Games between random pairs; A wins with the Bradley-Terry probability of the true
    Elo-scale ratings (after a share of ties)."""
    from tuneloop.evaluation.ranking import Game

    rng = random.Random(seed)
    names = list(strengths)
    out = []
    for _ in range(games):
        a, b = rng.sample(names, 2)
        if rng.random() < tie_rate:
            out.append(Game(a, b, "tie"))
            continue
        p_a = 1 / (1 + 10 ** ((strengths[b] - strengths[a]) / 400))
        out.append(Game(a, b, "a" if rng.random() < p_a else "b"))
    return out


def test_simulated_tournament_recovers_known_strengths() -> None:
    from tuneloop.evaluation.ranking import bradley_terry, elo, leaderboard

    truth = {"base": 850.0, "sft-1": 950.0, "sft-2": 1000.0, "dpo": 1075.0, "big": 1125.0}
    games = _tournament(truth, 3000, tie_rate=0.0, seed=0)
    order = sorted(truth, key=truth.get)
    bt = bradley_terry(games, prior=0.0)
    assert sorted(bt, key=bt.get) == order
    for m in truth:  # centred at 1000 like the truth (mean 1000): within 30 Elo points
        assert bt[m] == pytest.approx(truth[m], abs=30), m
    online = elo(games, k=8)
    assert sorted(online, key=online.get) == order
    board = leaderboard(games, resamples=100)
    assert [row["model"] for row in board] == order[::-1]
    covered = sum(row["low"] <= truth[row["model"]] <= row["high"] for row in board)
    assert covered >= 4  # 95% intervals: all or nearly all cover the truth
    assert all(
        row["games"] == sum(m in (g.a, g.b) for g in games) for row in board for m in [row["model"]]
    )


def test_ties_and_unbeaten_models_get_finite_ratings() -> None:
    from tuneloop.evaluation.ranking import Game, bradley_terry, leaderboard

    games = [Game("x", "y", "a")] * 5 + [Game("y", "z", "tie")] * 4
    ratings = bradley_terry(games)
    assert all(math.isfinite(r) for r in ratings.values())
    assert ratings["x"] > ratings["y"] == pytest.approx(ratings["z"], abs=1e-6)
    board = leaderboard(games, resamples=20)
    assert board[0]["model"] == "x" and board[0]["wins"] == 5 and board[0]["losses"] == 0
    assert {r["model"]: r["ties"] for r in board} == {"x": 0, "y": 4, "z": 4}
    with pytest.raises(ValueError, match="winner must be"):
        Game("x", "y", "draw")
    with pytest.raises(ValueError, match="two different models"):
        Game("x", "x", "a")
