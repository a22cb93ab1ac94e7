"""Row formats: detect what a raw row is and turn it into a normalised row.

Supported (detected per row from its keys, or fixed by the caller):

| format | keys | kind |
| --- | --- | --- |
| `messages` | `messages` (OpenAI chat fine-tuning) | sft |
| `sharegpt` | `conversations` with `from`/`value` | sft |
| `alpaca` | `instruction`, optional `input`, `output` | sft |
| `prompt_response` | prompt/question/input/query + response/completion/answer/output | sft |
| `classification` | text/sentence + label/category/intent (through a prompt template) | sft |
| `preference` | `chosen` + `rejected` (+ `prompt`; strings, chats, HH transcripts) | preference |
| `kto` | `prompt` + `completion` + boolean `label` | kto |
| `text` | `text` only (raw documents) | text |
| `tuneloop` | a row tuneloop wrote itself (has `kind`) | any |

Conversion errors are ValueErrors naming the message index; the file readers in
`readers.py` prefix them with the row's location (`line 7: ...`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneloop.data.records import KINDS, Row, sft_row

FORMATS = (
    "messages", "sharegpt", "alpaca", "prompt_response", "classification", "preference", "kto",
    "prompt", "text", "tuneloop",
)  # fmt: skip
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
_TEXT_KEYS = ("text", "sentence", "utterance", "content")
_LABEL_KEYS = ("label", "category", "intent", "class")
DEFAULT_CLASSIFICATION_TEMPLATE = (
    "Classify the following message. Answer with the label only.\n\nMessage: {text}"
)

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class RowOptions:
    """How raw rows become normalised rows (shared by every reader)."""

    system_prompt: str | None = None
    classification_template: str = DEFAULT_CLASSIFICATION_TEMPLATE
    text_field: str | None = None  # classification: which column holds the text
    label_field: str | None = None  # classification: which column holds the label

    @classmethod
    def from_prompt_format(cls, fmt: dict[str, Any]) -> RowOptions:
        """The options a run recorded as its `prompt_format`, to read new data as it read its own.

        Lives with the data layer (not in `train`) so that evaluation and serving, which
        must not import training, turn new rows into prompts exactly as the run did.
        """
        return cls(
            system_prompt=fmt.get("system_prompt"),
            classification_template=fmt.get("template") or DEFAULT_CLASSIFICATION_TEMPLATE,
            text_field=fmt.get("text_field"),
            label_field=fmt.get("label_field"),
        )


def detect_format(row: Any) -> str | None:
    """The format a row is in, judged by its keys, or None."""
    if not isinstance(row, dict):
        return None
    if "kind" in row and row["kind"] in KINDS:
        return "tuneloop"
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "completion" in row and isinstance(row.get("label"), bool):
        return "kto"
    if "instruction" in row and ("output" in row or "response" in row):
        return "alpaca"
    if any(k in row for k in _PROMPT_KEYS) and any(k in row for k in _ANSWER_KEYS):
        return "prompt_response"
    if "prompt" in row and not any(k in row for k in _ANSWER_KEYS) and "label" not in row:
        return "prompt"  # a question alone: for methods that sample their own answers
    if any(k in row for k in _TEXT_KEYS) and any(k in row for k in _LABEL_KEYS):
        return "classification"
    if isinstance(row.get("text"), str):
        return "text"
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
            content = _text(msg.get("content"), f"message {i} content")
            # the role literal, not the parsed string: one object for every message's role
            conv.append({"role": ROLES[ROLES.index(role)], "content": content})
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
        raise ValueError(f"format {fmt!r} does not give a conversation")
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


def to_row(raw: Any, fmt: str, source: str, options: RowOptions = RowOptions()) -> Row:
    """Convert one raw row in format `fmt` to a normalised row; ValueError says what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
    if fmt in ("messages", "sharegpt", "alpaca", "prompt_response"):
        # a chat row may carry its class (e.g. a run's held-out validation.jsonl): keep it,
        # so evaluation reports accuracy and confusions on it
        label = raw.get("label")
        label = label.strip() if isinstance(label, str) and label.strip() else None
        row = sft_row(to_conversation(raw, fmt), source, label=label)
    elif fmt == "classification":
        row = _classification_row(raw, source, options)
    elif fmt == "preference":
        from tuneloop.data.preference import to_preference_row

        row = to_preference_row(raw, source)
    elif fmt == "kto":
        from tuneloop.data.preference import to_kto_row

        row = to_kto_row(raw, source)
    elif fmt == "prompt":
        from tuneloop.data.preference import to_prompt_row

        row = to_prompt_row(raw, source)
    elif fmt == "text":
        row = {"kind": "text", "text": _text(raw.get("text"), "'text'"), "source": source}
    elif fmt == "tuneloop":
        row = _tuneloop_row(raw, source)
    else:
        raise ValueError(f"unknown format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    if options.system_prompt:
        _add_system(row, options.system_prompt)
    return row


def _add_system(row: Row, system_prompt: str) -> None:
    key = "messages" if row["kind"] == "sft" else "prompt"
    msgs = row.get(key)
    if msgs and msgs[0]["role"] != "system":
        row[key] = [{"role": "system", "content": system_prompt}, *msgs]


def _classification_row(raw: dict[str, Any], source: str, options: RowOptions) -> Row:
    text_keys = (options.text_field,) if options.text_field else _TEXT_KEYS
    label_keys = (options.label_field,) if options.label_field else _LABEL_KEYS
    text = _pick(raw, text_keys, "text")
    label_key = next((k for k in label_keys if k in raw), None)
    if label_key is None:
        raise ValueError(f"no label field (expected one of {', '.join(label_keys)})")
    label = raw[label_key]
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise ValueError(f"label must be a string or integer, got {type(label).__name__}")
    label = str(label).strip()
    if not label:
        raise ValueError("label is empty")
    try:
        prompt = options.classification_template.format(text=text)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"classification template is invalid ({err}); use {{text}}") from None
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": label}]
    return sft_row(messages, source, label=label)


def _tuneloop_row(raw: dict[str, Any], source: str) -> Row:
    """A row tuneloop wrote itself (e.g. curated Parquet): re-check it, keep its source."""
    kind = raw["kind"]
    row: Row = {k: v for k, v in raw.items() if v is not None}
    row.setdefault("source", source)
    if kind == "sft":
        row["messages"] = to_conversation({"messages": raw.get("messages")}, "messages")
    elif kind == "text":
        row["text"] = _text(raw.get("text"), "'text'")
    else:
        for key in ("prompt", "chosen", "rejected", "completion"):
            if raw.get(key) is not None:
                row[key] = [dict(m) for m in raw[key]]
    return row


def _undetected(row: Any) -> str:
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    keys = ", ".join(sorted(map(str, row))[:8]) or "none"
    return (
        f"cannot tell the row format from its keys ({keys}); expected messages, conversations, "
        "instruction/output or prompt/response"
    )


def split_prompt(conv: Conversation) -> tuple[Conversation, str]:
    """(messages before the final answer, the final assistant answer)."""
    return conv[:-1], conv[-1]["content"]
