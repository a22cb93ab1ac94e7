"""Judges on a real (tiny) model: valid verdicts, both orders, position bias, the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.evaluation.judge import (
    Judge,
    PairVerdict,
    Rubric,
    cohen_kappa,
    parse_score,
    parse_verdict,
    position_bias,
)

QUESTIONS = ["How do I reset my card PIN?", "When will my transfer arrive?", "Is there a fee?"]
GOOD = [
    "Open the app, choose Card, then Reset PIN.",
    "Transfers arrive within one business day.",
    "No, top-ups by bank transfer are free.",
]
BAD = ["Bananas are yellow.", "I like trains.", "Maybe, maybe not."]


def test_rubric_grades_are_on_the_scale_and_cached(tiny_model: Path) -> None:
    rubric = Rubric(criteria="correctness", low=1, high=5)
    judge = Judge(str(tiny_model), reason_tokens=8)
    grades = judge.grade(QUESTIONS, GOOD, rubric, references=GOOD)
    assert [g.score in (1.0, 2.0, 3.0, 4.0, 5.0) for g in grades] == [True] * 3
    assert all(isinstance(g.reason, str) and g.raw.startswith("Score: ") for g in grades)
    assert judge.calls == 6  # 3 scores + 3 reasons
    again = Judge(str(tiny_model), reason_tokens=8).grade(QUESTIONS, GOOD, rubric, GOOD)
    assert [g.score for g in again] == [g.score for g in grades]  # from the registry cache
    fresh = Judge(str(tiny_model), reason_tokens=8)
    fresh.grade(QUESTIONS, GOOD, rubric, GOOD)
    assert fresh.calls == 0
    fresh.grade(QUESTIONS, BAD, rubric, GOOD)  # new answers: new calls
    assert fresh.calls == 6
    with pytest.raises(ValueError, match="same length"):
        judge.grade(QUESTIONS, GOOD[:2], rubric)


def test_pairs_are_judged_in_both_orders_and_bias_is_reported(tiny_model: Path) -> None:
    judge = Judge(str(tiny_model), reason_tokens=8)
    verdicts = judge.compare(QUESTIONS, GOOD, BAD)
    assert judge.calls == 12  # 3 pairs x 2 orders, each a verdict and a reason
    for v in verdicts:
        assert v.first_order in ("a", "b", "tie") and v.second_order in ("a", "b", "tie")
        assert v.consistent == (v.first_order == v.second_order)
        assert v.winner == (v.first_order if v.consistent else "tie")
        assert len(v.reasons) == 2
    bias = position_bias(verdicts)
    assert bias["inconsistent_rate"] == sum(not v.consistent for v in verdicts) / 3
    # swapping which model is "a" swaps the verdicts, so the bias report is the same
    swapped = judge.compare(QUESTIONS, BAD, GOOD)
    assert judge.calls == 24 - 12  # ... and every prompt was already judged: all cached
    flip = {"a": "b", "b": "a", "tie": "tie"}
    for v, s in zip(verdicts, swapped, strict=True):
        assert s.first_order == flip[v.second_order] and s.second_order == flip[v.first_order]
    assert position_bias(swapped) == bias


def test_position_bias_of_a_judge_that_always_says_a() -> None:
    # always "A": a wins when shown first, b wins when shown first -> every pair disagrees
    always_a = [PairVerdict("tie", "a", "b", False) for _ in range(4)]
    assert position_bias(always_a) == {
        "inconsistent_rate": 1.0,
        "first_position_rate": 1.0,
        "pairs": 4,
        "unparsed": 0,
    }
    # an unparseable reply is not position bias: counted apart, left out of the rates
    unparsed = [PairVerdict("tie", "?", "?", False), PairVerdict("a", "a", "a", True)]
    assert position_bias(unparsed) == {
        "inconsistent_rate": 0.0,
        "first_position_rate": 0.5,
        "pairs": 2,
        "unparsed": 1,
    }
    fair = [PairVerdict("a", "a", "a", True), PairVerdict("b", "b", "b", True)]
    assert position_bias(fair)["first_position_rate"] == 0.5
    assert position_bias(fair)["inconsistent_rate"] == 0.0


def test_parsing_free_text_replies() -> None:
    rubric = Rubric(low=1, high=10)
    assert parse_score("Score: 7. Clear and correct.", rubric) == 7.0
    assert parse_score("8 - good", rubric) == 8.0
    assert parse_score("Score: 11", rubric) is None  # off the scale: not guessed
    assert parse_score("great answer", rubric) is None
    assert parse_verdict("Verdict: B, because it answers the question.") == "B"
    assert parse_verdict("tie - both fine") == "tie"
    assert parse_verdict("I cannot decide") is None
    assert parse_verdict("A close call, but the second is better") is None  # not guessed
    assert parse_verdict(" b. ") == "B"
    with pytest.raises(ValueError):
        Rubric(low=5, high=5)


def test_cohen_kappa_matches_scikit_learn() -> None:
    from sklearn.metrics import cohen_kappa_score

    judge = ["a", "a", "b", "tie", "b", "a", "b", "b", "tie", "a"]
    human = ["a", "b", "b", "tie", "a", "a", "b", "tie", "tie", "a"]
    assert cohen_kappa(judge, human) == pytest.approx(cohen_kappa_score(judge, human))
    assert cohen_kappa(human, human) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cohen_kappa(["a"], [])


def test_endpoint_judge_needs_its_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneloop.errors import TuneloopError

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(TuneloopError, match="OPENAI_BASE_URL"):
        Judge("openai:gpt-judge")


def test_agreement_with_human_labels(tiny_model: Path, tmp_path: Path) -> None:
    """Human labels are shown as A or B by a seeded coin flip; the reported agreement and
    kappa are exactly what the per-pair verdicts give (kappa checked with scikit-learn)."""
    import json

    from sklearn.metrics import cohen_kappa_score

    from tuneloop.evaluation.judge import human_agreement

    rows = [
        {"prompt": q, "chosen": g, "rejected": b}
        for q, g, b in zip(QUESTIONS * 4, GOOD * 4, BAD * 4, strict=True)
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = human_agreement(Judge(str(tiny_model), reason_tokens=4), pairs, limit=10, seed=3)
    per = result["per_pair"]
    assert result["pairs"] == len(per) == 10
    assert result["human_labels"]["a"] > 0 and result["human_labels"]["b"] > 0  # flipped
    hits = [p["human"] == p["judge"] for p in per]
    assert result["agreement"]["value"] == pytest.approx(sum(hits) / 10)
    assert result["agreement"]["low"] <= result["agreement"]["value"] <= result["agreement"]["high"]
    judged = [p["judge"] for p in per]
    humans = [p["human"] for p in per]
    assert result["kappa"] == pytest.approx(cohen_kappa_score(judged, humans), abs=1e-9)
    assert sum(result["verdicts"].values()) == 10
    assert result["decisive"] == 10 - result["verdicts"]["tie"]
    assert result["judge_calls"] == 40  # both orders, a verdict and a reason each
    # two orders that disagree make a tie
    assert all(p["judge"] == "tie" for p in per if p["first"] != p["second"])

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a"}\n')
    from tuneloop.errors import DataError

    with pytest.raises(DataError, match="line 1"):
        human_agreement(Judge(str(tiny_model)), bad)
