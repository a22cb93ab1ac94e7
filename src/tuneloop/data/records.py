"""The normalised row every curation step works on, whatever file format it came from.

A row is a plain dict with a `kind` and the fields of that kind:

| kind | fields |
| --- | --- |
| `sft` | `messages` (system?, user, assistant, ... ending with assistant), optional `label` |
| `preference` | `prompt` (messages), `chosen` and `rejected` (assistant messages) |
| `kto` | `prompt` (messages), `completion` (assistant messages), `desirable` (bool) |
| `prompt` | `prompt` (messages ending with a user message), no answer: for sampling methods |
| `text` | `text` (a raw document for continued pretraining) |

Every row also has `source` (where it came from, e.g. `line 7`) so any drop or change can be
traced back to the input file. Messages are `{"role": ..., "content": ...}` dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Row = dict[str, Any]
KINDS = ("sft", "preference", "kto", "prompt", "text")
MESSAGE_FIELDS = ("messages", "prompt", "chosen", "rejected", "completion")


def sft_row(messages: list[dict[str, str]], source: str, label: str | None = None) -> Row:
    row: Row = {"kind": "sft", "messages": messages, "source": source}
    if label is not None:
        row["label"] = label
    return row


def row_texts(row: Row) -> Iterator[tuple[str, str]]:
    """Every text in a row as (path, text): `messages.2`, `chosen.0`, `text`."""
    for name in MESSAGE_FIELDS:
        for i, msg in enumerate(row.get(name) or []):
            yield f"{name}.{i}", msg["content"]
    if isinstance(row.get("text"), str):
        yield "text", row["text"]


def map_texts(row: Row, fn: Callable[[str], str]) -> tuple[Row, bool]:
    """Apply `fn` to every text in a row; returns the new row and whether anything changed.

    An unchanged row comes back as itself, not a copy: a step that keeps it then holds no
    second copy of every row (at 2M rows, gigabytes).
    """
    changed = False
    out = dict(row)
    for name in MESSAGE_FIELDS:
        if row.get(name):
            new_msgs = []
            for msg in row[name]:
                new = fn(msg["content"])
                changed |= new != msg["content"]
                new_msgs.append({**msg, "content": new})
            out[name] = new_msgs
    if isinstance(row.get("text"), str):
        new_text = fn(row["text"])
        changed |= new_text != row["text"]
        out["text"] = new_text
    return (out, True) if changed else (row, False)


def prompt_of(row: Row) -> list[dict[str, str]]:
    """The messages a model sees before answering (the whole document for `text` rows)."""
    if row["kind"] == "sft":
        return row["messages"][:-1]
    if row["kind"] == "text":
        return [{"role": "user", "content": row["text"]}]
    return row["prompt"]


def answer_of(row: Row) -> str:
    """The text the model is trained to produce (chosen answer for preference rows)."""
    kind = row["kind"]
    if kind == "sft":
        return row["messages"][-1]["content"]
    if kind == "preference":
        return row["chosen"][-1]["content"]
    if kind == "kto":
        return row["completion"][-1]["content"]
    if kind == "prompt":
        return ""  # a prompt-only row has no answer
    return row["text"]


def row_key_text(row: Row) -> str:
    """All text of a row joined, for hashing and near-duplicate detection."""
    return "\n".join(text for _, text in row_texts(row))
