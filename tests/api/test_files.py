"""Atomic writes: the target is the old content or the new, never a torn mix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.files import (
    OutputExists,
    atomic_write_json,
    atomic_write_text,
    check_replaceable,
    staged_dir,
    write_marker,
)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})  # not JSON-able: fails mid-write
    assert target.read_text(encoding="utf-8") == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_staged_dir_replaces_whole_and_a_failure_keeps_the_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged_dir(out) as d:
        atomic_write_text(d / "old.txt", "old")
    with pytest.raises(RuntimeError), staged_dir(out) as d:
        atomic_write_text(d / "new.txt", "new")
        raise RuntimeError("crash mid-write")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with staged_dir(out) as d:
        atomic_write_text(d / "new.txt", "new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]  # no file of the earlier output left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_check_replaceable_refuses_foreign_folders_unless_forced(tmp_path: Path) -> None:
    check_replaceable(tmp_path / "absent", "curate")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", "curate")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    with pytest.raises(OutputExists, match="--force"):
        check_replaceable(mine, "curate")
    check_replaceable(mine, "curate", force=True)
    write_marker(mine, "export")
    with pytest.raises(OutputExists):
        check_replaceable(mine, "curate")  # another step's output is not this one's to replace
    write_marker(mine, "curate")
    check_replaceable(mine, "curate")
