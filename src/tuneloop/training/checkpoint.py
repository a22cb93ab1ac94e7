"""Checkpoints that are either complete or absent, that resume a run exactly, and that
never run code when loaded.

A checkpoint is a directory `checkpoints/step-000120/` holding the trainable weights, the
optimizer and scheduler state, every random number generator's state and the loop's
position in the data. It is written into a hidden temporary directory and renamed into
place, and its `manifest.json` (written last) lists a SHA-256 per file; loading checks
them, so a half-written or damaged checkpoint is an error, never a silent fresh start.

The checksums sit beside the files they vouch for, so they catch damage, not tampering:
whoever can write a run directory (a shared volume, a downloaded run) can rewrite both.
So no file is ever unpickled as arbitrary Python objects: tensors go through
`torch.load(weights_only=True)`, which rebuilds only tensors and plain containers, random
states are JSON, and a file the manifest does not list is never opened.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

from tuneloop.errors import TrainingError
from tuneloop.files import atomic_write_json, staged_dir

MANIFEST = "manifest.json"
PREFIX = "step-"
FORMAT = 2
"""Checkpoint layout version, in the manifest. 1 (no `format` key) pickled the random
states into `rng.pt` and DeepSpeed's objects into `extra.pt`; such checkpoints are refused
unread, since loading them could run whatever code a writer of the folder put there."""

TENSOR_FILES = ("weights.pt", "optimizer.pt")
JSON_FILES = ("rng.json", "state.json")
EXTRA = "extra.pt"
REQUIRED = (*TENSOR_FILES, *JSON_FILES)
KNOWN = (*REQUIRED, EXTRA)
_PLAIN = (bool, int, float, str, type(None))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """This process's random states (Python, NumPy, torch CPU and every CUDA device)."""
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


def _rng_to_json(state: dict[str, Any]) -> dict[str, Any]:
    """One process's `rng_state()` as JSON: every generator's state is integers and bytes
    (the torch generators' ByteTensors as hex), so it reloads exactly with no unpickling."""
    version, internal, gauss = state["python"]
    kind, key, pos, has_gauss, cached = state["numpy"]
    out: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {
            "kind": str(kind),
            "key": [int(k) for k in key],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": state["torch"].numpy().tobytes().hex(),
    }
    if "cuda" in state:
        out["cuda"] = [s.cpu().numpy().tobytes().hex() for s in state["cuda"]]
    return out


def _rng_from_json(data: dict[str, Any]) -> dict[str, Any]:
    """`_rng_to_json`'s inverse; raises ValueError/TypeError/KeyError on a malformed file."""
    import numpy as np
    import torch

    def byte_tensor(text: str) -> Any:
        if not isinstance(text, str):
            raise TypeError("a generator state is not a hex string")
        return torch.frombuffer(bytearray.fromhex(text), dtype=torch.uint8).clone()

    py, npy = data["python"], data["numpy"]
    gauss = py["gauss_next"]
    if not (gauss is None or isinstance(gauss, float)):
        raise TypeError("python gauss_next is not a float")
    state: dict[str, Any] = {
        "python": (int(py["version"]), tuple(int(v) for v in py["state"]), gauss),
        "numpy": (
            str(npy["kind"]),
            np.array([int(k) for k in npy["key"]], dtype=np.uint32),
            int(npy["pos"]),
            int(npy["has_gauss"]),
            float(npy["cached_gaussian"]),
        ),
        "torch": byte_tensor(data["torch"]),
    }
    if "cuda" in data:
        state["cuda"] = [byte_tensor(s) for s in data["cuda"]]
    return state


