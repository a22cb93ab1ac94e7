"""Compare two stored dataset versions row by row (by content hash)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from tuneloop.data.records import Row
from tuneloop.errors import DataError


def _row_hash(row: Row) -> str:
    body = {k: v for k, v in row.items() if k not in ("source", "split")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _rows(dataset_id: int) -> tuple[Any, list[Row]]:
    from tuneloop.data.store import read_parquet
    from tuneloop.registry import get_dataset

    record = get_dataset(dataset_id)
    path = Path(record.path)
    if path.suffix == ".parquet" and path.is_file():
        return record, read_parquet(path)
    if path.is_file():
        from tuneloop.data.readers import read_rows

        return record, read_rows(path, record.format if record.format != "unknown" else "auto").rows
    raise DataError(f"dataset {dataset_id}: its file {path} is gone")


def diff_versions(old_id: int, new_id: int, examples: int = 3) -> dict[str, Any]:
    """Counts of rows only in old, only in new, in both; label count changes; examples."""
    old_rec, old_rows = _rows(old_id)
    new_rec, new_rows = _rows(new_id)
    old_h = {_row_hash(r): r for r in old_rows}
    new_h = {_row_hash(r): r for r in new_rows}
    removed = [old_h[h] for h in old_h.keys() - new_h.keys()]
    added = [new_h[h] for h in new_h.keys() - old_h.keys()]
    old_labels = Counter(r["label"] for r in old_rows if r.get("label") is not None)
    new_labels = Counter(r["label"] for r in new_rows if r.get("label") is not None)
    shifts = {
        label: new_labels.get(label, 0) - old_labels.get(label, 0)
        for label in sorted(old_labels.keys() | new_labels.keys())
        if new_labels.get(label, 0) != old_labels.get(label, 0)
    }
    return {
        "old": {
            "id": old_rec.id,
            "name": old_rec.name,
            "version": old_rec.version,
            "rows": len(old_rows),
        },
        "new": {
            "id": new_rec.id,
            "name": new_rec.name,
            "version": new_rec.version,
            "rows": len(new_rows),
        },
        "added": len(added),
        "removed": len(removed),
        "unchanged": len(old_h.keys() & new_h.keys()),
        "label_changes": shifts,
        "added_examples": [r.get("source") for r in added[:examples]],
        "removed_examples": [r.get("source") for r in removed[:examples]],
    }
