"""Read data files of any supported type into normalised rows, naming every bad row.

Files: JSONL (and any unknown extension, one JSON object per line), JSON (a list, or
`{"data": [...]}`), CSV, Parquet, a saved `datasets` directory, and raw documents (.txt,
.md, .html, or a directory of them). Every reader keeps the good rows and reports each bad
one as `line 7: ...` or `row 3: ...`; undecodable bytes never raise past the reader.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.data.documents import DOCUMENT_SUFFIXES as DOC_SUFFIXES
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

_BATCH_ROWS = 10_000  # Parquet rows decoded per Arrow batch
_UNTERMINATED = (
    "unterminated quote: the quoted field that opens on this line is never closed, so the "
    "rest of the file was read into it"
)


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
    errors: list[RowError] = []
    return list(iter_raw_rows(path, errors)), errors


def iter_raw_rows(path: Path, errors: list[RowError]) -> Iterator[tuple[str, Any]]:
    """Parsed rows as (where, object), one at a time; rows that cannot be parsed go to `errors`.

    A generator, so that a reader holds one line (JSONL, CSV) or one Arrow batch (Parquet) of
    raw data at a time rather than the whole file and every parsed object at once: holding
    them all made reading a 200k-row file take gigabytes.
    """
    suffix = path.suffix.lower()
    if path.is_dir():
        yield from _datasets_dir_rows(path)
    elif suffix == ".parquet":
        yield from _parquet_rows(path)
    elif suffix in DOC_SUFFIXES:
        from tuneloop.data.documents import read_document

        yield path.name, {"text": read_document(path)}
    elif suffix == ".json":
        yield from _json_rows(path)
    elif suffix == ".csv":
        yield from _csv_rows(path, errors)
    else:
        yield from _jsonl_rows(path, errors)


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    # one JSON document: it has to be parsed whole
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    del text
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json data file must hold a list of rows")
    for i, item in enumerate(data):
        yield f"row {i}", item


def _open_text(path: Path) -> Any:
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None


def _csv_rows(path: Path, errors: list[RowError]) -> Iterator[tuple[str, Any]]:
    """CSV rows by their (last) line; an unterminated quote is named where it opens."""
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        start = last_start = 0  # the line the current (and the last) record begins on
        held: tuple[str, Any] | None = None  # the last record, until we know it is whole
        try:
            reader.fieldnames  # noqa: B018  (reads the header, so line_num counts past it)
            start = reader.line_num + 1
            for item in reader:
                if held is not None:
                    yield held
                    held = None
                if None in item:
                    errors.append(RowError(f"line {start}", "more fields than the header"))
                else:
                    held = (f"line {reader.line_num}", dict(item))
                last_start, start = start, reader.line_num + 1
        except UnicodeDecodeError:
            _read_text(path)  # raises the error with the byte offset in the whole file
            raise
        except csv.Error as err:
            opened = _unterminated_quote_line(path, start) if start else None
            if opened is not None:
                errors.append(RowError(f"line {opened}", _UNTERMINATED))
            else:
                errors.append(RowError(f"line {reader.line_num}", f"invalid CSV ({err})"))
            return
    if held is not None and reader.line_num > last_start:
        # the csv module reads an unclosed quoted field to the end of the file and returns
        # it as one record; a record that spans lines up to the end may be that
        opened = _unterminated_quote_line(path, last_start)
        if opened is not None:
            errors.append(RowError(f"line {opened}", _UNTERMINATED))
            return
    if held is not None:
        yield held


def _unterminated_quote_line(path: Path, first_line: int) -> int | None:
    """The line where a quoted field opens and never closes, scanning from `first_line`.

    Follows the csv module's default dialect: a quote opens a field only at its start, `""`
    inside a quoted field is a literal quote.
    """
    with _open_text(path) as fh:
        text = "".join(itertools.islice(fh, first_line - 1, None))
    line, in_quote, at_start, opened = first_line, False, True, None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if in_quote:
            if c == '"':
                if text.startswith('""', i):
                    i += 1
                else:
                    in_quote = False
            elif c == "\n":
                line += 1
        elif c == '"' and at_start:
            in_quote, opened, at_start = True, line, False
        elif c == "\n":
            line, at_start = line + 1, True
        else:
            at_start = c in ",\r"
        i += 1
    return opened if in_quote else None


def _jsonl_rows(path: Path, errors: list[RowError]) -> Iterator[tuple[str, Any]]:
    # .jsonl and anything else: one JSON object per line, decoded line by line so one
    # undecodable line does not lose the rest of the file
    try:
        fh = path.open("rb")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    with fh:
        for i, raw_line in enumerate(fh, start=1):
            if i == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
                raw_line = raw_line[3:]
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as err:
                problem = f"not UTF-8 ({err.reason} at byte {err.start})"
                errors.append(RowError(f"line {i}", problem))
                continue
            if not line.strip():
                continue
            try:
                yield f"line {i}", json.loads(line)
            except (json.JSONDecodeError, RecursionError) as err:
                if isinstance(err, json.JSONDecodeError):
                    # json's own message may end in "at" ("Unterminated string starting at")
                    msg = f"{err.msg.removesuffix(' at')} at column {err.colno}"
                else:
                    msg = "too deeply nested"
                errors.append(RowError(f"line {i}", f"invalid JSON ({msg})"))


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def unreadable(err: Exception) -> DataError:
        return DataError(f"{path}: not a readable Parquet file ({err})")

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS)
    except (pa.ArrowException, OSError) as err:
        raise unreadable(err) from None
    i = 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as err:
            raise unreadable(err) from None
        if batch is None:
            return
        for row in batch.to_pylist():
            yield f"row {i}", row
            i += 1


def _datasets_dir_rows(path: Path) -> Iterator[tuple[str, Any]]:
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
    for i, row in enumerate(ds):
        yield f"row {i}", row


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
    errors: list[RowError] = []
    out = ReadResult(path=str(path), format=fmt, errors=errors)
    found: Counter[str] = Counter()
    for where, item in iter_raw_rows(path, errors):
        row_fmt = fmt if fmt != "auto" else detect_format(item)
        if row_fmt is not None and fmt == "auto":
            found[row_fmt] += 1
        try:
            if row_fmt is None:
                raise ValueError(_undetected(item))
            out.rows.append(to_row(item, row_fmt, where, options))
        except ValueError as err:
            out.errors.append(RowError(where, str(err)))
    if fmt == "auto":
        # the most common format; ties go to the first name in sorted order
        out.format = max(sorted(found), key=found.__getitem__) if found else "unknown"
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
            f"{path} is a directory with no .txt, .md, .html or .pdf documents and is not a saved "
            "`datasets` dataset"
        )
    from tuneloop.data.documents import document_rows

    rows, problems = document_rows(files)
    out = ReadResult(path=str(path), format="text", rows=rows)
    out.errors = [RowError(str(p), problem) for p, problem in problems]
    if not rows:
        raise DataError(f"{path}: no usable documents")
    return out


_NO_ANSWER = "no answer field (response, completion, answer or output)"


def read_conversations(
    path: str | Path,
    fmt: str = "auto",
    system_prompt: str | None = None,
    strict: bool = True,
    options: RowOptions | None = None,
) -> LoadedData:
    """Read a file of SFT rows (chat, prompt/response, classification) as conversations.

    Paired preference rows are read as their chosen conversation (prompt + chosen answer):
    supervised tuning on the chosen answers is the usual first stage before a reward model
    or DPO, and evaluating on pairs scores answers against the chosen one. Unpaired (KTO)
    rows are refused: half of them are answers marked undesirable."""
    base = options or RowOptions()
    if system_prompt is not None:
        base = dataclasses.replace(base, system_prompt=system_prompt)
    result = read_rows(path, fmt, base, strict=strict)
    if any(r["kind"] == "prompt" for r in result.rows) and any(
        r["kind"] != "prompt" for r in result.rows
    ):
        # a question without its answer among answered rows: a malformed row of this file,
        # named and skipped like any other (or, strict, the error)
        result.errors += [
            RowError(r["source"], f"{_NO_ANSWER}; only a prompt")
            for r in result.rows
            if r["kind"] == "prompt"
        ]
        result.errors.sort(key=lambda e: _order(e.where))
        result.rows = [r for r in result.rows if r["kind"] != "prompt"]
        if strict:
            result.raise_if_errors()
    other = sorted({r["kind"] for r in result.rows} - {"sft", "preference"})
    if other:
        first = next(r for r in result.rows if r["kind"] in other)
        hint = (
            " (prompt-only rows have no answer: they are for ppo, grpo, rloo, rlaif and "
            "compare --data)"
            if "prompt" in other
            else ""
        )
        raise DataError(
            f"{path}: holds {', '.join(other)} rows (first: {first['source']}); supervised "
            "fine-tuning and evaluation need chat, prompt/response, classification or paired "
            f"preference rows{hint}"
        )
    return LoadedData(
        path=result.path,
        format=result.format,
        conversations=[
            r["prompt"] + r["chosen"] if r["kind"] == "preference" else r["messages"]
            for r in result.rows
        ],
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
