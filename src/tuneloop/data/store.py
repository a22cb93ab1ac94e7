"""Curated datasets on disk: Parquet files, content-addressed, recorded in the registry.

Each stored version is immutable: it is written once to `$TUNELOOP_HOME/datasets/<hash>.parquet`
(`tuneloop.files.atomic_path`: temporary file, then rename) and the registry row points at
it, with its parent version and the curation step log, so `tuneloop data show|diff` work
even after the user's output folder is gone.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tuneloop.data.records import Row
from tuneloop.files import atomic_path


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


BATCH_ROWS = 10_000  # rows per Arrow batch: memory for one batch, not for the whole split


def write_parquet(rows: Iterable[Row], path: Path) -> int:
    """Write rows with tuneloop's fixed schema, atomically, a batch at a time; returns the count.

    A `ParquetWriter` takes one batch of `BATCH_ROWS` rows at a time, so writing a split
    never holds a second, columnar copy of all its rows.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    count = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for batch in _batches(rows, BATCH_ROWS):
            columns = {name: [r.get(name) for r in batch] for name in schema.names}
            columns["label"] = [None if v is None else str(v) for v in columns["label"]]
            writer.write_table(pa.table(columns, schema=schema))
            count += len(batch)
    return count


def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_parquet(path: Path, offset: int = 0, limit: int | None = None) -> list[Row]:
    """The stored rows; with `limit`, only rows `offset` to `offset + limit`, reading no
    batch past them (a page of a 2M-row version costs one batch, not the file)."""
    import itertools

    import pyarrow.parquet as pq

    rows = (
        row
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
        for row in batch.to_pylist()
    )
    stop = None if limit is None else offset + limit
    return [
        {k: v for k, v in row.items() if v is not None}
        for row in itertools.islice(rows, offset, stop)
    ]


def store_version(
    name: str,
    rows: list[Row],
    fmt: str,
    parent_id: int | None,
    meta: dict[str, Any],
    written: Path | None = None,
) -> Any:
    """Register `rows` as a dataset version and keep an immutable Parquet copy.

    written: a Parquet file of exactly these rows already written by `write_parquet`; it
    is copied into the store rather than encoded a second time.
    """
    from tuneloop import registry
    from tuneloop.config.home import tuneloop_home

    digest = registry.content_hash(rows)
    path = tuneloop_home() / "datasets" / f"{digest[:24]}.parquet"
    if not path.is_file():
        if written is not None:
            with atomic_path(path) as tmp:
                shutil.copyfile(written, tmp)
        else:
            write_parquet(rows, path)
    return registry.register_dataset(
        name,
        None,
        str(path),
        fmt,
        meta=meta,
        parent_id=parent_id,
        digest=digest,
        num_rows=len(rows),
    )