def _check_plain(value: Any, where: str) -> None:
    """Refuse, at save time, state that `torch.load(weights_only=True)` would not rebuild,
    so a checkpoint this program writes is always one it can load."""
    import torch

    if isinstance(value, torch.Tensor) or type(value) in _PLAIN:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) not in _PLAIN:
                raise TrainingError(f"cannot checkpoint {where}: key {key!r} is not plain")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TrainingError(
        f"cannot checkpoint {where}: a {type(value).__name__} is not a tensor or plain value"
    )


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
    every rank's, as {"ranks": [...]}). extra: more state (DeepSpeed ZeRO's optimizer
    partitions) made of tensors and plain containers only, saved to `extra.pt`."""
    import torch

    rng = rng if rng is not None else rng_state()
    if "ranks" in rng:
        rng_json: dict[str, Any] = {"ranks": [_rng_to_json(r) for r in rng["ranks"]]}
    else:
        rng_json = _rng_to_json(rng)
    if extra is not None:
        _check_plain(extra, "extra state")
    final = directory / f"{PREFIX}{step:06d}"
    # a re-run of the same step (after resume) replaces it
    with staged_dir(final) as staging:
        torch.save(weights, staging / "weights.pt")
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            staging / "optimizer.pt",
        )
        atomic_write_json(staging / "rng.json", rng_json, indent=None)
        if extra is not None:
            torch.save(extra, staging / EXTRA)
        atomic_write_json(staging / "state.json", loop_state)
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
        atomic_write_json(staging / MANIFEST, {"format": FORMAT, "step": step, "files": files})
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints (those with a manifest), oldest step first."""
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.iterdir()
        if p.name.startswith(PREFIX)
        and p.name[len(PREFIX) :].isdigit()
        and (p / MANIFEST).is_file()
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
    """The manifest of a checkpoint in this format whose files are all present and intact.

    Only the names this format defines are accepted, so nothing else in the folder is
    ever opened; the checksums catch damage (a tampered file is caught by loading it
    weights-only, since its writer could have fixed the manifest too)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise TrainingError(f"checkpoint {path} is incomplete (no {MANIFEST}); pick another")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict):
            raise ValueError("files is not a mapping")
        fmt = manifest.get("format")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TrainingError(f"checkpoint {path}: unreadable {MANIFEST} ({detail})") from None
    if fmt is None or (isinstance(fmt, int) and fmt < FORMAT):
        raise TrainingError(
            f"checkpoint {path} was written by an older tuneloop, which pickled its random "
            "state; it cannot be loaded safely (unpickling can run code), so start the run "
            "again without --resume"
        )
    if fmt != FORMAT:
        raise TrainingError(
            f"checkpoint {path} has format {fmt!r}, not {FORMAT}; it was written by another "
            "tuneloop version"
        )
    unknown = sorted(str(n) for n in files if n not in KNOWN)
    if unknown:
        raise TrainingError(
            f"checkpoint {path}: {MANIFEST} lists {unknown[0]}, which no tuneloop checkpoint "
            "holds; refusing to load it"
        )
    missing = [n for n in REQUIRED if n not in files]
    if missing:
        raise TrainingError(
            f"checkpoint {path} is incomplete ({MANIFEST} does not list {missing[0]})"
        )
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise TrainingError(f"checkpoint {path} is missing {name}")
        if _sha256(file) != digest:
            raise TrainingError(
                f"checkpoint {path}: {name} is corrupt (checksum mismatch); resume from an "
                "earlier checkpoint with --from RUN_DIR/checkpoints/step-NNNNNN"
            )
    return manifest


def _load_tensors(path: Path, name: str) -> Any:
    """torch.load with only tensors and plain containers allowed; a refusal is one line."""
    import torch

    try:
        return torch.load(path / name, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise TrainingError(
            f"checkpoint {path}: {name} holds a Python object other than tensors{what}; "
            "refused, since loading it could run code"
        ) from None
    except Exception as err:  # a torch/zip error from a damaged file
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrainingError(f"checkpoint {path}: {name} cannot be loaded ({detail})") from None


def _load_json(path: Path, name: str) -> Any:
    try:
        return json.loads((path / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TrainingError(f"checkpoint {path}: {name} is not valid JSON ({detail})") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Everything a checkpoint holds, after verifying it; never runs code from it."""
    manifest = verify(path)
    weights = _load_tensors(path, "weights.pt")
    opt = _load_tensors(path, "optimizer.pt")
    extra = _load_tensors(path, EXTRA) if EXTRA in manifest["files"] else None
    state = _load_json(path, "state.json")
    if not isinstance(state, dict):
        raise TrainingError(f"checkpoint {path}: state.json is not a JSON object")
    rng_json = _load_json(path, "rng.json")
    try:
        if isinstance(rng_json, dict) and "ranks" in rng_json:
            rng: dict[str, Any] = {"ranks": [_rng_from_json(r) for r in rng_json["ranks"]]}
        else:
            rng = _rng_from_json(rng_json)
    except (KeyError, TypeError, ValueError) as err:
        raise TrainingError(f"checkpoint {path}: rng.json is malformed ({err!r})") from None
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
    # left by a crash mid-write (`.tmp-step-*`: tuneloop before files.staged_dir)
    for pattern in (f".{PREFIX}*.tmp", f".tmp-{PREFIX}*"):
        for stale in directory.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    return removed
