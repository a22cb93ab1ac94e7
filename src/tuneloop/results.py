"""Results as typed dataclasses that turn into plain JSON (docs/python.md).

Every public function returns one of these rather than a dict with private keys, so a
notebook can read `result.metrics` and a pipeline can store `result.to_json()`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


def plain(value: Any) -> Any:
    """JSON-able copy of a result field: paths as strings, nested results as dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


class Serializable:
    """`to_dict()` and `to_json()` for a result dataclass."""

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-able values (paths and timestamps as strings)."""
        return plain(self)

    def to_json(self, path: str | Path | None = None, *, indent: int = 2) -> str:
        """The result as JSON text; with `path`, also written there atomically."""
        text = json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)
        if path is not None:
            from tuneloop.files import atomic_write_text

            atomic_write_text(path, text + "\n")
        return text
