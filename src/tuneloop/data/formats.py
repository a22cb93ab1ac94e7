"""Read chat and prompt/response files into conversations, reporting bad rows by index.

A conversation is a list of `{"role": ..., "content": ...}` messages: an optional system
message, then user/assistant turns alternating, ending with an assistant answer. Every
reader keeps the good rows and names each bad one (`line 7: ...`); callers decide whether
bad rows are fatal (`strict=True`, the default for training) or skipped and counted.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import DataError

FORMATS = ("messages", "prompt_response", "alpaca", "sharegpt")
ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}
_PROMPT_KEYS = ("prompt", "question", "input", "query")
_ANSWER_KEYS = ("response", "completion", "answer", "output")

Conversation = list[dict[str, str]]


@dataclass
class RowError:
    """One malformed row: where it is (`line 7` or `row 3`) and what is wrong."""

    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


@dataclass
class LoadedData:
    """Conversations read from a file, the detected format, and the rows that failed."""

    path: str
    format: str
    conversations: list[Conversation] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # where each conversation came from

    def raise_if_errors(self, limit: int = 3) -> None:
        if not self.errors:
            return
        shown = "; ".join(str(e) for e in self.errors[:limit])
        more = f" (and {len(self.errors) - limit} more)" if len(self.errors) > limit else ""
        raise DataError(f"{self.path}: {len(self.errors)} malformed row(s): {shown}{more}")


def _raw_rows(path: Path) -> tuple[list[tuple[str, Any]], list[RowError]]:
    """Rows as (where, parsed object) plus parse errors, by file type."""
    rows: list[tuple[str, Any]] = []
    errors: list[RowError] = []
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json data file must hold a list of rows")
        rows = [(f"row {i}", item) for i, item in enumerate(data)]
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for i, item in enumerate(reader, start=2):
            if None in item:
                errors.append(RowError(f"line {i}", "more fields than the header"))
                continue
            rows.append((f"line {i}", dict(item)))
    else:  # .jsonl and anything else: one JSON object per line
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {i}", json.loads(line)))
            except json.JSONDecodeError as err:
                errors.append(
                    RowError(f"line {i}", f"invalid JSON ({err.msg} at column {err.colno})")
                )
    return rows, errors


def detect_format(row: Any) -> str | None:
    """The format a row is in, judged by its keys, or None."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and ("output" in row or "response" in row):
        return "alpaca"
    if any(k in row for k in _PROMPT_KEYS) and any(k in row for k in _ANSWER_KEYS):
        return "prompt_response"
    return None


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


def _pick(row: dict[str, Any], keys: tuple[str, ...], what: str) -> str:
    for key in keys:
        if key in row:
            return _text(row[key], f"'{key}'")
    raise ValueError(f"no {what} field (expected one of {', '.join(keys)})")


def to_conversation(row: Any, fmt: str) -> Conversation:
    """Convert one row in format `fmt`; raises ValueError naming the problem."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if fmt == "messages":
        messages = row.get("messages")
        if not isinstance(messages, list):
            raise ValueError("'messages' must be a list")
        conv = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise ValueError(f"message {i} must be an object with role and content")
            role = msg.get("role")
            if role not in ROLES:
                raise ValueError(f"message {i}: role {role!r} is not one of {', '.join(ROLES)}")
            conv.append(
                {"role": role, "content": _text(msg.get("content"), f"message {i} content")}
            )
    elif fmt == "sharegpt":
        turns = row.get("conversations")
        if not isinstance(turns, list):
            raise ValueError("'conversations' must be a list")
        conv = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise ValueError(f"message {i} must be an object with from and value")
            role = _SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            if role is None:
                raise ValueError(f"message {i}: unknown speaker {turn.get('from')!r}")
            conv.append({"role": role, "content": _text(turn.get("value"), f"message {i} value")})
    elif fmt == "alpaca":
        instruction = _text(row.get("instruction"), "'instruction'")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise ValueError("'input' must be a string")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        answer = _pick(row, ("output", "response"), "answer")
        conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        if isinstance(row.get("system"), str) and row["system"].strip():
            conv.insert(0, {"role": "system", "content": row["system"]})
    elif fmt == "prompt_response":
        prompt = _pick(row, _PROMPT_KEYS, "prompt")
        answer = _pick(row, _ANSWER_KEYS, "answer")
        conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        if isinstance(row.get("system"), str) and row["system"].strip():
            conv.insert(0, {"role": "system", "content": row["system"]})
    else:
        raise ValueError(f"unknown format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    check_conversation(conv)
    return conv


def check_conversation(conv: Conversation) -> None:
    """System first (optional), then user/assistant alternating, ending with the assistant."""
    body = conv[1:] if conv and conv[0]["role"] == "system" else conv
    if not body:
        raise ValueError("no user or assistant messages")
    for i, msg in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            index = i + (len(conv) - len(body))
            raise ValueError(f"message {index}: expected role {expected!r}, got {msg['role']!r}")
    if body[-1]["role"] != "assistant":
        raise ValueError("missing assistant answer at the end")


def read_conversations(
    path: str | Path,
    fmt: str = "auto",
    system_prompt: str | None = None,
    strict: bool = True,
) -> LoadedData:
    """Read a data file into conversations; with strict=True any bad row is an error."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory; expected a .jsonl, .json or .csv file")
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    rows, errors = _raw_rows(path)
    detected = fmt
    if fmt == "auto":
        found = [f for _, row in rows if (f := detect_format(row))]
        detected = max(set(found), key=found.count) if found else "unknown"
    out = LoadedData(path=str(path), format=detected, errors=errors)
    for where, row in rows:
        row_fmt = fmt if fmt != "auto" else detect_format(row)
        try:
            if row_fmt is None:
                raise ValueError(_undetected(row))
            conv = to_conversation(row, row_fmt)
        except ValueError as err:
            out.errors.append(RowError(where, str(err)))
            continue
        if system_prompt and conv[0]["role"] != "system":
            conv.insert(0, {"role": "system", "content": system_prompt})
        out.conversations.append(conv)
        out.sources.append(where)
    out.errors.sort(key=lambda e: _order(e.where))
    if strict:
        out.raise_if_errors()
    if not out.conversations:
        raise DataError(f"{path}: no usable rows")
    return out


def _undetected(row: Any) -> str:
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    keys = ", ".join(sorted(map(str, row))) or "none"
    return (
        f"cannot tell the row format from its keys ({keys}); expected messages, conversations, "
        "instruction/output or prompt/response"
    )


def _order(where: str) -> int:
    try:
        return int(where.split()[-1])
    except ValueError:
        return 0


def split_prompt(conv: Conversation) -> tuple[Conversation, str]:
    """(messages before the final answer, the final assistant answer)."""
    return conv[:-1], conv[-1]["content"]
