"""Continual fine-tuning on a tiny model: two stages, each trained from the last; the task x
stage table has the right cells, each earlier task is prompted as its own run, the probes
are one row, and a re-run with the same folder trains and scores nothing again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tuneloop import api, registry
from tuneloop.cli import cli
from tuneloop.errors import TuneloopError

from conftest import SUPPORT, ticket_run_recipe


def _plan(tiny_model: Path, tmp_path: Path) -> Path:
    support = {
        "name": "support",
        "model": str(tiny_model),
        "data": {
            "train": str(SUPPORT / "train.jsonl"),
            "validation_split": 0.2,
            "max_length": 96,
            "system_prompt": "Support assistant.",
        },
        "adapter": {"type": "lora", "r": 4, "alpha": 8},
        "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3},
        "eval": {"metrics": ["token_f1"], "max_new_tokens": 4},
    }
    tickets = ticket_run_recipe(tiny_model, tmp_path, "tickets", ["hardware", "billing"])
    (tmp_path / "support.yaml").write_text(yaml.safe_dump(support))
    (tmp_path / "tickets.yaml").write_text(yaml.safe_dump(tickets))
    suite = {
        "name": "tickets",
        "tasks": [
            {
                "name": "intents",
                "data": "${VALIDATION}",
                "metrics": ["exact_match"],
                "max_new_tokens": 4,
                "constrain_labels": True,
            },
            {  # plain chat: folded into the shared probes row, not scored twice
                "name": "general",
                "data": "builtin:general",
                "metrics": ["token_f1"],
                "use_run_format": False,
            },
        ],
    }
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    plan = {
        "name": "two",
        "model": str(tiny_model),
        "limit": 3,
        "stages": [
            {"name": "support", "recipe": "support.yaml"},
            {
                "name": "tickets",
                "recipe": "tickets.yaml",
                "overrides": ["training.max_steps=3"],
                "suite": "suite.yaml",
            },
        ],
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_two_stages_fill_the_task_by_stage_table(tiny_model: Path, tmp_path: Path) -> None:
    plan = _plan(tiny_model, tmp_path)
    out = tmp_path / "continual"
    result = CliRunner().invoke(cli, ["continual", str(plan), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "continual.json").read_text())["report"]
    assert report["columns"] == ["base", "support", "tickets"]
    rows = {r["task"]: r for r in report["rows"]}
    assert list(rows) == ["support/validation", "tickets/intents", "general"]
    assert rows["general"]["metric"] == "token_f1"  # the forgetting check's metric

    # each stage trained from the one before: the plan's model, then stage 1's run
    first, second = (registry.get_run(int(m[4:])) for m in report["models"][1:])
    assert first.recipe["model"] == str(tiny_model) and second.recipe["model"] == f"run:{first.id}"
    assert second.recipe["training"]["max_steps"] == 3  # the stage's override applied

    # which cells exist: a task is scored from the stage before it is learned, on
    support, intents, probes = (rows[n]["scores"] for n in rows)
    assert all(v is not None for v in support) and all(v is not None for v in probes)
    assert intents[0] is None and intents[1] is not None and intents[2] is not None
    assert rows["support/validation"]["learned"] == pytest.approx(support[1] - support[0])
    assert rows["support/validation"]["kept"] == pytest.approx(support[2] - support[1])
    assert rows["tickets/intents"]["learned"] == pytest.approx(intents[2] - intents[1])
    assert report["backward_transfer"] == pytest.approx(support[2] - support[1])
    assert rows["general"]["drop"]["value"] == pytest.approx(probes[0] - probes[2])

    # the support task after stage 2 was prompted as stage 1's run, and its cell is that eval
    cells = json.loads((out / "continual.json").read_text())["cells"]["support/validation"]
    record = next(e for e in registry.evals_for_run(second.id) if e.id == cells["2"]["eval_id"])
    assert record.settings["prompt_as"] == f"run:{first.id}"
    assert record.settings["system_prompt"] == "Support assistant."
    assert record.metrics["token_f1"] == pytest.approx(support[2])
    assert cells["2"]["n"] <= 3  # the plan's limit
    table = (out / "table.md").read_text()
    assert "after tickets" in table and "backward transfer" in table and "—" in table

    # a re-run with the same folder trains and scores nothing again
    runs, evals = len(registry.list_runs()), len(registry.evals_for_run(second.id))
    again = api.continual(plan, out=out)
    assert len(registry.list_runs()) == runs and len(registry.evals_for_run(second.id)) == evals
    assert again["table"] == report["table"]


def test_bad_plans_fail_with_one_line(tiny_model: Path, tmp_path: Path) -> None:
    plan = _plan(tiny_model, tmp_path)
    raw = yaml.safe_load(plan.read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**raw, "stages": [{"name": "x", "recipe": "missing.yaml"}]}))
    with pytest.raises(TuneloopError, match=r"stages\[0\]\.recipe: no file"):
        api.continual(bad, out=tmp_path / "o1")
    bad.write_text(yaml.safe_dump({**raw, "stages": raw["stages"][:1] * 2}))
    with pytest.raises(TuneloopError, match="stage names must be unique"):
        api.continual(bad, out=tmp_path / "o2")
    bad.write_text(yaml.safe_dump({**raw, "epochs": 3}))
    with pytest.raises(TuneloopError, match="epochs"):
        api.continual(bad, out=tmp_path / "o3")
    # a folder holding another plan's results is refused, not mixed with this one's
    (tmp_path / "o4").mkdir()
    (tmp_path / "o4" / "continual.json").write_text(json.dumps({"plan": {"name": "other"}}))
    with pytest.raises(TuneloopError, match="different plan"):
        api.continual(plan, out=tmp_path / "o4")


# Runs a plan in a child process whose training hangs inside step 3 (after the step-2
# checkpoint), so the parent can kill it there, as a crash or a lost machine would.
CHILD = """
import sys, time
from pathlib import Path
import tuneloop.training as training

real = training.train

def hang(step, model):
    if step == 3:
        (Path(sys.argv[2]) / "hanging").touch()
        time.sleep(600)

training.train = lambda recipe, run_dir=None, resume=False, on_step=None: real(
    recipe, run_dir=run_dir, resume=resume, on_step=hang
)
from tuneloop import api
api.continual(sys.argv[1], out=sys.argv[2])
"""


def test_a_killed_stage_resumes_from_its_checkpoint(
    tiny_model: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    plan = _plan(tiny_model, tmp_path)
    raw = yaml.safe_load(plan.read_text())
    one = {**raw, "probes": False, "stages": [raw["stages"][0]]}
    one["stages"][0]["overrides"] = ["training.max_steps=6", "training.save_steps=2"]
    plan.write_text(yaml.safe_dump(one))
    out = tmp_path / "continual"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(plan), str(out)], env=os.environ)
    deadline = time.monotonic() + 300
    while not (out / "hanging").is_file():
        assert proc.poll() is None, f"the plan exited ({proc.returncode}) before step 3"
        assert time.monotonic() < deadline, "timed out waiting for step 3"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    (killed,) = registry.list_runs()
    assert registry.run_status(killed) == "interrupted"

    report = api.continual(plan, out=out)
    assert "resumed from step 2 of 6" in capfd.readouterr().err
    (done,) = registry.list_runs()  # the same run, continued: no second run
    assert done.id == killed.id and registry.run_status(done) == "completed"
    assert report["models"] == [str(tiny_model), f"run:{done.id}"]
    assert report["rows"][0]["scores"][1] is not None
