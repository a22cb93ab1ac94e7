"""A run killed with no chance to clean up (kill -9): shown as interrupted, and resumable even
with the torn metrics line such a crash leaves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tuneloop import registry
from tuneloop.config import recipe_from_dict
from tuneloop.errors import TrainingError
from tuneloop.training import train

from conftest import SUPPORT

STEPS = 6

# Trains in a child process and hangs inside step 3, after the step-2 checkpoint is written,
# so the parent can kill it at a known point.
CHILD = """
import json, sys, time
from pathlib import Path
from tuneloop.config import recipe_from_dict
from tuneloop.training import train

def hang(step, model):
    if step == 3:
        (Path(sys.argv[2]) / "hanging").touch()
        time.sleep(600)

train(recipe_from_dict(json.loads(sys.argv[1])), run_dir=sys.argv[2], on_step=hang)
"""


def _recipe(tiny_model: Path, tmp_path: Path) -> dict[str, Any]:
    return {
        "name": "crash",
        "model": str(tiny_model),
        "data": {"train": str(SUPPORT / "train.jsonl"), "max_length": 128},
        "adapter": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {
            "precision": "fp32",
            "max_steps": STEPS,
            "batch_size": 4,
            "logging_steps": 1,
            "save_steps": 2,
            "learning_rate": 1e-2,
            "warmup_ratio": 0.0,
        },
        "output_dir": str(tmp_path / "runs"),
    }


def _wait_for(check: Any, proc: subprocess.Popen[str], what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {what}: {proc.stdout}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_killed_run_shows_interrupted_and_resumes_past_a_torn_metrics_line(
    tiny_model: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(tiny_model, tmp_path)
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(recipe), str(run_dir)],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        _wait_for((run_dir / "hanging").is_file, proc, "step 3")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-000002"]
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    killed = registry.get_run(run_id)
    assert killed.status == "running"  # nothing could record the end ...
    assert (killed.pid, killed.heartbeat_at is not None) == (proc.pid, True)
    assert registry.run_status(killed) == "interrupted"  # ... but the dead pid tells

    with metrics.open("a", encoding="utf-8") as fh:  # what a crash mid-append leaves
        fh.write('{"step": 4, "loss": 0.12')

    resumed = train(recipe_from_dict(recipe), run_dir=run_dir, resume=True)
    err = capfd.readouterr().err
    assert f"resumed from step 2 of {STEPS}" in err
    assert resumed.run_id == run_id
    done = registry.get_run(run_id)
    assert registry.run_status(done) == "completed" and done.pid == os.getpid()
    lines = metrics.read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]  # every line whole
    assert [e["step"] for e in entries if "loss" in e] == list(range(1, STEPS + 1))
    steps = [e["step"] for e in registry.run_metrics(run_id) if "loss" in e]
    assert steps == list(range(1, STEPS + 1))


def test_damaged_metrics_line_before_the_end_is_a_clear_error(tmp_path: Path) -> None:
    from tuneloop.training.loop import _read_log

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n', encoding="utf-8")
    with pytest.raises(TrainingError, match=r"metrics\.jsonl:2 is not a JSON object"):
        _read_log(log)
    log.write_text('{"step": 1}\n{"step": 2}\n{"ste', encoding="utf-8")
    assert _read_log(log) == [{"step": 1}, {"step": 2}]


def test_from_without_resume_says_what_to_pass(tiny_model: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "runs" / "0001-x" / "checkpoints" / "step-000004"
    with pytest.raises(TrainingError) as err:
        train(recipe_from_dict(_recipe(tiny_model, tmp_path)), resume=str(ckpt))
    assert str(err.value) == (
        "--from picks a checkpoint of the run being resumed; name the run too: "
        f"--resume {ckpt.parent.parent} --from {ckpt} (or --resume run:ID)"
    )
