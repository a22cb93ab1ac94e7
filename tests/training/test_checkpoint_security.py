"""Resuming never runs code from a checkpoint: whoever can write a run directory can plant a
pickle payload in any checkpoint file and fix up the manifest's checksums, so the checksums
vouch for nothing; every file must be loadable without unpickling arbitrary objects."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tuneloop.config import recipe_from_dict
from tuneloop.errors import TrainingError
from tuneloop.training import train
from tuneloop.training.checkpoint import load_checkpoint

from conftest import SUPPORT


class Payload:
    """Unpickling this creates `marker`: the proof that a checkpoint ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _recipe(tiny_model: Path, tmp_path: Path) -> Any:
    return recipe_from_dict(
        {
            "name": "tiny",
            "model": str(tiny_model),
            "data": {"train": str(SUPPORT / "train.jsonl"), "max_length": 128},
            "adapter": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
            "training": {
                "precision": "fp32",
                "max_steps": 3,
                "save_steps": 1,
                "save_total_limit": 10,
                "batch_size": 4,
                "logging_steps": 1,
                "warmup_ratio": 0.0,
            },
            "output_dir": str(tmp_path / "runs"),
        }
    )


@pytest.fixture
def finished_run(tiny_model: Path, tmp_path: Path) -> tuple[Any, Path, Path]:
    """(recipe, run directory, its step-1 checkpoint) of a finished 3-step run."""
    recipe = _recipe(tiny_model, tmp_path)
    run_dir = tmp_path / "run"
    train(recipe, run_dir=run_dir)
    ckpt = run_dir / "checkpoints" / "step-000001"
    assert (ckpt / "manifest.json").is_file()
    return recipe, run_dir, ckpt


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plant(ckpt: Path, name: str, marker: Path, listed: bool = True) -> None:
    """Write a pickle payload as `name` and, when `listed`, fix up the manifest to match,
    as an attacker who can write the directory would."""
    import torch

    target = ckpt / name
    if name == "manifest.json":  # the manifest itself: nothing left to vouch for it
        torch.save(Payload(marker), target)
        return
    torch.save({"state": Payload(marker)}, target)
    if listed:
        manifest = json.loads((ckpt / "manifest.json").read_text())
        manifest["files"][name] = _sha256(target)
        (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _one_line_refusal(err: BaseException) -> str:
    message = str(err)
    assert message and "\n" not in message, message
    return message


def test_a_payload_in_any_checkpoint_file_is_refused_and_never_runs(
    finished_run: tuple[Any, Path, Path], tmp_path: Path
) -> None:
    recipe, run_dir, ckpt = finished_run
    pristine = tmp_path / "pristine"
    shutil.copytree(ckpt, pristine)
    names = sorted(p.name for p in pristine.iterdir())
    assert "manifest.json" in names and len(names) >= 5, names
    for name in names:
        shutil.rmtree(ckpt)
        shutil.copytree(pristine, ckpt)
        marker = tmp_path / f"ran-{name}"
        _plant(ckpt, name, marker)
        with pytest.raises(TrainingError) as caught:
            train(recipe, run_dir=run_dir, resume=ckpt)
        assert str(ckpt) in _one_line_refusal(caught.value), name
        assert not marker.exists(), f"the payload in {name} ran"


def test_a_payload_in_rng_pt_with_the_manifest_fixed_up_never_runs(
    finished_run: tuple[Any, Path, Path], tmp_path: Path
) -> None:
    recipe, run_dir, ckpt = finished_run
    marker = tmp_path / "ran"
    _plant(ckpt, "rng.pt", marker)
    with pytest.raises(TrainingError) as caught:
        train(recipe, run_dir=run_dir, resume=ckpt)
    _one_line_refusal(caught.value)
    assert not marker.exists()


def test_a_payload_in_a_listed_extra_pt_never_runs(
    finished_run: tuple[Any, Path, Path], tmp_path: Path
) -> None:
    recipe, run_dir, ckpt = finished_run
    marker = tmp_path / "ran"
    _plant(ckpt, "extra.pt", marker)
    with pytest.raises(TrainingError, match=r"extra\.pt") as caught:
        train(recipe, run_dir=run_dir, resume=ckpt)
    _one_line_refusal(caught.value)
    assert not marker.exists()


def test_files_the_manifest_does_not_list_are_never_read(
    finished_run: tuple[Any, Path, Path], tmp_path: Path
) -> None:
    recipe, run_dir, ckpt = finished_run
    marker = tmp_path / "ran"
    for name in ("extra.pt", "rng.pt", "payload.pt"):
        _plant(ckpt, name, marker, listed=False)
    loaded = load_checkpoint(ckpt)
    assert loaded["extra"] is None
    resumed = train(recipe, run_dir=run_dir, resume=ckpt)  # the unlisted files change nothing
    assert sorted(h["step"] for h in resumed.history if "loss" in h) == [1, 2, 3]
    assert not marker.exists()


def test_checksum_error_names_the_real_flag(finished_run: tuple[Any, Path, Path]) -> None:
    recipe, run_dir, ckpt = finished_run
    with (ckpt / "weights.pt").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"garbage")
    with pytest.raises(TrainingError, match=r"weights\.pt is corrupt") as caught:
        train(recipe, run_dir=run_dir, resume=ckpt)
    message = _one_line_refusal(caught.value)
    assert "--resume-from" not in message and "--from" in message


