"""Checkpoints that are either complete or absent, and that resume a run exactly.

A checkpoint is a directory `checkpoints/step-000120/` holding the trainable weights, the
optimizer and scheduler state, every random number generator's state and the loop's
position in the data. It is written into a hidden temporary directory and renamed into
place, and its `manifest.json` (written last) lists a SHA-256 per file; loading checks
them, so a half-written or damaged checkpoint is an error, never a silent fresh start.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

from tuneloop.errors import TrainingError

MANIFEST = "manifest.json"
PREFIX = "step-"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: Path,
    step: int,
    weights: dict[str, Any],
    optimizer: Any,
    scheduler: Any,
    loop_state: dict[str, Any],
    rng: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint `step` under `directory` atomically; returns its path.

    rng: the random states to store (default: this process's; a multi-process run passes
    every rank's, as {"ranks": [...]}). extra: state holding objects other than tensors
    (DeepSpeed ZeRO's optimizer partitions), pickled into `extra.pt`."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{step:06d}"
    staging = directory / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    torch.save(weights, staging / "weights.pt")
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        staging / "optimizer.pt",
    )
    torch.save(rng if rng is not None else rng_state(), staging / "rng.pt")
    if extra is not None:
        torch.save(extra, staging / "extra.pt")
    (staging / "state.json").write_text(json.dumps(loop_state, indent=2), encoding="utf-8")
    files = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
    (staging / MANIFEST).write_text(
        json.dumps({"step": step, "files": files}, indent=2), encoding="utf-8"
    )
    if final.exists():  # a re-run of the same step (after resume) replaces it
        shutil.rmtree(final)
    staging.rename(final)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints (those with a manifest), oldest step first."""
    if not directory.is_dir():
        return []
    found = [
        p for p in directory.iterdir() if p.name.startswith(PREFIX) and (p / MANIFEST).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(directory: Path) -> Path:
    found = list_checkpoints(directory)
    if not found:
        raise TrainingError(
            f"no checkpoint to resume from in {directory}; the run saved none (it stopped "
            "before its first checkpoint) — start it again without --resume"
        )
    return found[-1]


def verify(path: Path) -> dict[str, Any]:
    """The manifest of a checkpoint whose files are all present and intact."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise TrainingError(f"checkpoint {path} is incomplete (no {MANIFEST}); pick another")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError) as err:
        raise TrainingError(f"checkpoint {path}: unreadable {MANIFEST} ({err})") from None
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise TrainingError(f"checkpoint {path} is missing {name}")
        if _sha256(file) != digest:
            raise TrainingError(
                f"checkpoint {path}: {name} is corrupt (checksum mismatch); resume from an "
                "earlier checkpoint with --resume-from"
            )
    return manifest


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Everything a checkpoint holds, after verifying it."""
    import torch

    verify(path)
    try:
        weights = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        # rng.pt and extra.pt hold Python objects; the manifest's checksums (verified
        # above) vouch that they are the files this program wrote
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=False)
        extra_path = path / "extra.pt"
        extra = (
            torch.load(extra_path, map_location="cpu", weights_only=False)
            if extra_path.is_file()
            else None
        )
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except Exception as err:  # a torch/pickle error from a damaged file
        raise TrainingError(f"checkpoint {path} cannot be loaded: {err}") from None
    return {
        "weights": weights,
        "optimizer": opt,
        "rng": rng,
        "state": state,
        "path": path,
        "extra": extra,
    }


def rotate(directory: Path, keep_last: int, keep: set[Path] | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and those in `keep`; returns removed."""
    keep = keep or set()
    found = list_checkpoints(directory)
    removed = []
    for path in found[: max(0, len(found) - keep_last)]:
        if path not in keep:
            shutil.rmtree(path)
            removed.append(path)
    for stale in directory.glob(f".tmp-{PREFIX}*"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)
    return removed
