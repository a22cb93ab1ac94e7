"""Read data files of any supported type into normalised rows, naming every bad row.

Files: JSONL (and any unknown extension, one JSON object per line), JSON (a list, or
`{"data": [...]}`), CSV, Parquet, a saved `datasets` directory, and raw documents (.txt,
.md, .html, or a directory of them). Every reader keeps the good rows and reports each bad
one as `line 7: ...` or `row 3: ...`; undecodable bytes never raise past the reader.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.data.formats import (
    FORMATS,
    Conversation,
    RowOptions,
    _undetected,
    detect_format,
    to_row,
)
from tuneloop.data.records import Row
from tuneloop.errors import DataError

DOC_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm")


@dataclass
class RowError:
    """One malformed row: where it is (`line 7` or `row 3`) and what is wrong."""

    where: str
    problem: str

    def __post_init__(self) -> None:
        # one line, bounded: problems quote user data, which may hold newlines or megabytes
        text = self.problem.replace("\r", "\\r").replace("\n", "\\n")
        self.problem = text if len(text) <= 300 else text[:297] + "..."

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


@dataclass
class ReadResult:
    """Rows read from a file, the detected format and kind, and the rows that failed."""

    path: str
    format: str
    rows: list[Row] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    @property
    def kind(self) -> str:
        kinds = {r["kind"] for r in self.rows}
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none")

    def raise_if_errors(self, limit: int = 3) -> None:
        if not self.errors:
            return
        shown = "; ".join(str(e) for e in self.errors[:limit])
        more = f" (and {len(self.errors) - limit} more)" if len(self.errors) > limit else ""
        raise DataError(f"{self.path}: {len(self.errors)} malformed row(s): {shown}{more}")


@dataclass
class LoadedData:
    """Conversations (SFT rows) read from a file: what training and evaluation consume."""

    path: str
    format: str
    conversations: list[Conversation]
    errors: list[RowError]
    labels: list[str | None]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None


def raw_rows(path: Path) -> tuple[list[tuple[str, Any]], list[RowError]]:
    """Parsed rows as (where, object) plus the rows that could not be parsed."""
    suffix = path.suffix.lower()
    if path.is_dir():
        return _datasets_dir_rows(path), []
    if suffix == ".parquet":
        return _parquet_rows(path), []
    if suffix in DOC_SUFFIXES:
        from tuneloop.data.documents import read_document

        return [(path.name, {"text": read_document(path)})], []
    rows: list[tuple[str, Any]] = []
    errors: list[RowError] = []
    if suffix == ".json":
        text = _read_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json data file must hold a list of rows")
        return [(f"row {i}", item) for i, item in enumerate(data)], []
    if suffix == ".csv":
        text = _read_text(path)
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            for i, item in enumerate(reader, start=2):
                if None in item:
                    errors.append(RowError(f"line {i}", "more fields than the header"))
                    continue
                rows.append((f"line {reader.line_num}", dict(item)))
        except csv.Error as err:
            errors.append(RowError(f"line {reader.line_num}", f"invalid CSV ({err})"))
        return rows, errors
    # .jsonl and anything else: one JSON object per line, decoded line by line so one
    # undecodable line does not lose the rest of the file
    try:
        data_bytes = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    if data_bytes.startswith(b"\xef\xbb\xbf"):
        data_bytes = data_bytes[3:]
    for i, raw_line in enumerate(data_bytes.split(b"\n"), start=1):
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as err:
            errors.append(RowError(f"line {i}", f"not UTF-8 ({err.reason} at byte {err.start})"))
            continue
        if not line.strip():
            continue
        try:
            rows.append((f"line {i}", json.loads(line)))
        except (json.JSONDecodeError, RecursionError) as err:
            msg = f"{err.msg} at column {err.colno}" if hasattr(err, "msg") else "too deeply nested"
            errors.append(RowError(f"line {i}", f"invalid JSON ({msg})"))
    return rows, errors


def _parquet_rows(path: Path) -> list[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    return [(f"row {i}", row) for i, row in enumerate(table.to_pylist())]


def _datasets_dir_rows(path: Path) -> list[tuple[str, Any]]:
    """A `datasets.save_to_disk` directory (its train split if it holds several)."""
    if not ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise DataError(
            f"{path} is a directory but not a saved `datasets` dataset; pass a file, or a "
            "directory of .txt/.md/.html documents with format text"
        )
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as err:
        raise DataError(f"{path}: cannot load saved dataset ({err})") from None
    if isinstance(ds, DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    return [(f"row {i}", row) for i, row in enumerate(ds)]


def _document_dir(path: Path) -> bool:
    return path.is_dir() and not (
        (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
    )


def read_rows(
    path: str | Path,
    fmt: str = "auto",
    options: RowOptions | None = None,
    strict: bool = False,
) -> ReadResult:
    """Read any supported file into normalised rows; with strict=True a bad row is an error."""
    path = Path(path)
    options = options or RowOptions()
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    if _document_dir(path):
        return _read_document_dir(path, options)
    raw, errors = raw_rows(path)
    detected = fmt
    if fmt == "auto":
        found = [f for _, r in raw if (f := detect_format(r))]
        detected = max(sorted(set(found)), key=found.count) if found else "unknown"
    out = ReadResult(path=str(path), format=detected, errors=errors)
    for where, item in raw:
        row_fmt = fmt if fmt != "auto" else detect_format(item)
        try:
            if row_fmt is None:
                raise ValueError(_undetected(item))
            out.rows.append(to_row(item, row_fmt, where, options))
        except ValueError as err:
            out.errors.append(RowError(where, str(err)))
    out.errors.sort(key=lambda e: _order(e.where))
    if strict:
        out.raise_if_errors()
    if not out.rows:
        detail = f" ({len(out.errors)} malformed, first: {out.errors[0]})" if out.errors else ""
        raise DataError(f"{path}: no usable rows{detail}")
    return out


def _read_document_dir(path: Path, options: RowOptions) -> ReadResult:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in DOC_SUFFIXES)
    if not files:
        raise DataError(
            f"{path} is a directory with no .txt, .md or .html documents and is not a saved "
            "`datasets` dataset"
        )
    from tuneloop.data.documents import document_rows

    rows, problems = document_rows(files)
    out = ReadResult(path=str(path), format="text", rows=rows)
    out.errors = [RowError(str(p), problem) for p, problem in problems]
    if not rows:
        raise DataError(f"{path}: no usable documents")
    return out


def read_conversations(
    path: str | Path,
    fmt: str = "auto",
    system_prompt: str | None = None,
    strict: bool = True,
    options: RowOptions | None = None,
) -> LoadedData:
    """Read a file of SFT rows (chat, prompt/response, classification) as conversations."""
    base = options or RowOptions()
    if system_prompt is not None:
        base = dataclasses.replace(base, system_prompt=system_prompt)
    result = read_rows(path, fmt, base, strict=strict)
    other = sorted({r["kind"] for r in result.rows} - {"sft"})
    if other:
        raise DataError(
            f"{path}: holds {', '.join(other)} rows; supervised fine-tuning and evaluation "
            "need chat, prompt/response or classification rows"
        )
    return LoadedData(
        path=result.path,
        format=result.format,
        conversations=[r["messages"] for r in result.rows],
        errors=result.errors,
        labels=[r.get("label") for r in result.rows],
    )


def with_system_prompt(conversations: list[Conversation], prompt: str) -> list[Conversation]:
    """Conversations with `prompt` as system message wherever they have none."""
    return [
        c if c[0]["role"] == "system" else [{"role": "system", "content": prompt}, *c]
        for c in conversations
    ]


def _order(where: str) -> int:
    try:
        return int(where.split()[-1])
    except ValueError:
        return 0
