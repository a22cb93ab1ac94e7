"""Writes that never leave a half-written file or folder behind.

Every file tuneloop writes for a user to keep (reports, datasets, run records, exports) goes
through these: the content is written beside the target under a hidden temporary name and
renamed over it, so a crash, a full disk or Ctrl-C leaves either the old file or the new one,
never a torn one. `os.replace` is atomic on POSIX and Windows when both paths share a folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError

MARKER = ".tuneloop-output.json"
"""A folder tuneloop wrote whole holds this file, naming what wrote it (`{"kind": ...}`)."""


class OutputExists(TuneloopError):
    """The output folder holds files tuneloop did not write; nothing was changed."""


def _temporary_sibling(path: Path) -> Path:
    # unique per call: two processes writing the same target never share a temporary file
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it goes.

    For writers that want a path of their own (`pq.write_table(table, tmp)`, `np.save`).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(
    path: str | os.PathLike[str],
    data: Any,
    *,
    indent: int | None = 2,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write `data` as JSON (UTF-8, non-ASCII kept as written) to `path` atomically.

    `default` is `json.dumps`'s: reports pass `str` so paths and timestamps are written.
    """
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=default)
    atomic_write_text(path, text + "\n")


def atomic_write_jsonl(path: str | os.PathLike[str], rows: Any) -> None:
    """Write an iterable of JSON-able rows, one per line, to `path` atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target`.

    An existing `target` is moved aside first and deleted only once the new folder is in
    place, so an error at any point leaves the old folder whole. Callers decide beforehand
    whether replacing `target` is allowed (`check_replaceable`).
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = _temporary_sibling(final)
    staging.mkdir()
    try:
        yield staging
        old = None
        if final.exists():
            old = _temporary_sibling(final)
            os.replace(final, old)
        try:
            os.replace(staging, final)
        except BaseException:
            if old is not None:
                os.replace(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_marker(folder: str | os.PathLike[str], kind: str) -> None:
    """Mark `folder` as written whole by tuneloop's `kind` step (`curate`, `export`, ...)."""
    atomic_write_json(Path(folder) / MARKER, {"kind": kind})


def check_replaceable(target: str | os.PathLike[str], kind: str, *, force: bool = False) -> None:
    """Refuse to replace a non-empty `target` that an earlier `kind` step did not write.

    A folder is replaceable when it is absent, empty, or holds the marker of the same kind;
    anything else could be a user's own files, and is replaced only with `force`.
    """
    folder = Path(target)
    if force or not folder.exists():
        return
    if not folder.is_dir():
        raise OutputExists(f"{folder} is a file, not a folder; choose another output path")
    if not any(folder.iterdir()):
        return
    try:
        marked = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("kind") == kind
    except (OSError, ValueError, AttributeError):
        marked = False
    if not marked:
        raise OutputExists(
            f"{folder} is not empty and was not written by tuneloop {kind}; "
            "choose an empty or new folder, or pass --force to replace it"
        )
