"""The Parquet store: rows come back as written, and a page reads only its rows."""

from __future__ import annotations

from pathlib import Path

from tuneloop.data.store import read_parquet, write_parquet


def test_a_page_of_a_stored_version(tmp_path: Path) -> None:
    rows = [{"kind": "text", "text": f"document {i}", "source": f"line {i + 1}"} for i in range(25)]
    path = tmp_path / "v.parquet"
    write_parquet(rows, path)
    assert read_parquet(path) == rows
    assert read_parquet(path, offset=10, limit=5) == rows[10:15]
    assert read_parquet(path, offset=20, limit=50) == rows[20:]
    assert read_parquet(path, offset=30, limit=5) == []
