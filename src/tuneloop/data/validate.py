"""The `validate` step: structure, and what the tokenizer and max length will do to a row.

Readers already reject malformed rows; this step re-checks structure (rows may come from
code) and, with the target model's tokenizer and chat template, finds rows that would be
truncated at `max_length` and rows whose answer would be cut off entirely — those would
train as loss 0 (fully masked), so they are dropped.
"""

from __future__ import annotations

from typing import Any

from tuneloop.data.formats import check_conversation
from tuneloop.data.records import Row, answer_of, prompt_of
from tuneloop.data.steps import StepLog, step


def _ids(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt
    )
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def token_lengths(tokenizer: Any, row: Row) -> tuple[int, int]:
    """(prompt tokens, total tokens) of a row under the tokenizer's chat template."""
    if row["kind"] == "text":
        n = len(tokenizer(row["text"], add_special_tokens=False)["input_ids"])
        return 0, n
    prompt = prompt_of(row)
    prompt_len = len(_ids(tokenizer, prompt, True)) if prompt else 0
    full = [*prompt, {"role": "assistant", "content": answer_of(row)}]
    return prompt_len, len(_ids(tokenizer, full, False))


def _structure_problem(row: Row) -> str | None:
    kind = row.get("kind")
    try:
        if kind == "sft":
            check_conversation(row["messages"])
        elif kind in ("preference", "kto", "prompt"):
            if not row.get("prompt") or row["prompt"][-1]["role"] != "user":
                return "prompt must end with a user message"
            answers = {"preference": ("chosen", "rejected"), "kto": ("completion",)}
            for key in answers.get(kind, ()):
                msgs = row.get(key) or []
                if not msgs or msgs[-1]["role"] != "assistant":
                    return f"{key} must end with an assistant message"
        elif kind == "text":
            if not isinstance(row.get("text"), str) or not row["text"].strip():
                return "empty text"
        else:
            return f"unknown row kind {kind!r}"
    except (ValueError, KeyError, TypeError) as err:
        return str(err)
    for key in ("messages", "prompt", "chosen", "rejected", "completion"):
        for i, msg in enumerate(row.get(key) or []):
            if not isinstance(msg.get("content"), str) or not msg["content"].strip():
                return f"{key} message {i} is empty"
    return None


@step("validate")
def validate(
    rows: list[Row],
    log: StepLog,
    model: str | None = "smollm2-135m-instruct",
    max_length: int = 512,
    drop_truncated: bool = False,
) -> list[Row]:
    """Drop structurally broken rows and rows whose answer would be fully cut off.

    model: tokenizer to measure with (None skips the token checks).
    drop_truncated: also drop rows that fit only partly (default: keep and count them).
    """
    tokenizer = None
    if model:
        from tuneloop.models import load_tokenizer, resolve

        tokenizer = load_tokenizer(resolve(model).base)
    kept: list[Row] = []
    prompt_tokens: list[int] = []
    total_tokens: list[int] = []
    truncated = 0
    for row in rows:
        problem = _structure_problem(row)
        if problem:
            log.drop(row, problem)
            continue
        if tokenizer is not None:
            p_len, t_len = token_lengths(tokenizer, row)
            prompt_tokens.append(p_len)
            total_tokens.append(t_len)
            if row["kind"] == "prompt" and p_len >= max_length:
                log.drop(row, f"prompt leaves no room to answer at max_length {max_length}")
                continue
            if row["kind"] not in ("text", "prompt") and p_len >= max_length:
                log.drop(row, f"answer cut off entirely at max_length {max_length}")
                continue
            if t_len > max_length and row["kind"] not in ("text", "prompt"):
                truncated += 1
                if drop_truncated:
                    log.drop(row, f"longer than max_length {max_length}")
                    continue
                log.details.setdefault("truncated_sources", []).append(row["source"])
        kept.append(row)
    log.details.update(
        {
            "tokenizer": model,
            "max_length": max_length,
            "prompt_tokens": prompt_tokens,
            "total_tokens": total_tokens,
            "truncated": truncated,
        }
    )
    if "truncated_sources" in log.details:
        log.details["truncated_sources"] = log.details["truncated_sources"][:20]
    return kept