def test_a_checkpoint_in_the_old_pickled_format_is_refused_unread(
    finished_run: tuple[Any, Path, Path], tmp_path: Path
) -> None:
    """Checkpoints from before this format stored random states as pickles: they are
    refused with a message saying so, and their rng.pt is never unpickled."""
    recipe, run_dir, ckpt = finished_run
    marker = tmp_path / "ran"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest.pop("format", None)
    for name in list(manifest["files"]):
        if name.startswith("rng"):
            (ckpt / name).unlink()
            del manifest["files"][name]
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    _plant(ckpt, "rng.pt", marker)
    with pytest.raises(TrainingError, match="older tuneloop") as caught:
        train(recipe, run_dir=run_dir, resume=ckpt)
    _one_line_refusal(caught.value)
    assert not marker.exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuneloop.cli", *args],
        env=dict(os.environ, TUNELOOP_NO_PROGRESS="1"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize("name", ["rng.pt", "extra.pt", "weights.pt", "optimizer.pt"])
def test_resume_from_any_directory_gets_the_same_checks(
    finished_run: tuple[Any, Path, Path], tmp_path: Path, name: str
) -> None:
    """`tuneloop train --resume RUN --from DIR` with DIR outside the run (a downloaded or
    shared checkpoint): the payload is refused in one line and never runs."""
    _, run_dir, ckpt = finished_run
    elsewhere = tmp_path / "downloaded" / "step-000001"
    shutil.copytree(ckpt, elsewhere)
    marker = tmp_path / "ran"
    _plant(elsewhere, name, marker)
    done = _cli("train", "--resume", str(run_dir), "--from", str(elsewhere))
    assert done.returncode != 0, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(elsewhere) in last, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not marker.exists()


def test_an_unlisted_payload_beside_a_from_checkpoint_is_never_read(
    finished_run: tuple[Any, Path, Path], tmp_path: Path
) -> None:
    _, run_dir, ckpt = finished_run
    elsewhere = tmp_path / "downloaded" / "step-000001"
    shutil.copytree(ckpt, elsewhere)
    marker = tmp_path / "ran"
    _plant(elsewhere, "extra.pt", marker, listed=False)
    done = _cli("train", "--resume", str(run_dir), "--from", str(elsewhere))
    assert done.returncode == 0, done.stderr[-2000:]
    assert not marker.exists()
