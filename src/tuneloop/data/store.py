"""Curated datasets on disk: Parquet files, content-addressed, recorded in the registry.

Each stored version is immutable: it is written once to `$TUNELOOP_HOME/datasets/<hash>.parquet`
(temporary file, then rename) and the registry row points at it, with its parent version and
the curation step log, so `tuneloop data show|diff` work even after the user's output
folder is gone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tuneloop.data.records import Row


def _schema() -> Any:
    import pyarrow as pa

    msg = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return pa.schema(
        [
            ("kind", pa.string()),
            ("source", pa.string()),
            ("split", pa.string()),
            ("messages", msg),
            ("prompt", msg),
            ("chosen", msg),
            ("rejected", msg),
            ("completion", msg),
            ("label", pa.string()),
            ("desirable", pa.bool_()),
            ("text", pa.string()),
        ]
    )


def write_parquet(rows: list[Row], path: Path) -> None:
    """Write rows with tuneloop's fixed schema, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    columns = {name: [r.get(name) for r in rows] for name in schema.names}
    columns["label"] = [None if v is None else str(v) for v in columns["label"]]
    table = pa.table(columns, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    return [
        {k: v for k, v in row.items() if v is not None} for row in pq.read_table(path).to_pylist()
    ]


def store_version(
    name: str,
    rows: list[Row],
    fmt: str,
    parent_id: int | None,
    meta: dict[str, Any],
) -> Any:
    """Register `rows` as a dataset version and keep an immutable Parquet copy."""
    from tuneloop import registry
    from tuneloop.config.home import tuneloop_home

    digest = registry.content_hash(rows)
    path = tuneloop_home() / "datasets" / f"{digest[:24]}.parquet"
    if not path.is_file():
        write_parquet(rows, path)
    return registry.register_dataset(name, rows, str(path), fmt, meta=meta, parent_id=parent_id)
