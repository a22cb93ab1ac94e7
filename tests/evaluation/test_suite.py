"""Eval suites, compare, forgetting and the gate, end to end on tiny real models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tuneloop import registry
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.suite import categorize, check_gate, load_suite

from conftest import assert_one_line_error, chat, run_cli, write_jsonl

LABELS = ["card_arrival", "lost_card", "top_up_failed"]


def _suite(tmp_path: Path, judge: Path | None = None, **extra: object) -> Path:
    data = tmp_path / "intents.csv"
    with data.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(6):
            writer.writerow([f"customer message {i}", LABELS[i % 3]])
    suite: dict = {
        "name": "tiny-suite",
        "tasks": [
            {
                "name": "intents",
                "data": "intents.csv",
                "metrics": ["exact_match"],
                "max_new_tokens": 8,
                "constrain_labels": True,
            },
            {
                "name": "general",
                "data": "builtin:general",
                "metrics": ["exact_match", "token_f1"],
                "max_new_tokens": 6,
                "limit": 5,
                "use_run_format": False,  # so compare reuses it for the forgetting check
            },
        ],
        **extra,
    }
    if judge is not None:
        suite["pairwise"] = {"judge": str(judge), "limit": 2}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> Path:
    from tuneloop.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("other") / "model", bundled_model_dir, seed=1)


def test_suite_runs_every_model_on_every_task_with_a_judge(
    tiny_model: Path, other_model: Path, tmp_path: Path
) -> None:
    suite = _suite(tmp_path, judge=tiny_model)
    out = tmp_path / "report"
    proc = run_cli(
        "eval",
        str(suite),
        "--model",
        str(tiny_model),
        "--model",
        str(other_model),
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert set(report["tasks"]) == {"intents", "general"}
    ids = set()
    for task in report["tasks"].values():
        assert set(task["results"]) == {str(tiny_model), str(other_model)}
        for res in task["results"].values():
            assert sum(res["categories"].values()) == res["examples"]
            ids.add(res["eval_id"])
    assert len(ids) == 4  # every (task, model) stored as its own eval in the registry
    intents = report["tasks"]["intents"]["results"][str(tiny_model)]
    assert intents["classification"]["examples"] == 6
    assert {"accuracy", "macro_f1", "exact_match"} <= set(intents["metrics"])
    assert "not_in_label_set" not in intents["categories"]  # constrained decoding
    general = report["tasks"]["general"]["results"][str(tiny_model)]
    assert general["examples"] == 5 and general["classification"] is None
    pair = report["pairwise"]
    assert sorted(r["model"] for r in pair["leaderboard"]) == sorted(
        [str(tiny_model), str(other_model)]
    )
    # 2 tasks x 2 judged pairs, each game counted once for each model
    assert sum(r["wins"] + r["losses"] + r["ties"] for r in pair["leaderboard"]) == 2 * 2 * 2
    assert pair["position_bias"]["pairs"] == 4
    # the overall bias is the pairs' bias pooled over the two tasks
    per_task = [pair["tasks"][n]["position_bias"] for n in ("intents", "general")]
    assert [b["pairs"] for b in per_task] == [2, 2]
    assert pair["position_bias"]["inconsistent_rate"] == pytest.approx(
        sum(b["inconsistent_rate"] * b["pairs"] for b in per_task) / 4
    )
    for name in ("intents", "general"):
        board = pair["tasks"][name]["leaderboard"]
        assert sum(r["wins"] + r["losses"] + r["ties"] for r in board) == 2 * 2
    html = (out / "report.html").read_text()
    assert 'id="leaderboard"' in html and "Task intents" in html and "Position bias" in html
    assert 'id="leaderboard-intents"' in html and 'id="leaderboard-general"' in html
    assert "pairwise judge" in proc.stdout and "intents /" in proc.stdout


def test_compare_reports_changes_forgetting_and_gates(
    tiny_model: Path, other_model: Path, tmp_path: Path
) -> None:
    suite = _suite(tmp_path)
    out = tmp_path / "cmp"
    proc = run_cli(
        "compare",
        str(tiny_model),
        str(other_model),
        "--suite",
        str(suite),
        "--out",
        str(out),
        "--gate",
        "forgetting.drop<=1.0,intents.accuracy>=0",
    )
    assert proc.returncode == 0, proc.stderr
    assert "gate passed" in proc.stdout and "forgetting (token_f1" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    task = report["tasks"]["intents"]
    assert sum(task["changes"].values()) == 6
    for row in task["examples"]:
        assert row["change"] == (
            "improved" if row["delta"] > 0 else "regressed" if row["delta"] < 0 else "unchanged"
        )
    forget = report["forgetting"]
    assert forget["task"] == "general"  # the suite's own probe task is reused
    assert forget["drop"] == pytest.approx(forget["base"] - forget["tuned"])
    assert set(forget["by_category"]) <= {"arithmetic"}  # the first 5 probes
    assert report["gate"]["failed"] == []
    failing = run_cli(
        "compare",
        str(tiny_model),
        str(other_model),
        "--suite",
        str(suite),
        "--out",
        str(tmp_path / "cmp2"),
        "--gate",
        "accuracy>=1.01",
    )
    assert failing.returncode == 1
    assert "gate FAILED: accuracy" in failing.stderr
    assert json.loads((tmp_path / "cmp2" / "report.json").read_text())["gate"]["failed"]


def test_gate_keys_and_errors() -> None:
    result = {
        "tasks": {
            "a": {
                "base": {"metrics": {"accuracy": 0.95, "macro_f1": 0.7}},
                "tuned": {"metrics": {"accuracy": 0.91, "macro_f1": 0.8}},
            },
            "b": {"tuned": {"metrics": {"token_f1": 0.5}}},
        },
        "forgetting": {"drop": 0.03},
    }
    assert check_gate(result, "accuracy>=0.9, forgetting.drop<=0.05") == []
    assert check_gate(result, "b.token_f1>0.6") == ["b.token_f1 = 0.5000, needs > 0.6"]
    # .delta: tuned minus base (a promotion gate: no worse than what it replaces)
    assert check_gate(result, "a.macro_f1.delta>=0") == []
    assert check_gate(result, "accuracy.delta>=0") == ["accuracy.delta = -0.0400, needs >= 0"]
    with pytest.raises(TuneloopError, match="was not measured"):
        check_gate(result, "bleu>=1")
    with pytest.raises(TuneloopError, match="expected KEY OP NUMBER"):
        check_gate(result, "accuracy is high")


def test_error_categories() -> None:
    ex = {"reference": "card_arrival", "scores": {"exact_match": 0.0, "stopped": 1.0}}
    assert categorize({**ex, "prediction": ""}, False, False) == "empty"
    assert categorize({**ex, "prediction": "card_arrival, and more"}, False, False) == (
        "did_not_stop"
    )
    cut = {**ex, "scores": {"exact_match": 0.0, "stopped": 0.0}}
    assert categorize({**cut, "prediction": "the card is"}, False, False) == "truncated"
    assert categorize({**ex, "prediction": "{oops"}, False, True) == "format_error"
    assert categorize({**ex, "prediction": "lost_card", "label": "lost_card"}, True, False) == (
        "wrong_label"
    )
    assert (
        categorize({**ex, "prediction": "banana", "label": "(not in label set)"}, True, False)
        == "not_in_label_set"
    )
    ok = {**ex, "prediction": "card_arrival", "scores": {"exact_match": 1.0}}
    assert categorize(ok, True, False) == "correct"


def test_bad_suites_fail_clearly(tmp_path: Path, tiny_model: Path) -> None:
    path = _suite(tmp_path, colour="blue")
    with pytest.raises(TuneloopError, match="colour"):
        load_suite(path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "tasks": [{"name": "t", "data": "nope.jsonl"}]}))
    with pytest.raises(TuneloopError, match="task t: no file"):
        load_suite(bad)
    unset = tmp_path / "unset.yaml"
    unset.write_text(
        yaml.safe_dump({"name": "x", "tasks": [{"name": "t", "data": "${NO_SUCH_VAR_X}"}]})
    )
    with pytest.raises(TuneloopError, match="unset variable"):
        load_suite(unset)
    proc = run_cli("eval", str(bad), "--model", str(tiny_model))
    assert_one_line_error(proc, "task t: no file")
    assert registry.list_runs() == []


def test_the_shipped_banking77_suite_parses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import REPO

    path = REPO / "examples" / "banking77" / "suite.yaml"
    with pytest.raises(TuneloopError, match=r"unset variable in \$\{VALIDATION\}"):
        load_suite(path)
    validation = write_jsonl(tmp_path / "validation.jsonl", [chat("hi", "greeting")])
    monkeypatch.setenv("VALIDATION", str(validation))
    suite = load_suite(path)
    assert [t.name for t in suite.tasks] == ["intents", "general"]
    assert suite.tasks[0].data == str(validation) and suite.tasks[0].constrain_labels
    assert suite.pairwise is not None and suite.pairwise.tasks == ["general"]
