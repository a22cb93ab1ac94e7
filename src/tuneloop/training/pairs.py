"""Preference rows as token tensors for the pairwise methods (reward models, DPO family) and KTO.

A pair is two examples that share one prompt: prompt + chosen answer and prompt + rejected
answer, each rendered with the model's chat template. Labels are IGNORE on the prompt and
the answer's tokens elsewhere (with what the template writes after the answer, the
end-of-turn token), as SFT's `last_only` masking does, so a DPO-tuned model learns to stop.

Why the prompt is tokenised on its own and the answer appended, instead of tokenising the
whole text once as SFT does: a BPE merge across the prompt/answer boundary (an answer that
starts with whitespace after a template ending in `\\n`) would give chosen and rejected
different prompt tokens, and the pairwise losses assume one shared prompt. Where no token
straddles the boundary (ChatML and the usual templates) the ids are exactly SFT's.

Pairs are never truncated: a cut answer compares the first n tokens of two answers, and a
pair cut back to its prompt would train as loss 0 while counting as data. A pair that does
not fit `max_length`, has identical sides, or has no answer tokens is dropped and counted
by reason, so the run record says what the data lost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tuneloop.data.records import Row
from tuneloop.errors import DataError, TrainingError
from tuneloop.training.objectives import collate
from tuneloop.training.tokenize import IGNORE, Example, assistant_spans, token_labels

Message = dict[str, str]

TOO_LONG = "longer than max_length"
IDENTICAL = "chosen and rejected are identical"
NO_ANSWER = "no answer tokens"


@dataclass
class PairExample:
    """One preference pair as two examples with the same prompt tokens.

    `ref_chosen`/`ref_rejected` are the reference model's summed answer log-probs; the
    trainer fills them in once before training when the reference is a separate copy of the
    model (full fine-tuning), so the reference never sits in memory during the run.
    """

    chosen: Example
    rejected: Example
    prompt_length: int
    ref_chosen: float | None = None
    ref_rejected: float | None = None

    @property
    def length(self) -> int:
        """The longer side: what a length-grouped batch pads each row to."""
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))

    @property
    def tokens(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


@dataclass
class UnpairedExample:
    """One KTO example: prompt + completion, and whether the completion is desirable.

    `prompt_length` lets the trainer pair one example's prompt with another's completion
    (the mismatched pairs KTO estimates its KL reference point from).
    """

    example: Example
    desirable: bool
    prompt_length: int
    ref_logp: float | None = None

    @property
    def length(self) -> int:
        return len(self.example.input_ids)

    @property
    def tokens(self) -> int:
        return len(self.example.input_ids)


@dataclass
class TokenizedPairs:
    """Pairs ready to batch, where each came from, and why the others were left out."""

    examples: list[PairExample]
    kept: list[int]  # index of the source row of each pair
    dropped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        tokens = sum(p.tokens for p in self.examples)
        return {
            "pairs": len(self.examples),
            "dropped": dict(self.dropped),
            "tokens": tokens,
            "target_tokens": sum(
                p.chosen.num_targets + p.rejected.num_targets for p in self.examples
            ),
            "mean_pair_tokens": tokens / len(self.examples) if self.examples else 0.0,
        }


@dataclass
class TokenizedUnpaired:
    """KTO examples ready to batch, where each came from, and why the others were left out."""

    examples: list[UnpairedExample]
    kept: list[int]  # index of the source row of each example
    dropped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        desirable = sum(e.desirable for e in self.examples)
        return {
            "examples": len(self.examples),
            "desirable": desirable,
            "undesirable": len(self.examples) - desirable,
            "dropped": dict(self.dropped),
            "tokens": sum(e.tokens for e in self.examples),
            "target_tokens": sum(e.example.num_targets for e in self.examples),
        }


def _where(index: int, row: Any) -> str:
    source = row.get("source") if isinstance(row, dict) else None
    return f"row {index}" + (f" ({source})" if source else "")


def _check_messages(value: Any, name: str, where: str, assistant_only: bool) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: '{name}' must be a non-empty list of messages")
    for j, msg in enumerate(value):
        if not (
            isinstance(msg, dict)
            and isinstance(msg.get("role"), str)
            and isinstance(msg.get("content"), str)
        ):
            raise DataError(f"{where}: '{name}' message {j} needs a string role and content")
        if assistant_only and msg["role"] != "assistant":
            raise DataError(
                f"{where}: '{name}' message {j} is {msg['role']!r}; answers hold assistant "
                "messages only"
            )
    return value


def _fields(row: Any, index: int, kind: str, answers: tuple[str, ...]) -> list[list[Message]]:
    """The prompt and answer message lists of a row, or DataError naming the row."""
    where = _where(index, row)
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a row dict, got {type(row).__name__}")
    if row.get("kind") != kind:
        hint = (
            "; for KTO on paired data convert with pair_rows_to_unpaired"
            if kind == "kto" and row.get("kind") == "preference"
            else ""
        )
        raise DataError(f"{where}: a {row.get('kind')!r} row where {kind!r} rows are needed{hint}")
    for name in ("prompt", *answers):
        if name not in row:
            raise DataError(f"{where}: a {kind!r} row without '{name}'")
    prompt = _check_messages(row["prompt"], "prompt", where, assistant_only=False)
    return [prompt, *(_check_messages(row[a], a, where, True) for a in answers)]


def _with_system(prompt: list[Message], system_prompt: str | None) -> list[Message]:
    if system_prompt and prompt[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *prompt]
    return prompt


def _answer_example(
    tokenizer: Any, prompt: list[Message], answer: list[Message], where: str
) -> tuple[str, Example]:
    """(rendered prompt text, answer tokens with labels) for prompt + answer.

    Only the answer's assistant turns carry labels; for a multi-message answer the template
    text between its turns does not, as in SFT.
    """
    try:
        text, spans = assistant_spans(tokenizer, [*prompt, *answer])
    except TrainingError as err:
        raise TrainingError(f"{where}: {err}") from None
    spans = spans[-len(answer) :]
    cut = spans[0][0]  # where the generation prompt for the first answer message ends
    shifted = [(s - cut, e - cut) for s, e in spans]
    return text[:cut], token_labels(tokenizer, text[cut:], shifted)


def _prompt_ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _joined(prompt_ids: list[int], answer: Example) -> Example:
    return Example([*prompt_ids, *answer.input_ids], [IGNORE] * len(prompt_ids) + answer.labels)


def _has_targets(example: Example) -> bool:
    # position 0 is never predicted, so a target there does not count
    return any(x != IGNORE for x in example.labels[1:])


def _check_max_length(max_length: int) -> None:
    if max_length < 2:
        raise TrainingError(f"max_length must be at least 2 tokens, got {max_length}")


def tokenize_pairs(
    tokenizer: Any,
    rows: list[Row],
    max_length: int,
    system_prompt: str | None = None,
    progress: bool = True,
) -> TokenizedPairs:
    """Preference rows as pairs of examples; pairs that cannot train are dropped and counted.

    Args:
        rows: `preference` rows (`read_rows(..., fmt="preference")`). The prompt may hold
            several turns (HH transcripts); only the final answer is trained.
        max_length: a pair with either side longer is dropped, never truncated.
        system_prompt: prepended as a system message to prompts that have none.
    """
    from tuneloop.progress import Progress

    _check_max_length(max_length)
    out = TokenizedPairs(examples=[], kept=[])
    bar = Progress(len(rows), "tokenizing pairs", "pair") if progress else None
    for i, row in enumerate(rows):
        prompt, chosen, rejected = _fields(row, i, "preference", ("chosen", "rejected"))
        where = _where(i, row)
        prompt = _with_system(prompt, system_prompt)
        prompt_text, chosen_answer = _answer_example(tokenizer, prompt, chosen, where)
        rejected_text, rejected_answer = _answer_example(tokenizer, prompt, rejected, where)
        if rejected_text != prompt_text:
            # the template rendered the same prompt differently depending on the answer
            raise TrainingError(
                f"{where}: the chat template renders the prompt differently before the "
                "chosen and the rejected answer, so the pair has no shared prompt"
            )
        ids = _prompt_ids(tokenizer, prompt_text)
        pair = PairExample(_joined(ids, chosen_answer), _joined(ids, rejected_answer), len(ids))
        if bar:
            bar.update(1)
        if not (_has_targets(pair.chosen) and _has_targets(pair.rejected)):
            out.dropped[NO_ANSWER] += 1
        elif pair.chosen.input_ids == pair.rejected.input_ids:
            out.dropped[IDENTICAL] += 1
        elif pair.length > max_length:
            out.dropped[TOO_LONG] += 1
        else:
            out.examples.append(pair)
            out.kept.append(i)
    if bar:
        bar.close()
    return out


def tokenize_unpaired(
    tokenizer: Any,
    rows: list[Row],
    max_length: int,
    system_prompt: str | None = None,
    progress: bool = True,
) -> TokenizedUnpaired:
    """`kto` rows as examples with their desirable flag; the same drop rule as pairs.

    Paired data must first go through `pair_rows_to_unpaired`, so that treating each side
    of a pair as an independent judgement is an explicit choice.
    """
    from tuneloop.progress import Progress

    _check_max_length(max_length)
    out = TokenizedUnpaired(examples=[], kept=[])
    bar = Progress(len(rows), "tokenizing", "row") if progress else None
    for i, row in enumerate(rows):
        prompt, completion = _fields(row, i, "kto", ("completion",))
        where = _where(i, row)
        desirable = row.get("desirable")
        if not isinstance(desirable, bool):
            raise DataError(f"{where}: 'desirable' must be true or false, got {desirable!r}")
        prompt = _with_system(prompt, system_prompt)
        prompt_text, answer = _answer_example(tokenizer, prompt, completion, where)
        ids = _prompt_ids(tokenizer, prompt_text)
        example = _joined(ids, answer)
        if bar:
            bar.update(1)
        if not _has_targets(example):
            out.dropped[NO_ANSWER] += 1
        elif len(example.input_ids) > max_length:
            out.dropped[TOO_LONG] += 1
        else:
            out.examples.append(UnpairedExample(example, desirable, len(ids)))
            out.kept.append(i)
    if bar:
        bar.close()
    return out


def _refs(values: list[float | None]) -> Any:
    import torch

    if any(v is None for v in values):
        return None
    return torch.tensor(values, dtype=torch.float32)


def collate_pairs(examples: list[PairExample], pad_id: int) -> dict[str, Any]:
    """One right-padded batch of 2B rows: the B chosen rows, then the B rejected rows.

    One forward pass over both sides; row k and row B + k are a pair. `ref_chosen` and
    `ref_rejected` (shape B) are included only when every pair has them.
    """
    if not examples:
        raise TrainingError("collate_pairs needs at least one pair")
    batch = collate([p.chosen for p in examples] + [p.rejected for p in examples], pad_id)
    chosen = _refs([p.ref_chosen for p in examples])
    rejected = _refs([p.ref_rejected for p in examples])
    if chosen is not None and rejected is not None:
        batch["ref_chosen"], batch["ref_rejected"] = chosen, rejected
    return batch


def collate_unpaired(examples: list[UnpairedExample], pad_id: int) -> dict[str, Any]:
    """One right-padded batch with a `desirable` bool tensor, and `ref_logp` when all have it."""
    import torch

    if not examples:
        raise TrainingError("collate_unpaired needs at least one example")
    batch = collate([e.example for e in examples], pad_id)
    batch["desirable"] = torch.tensor([e.desirable for e in examples], dtype=torch.bool)
    ref = _refs([e.ref_logp for e in examples])
    if ref is not None:
        batch["ref_logp"] = ref
    return batch


def pair_rows_to_unpaired(rows: list[Row]) -> list[Row]:
    """Paired rows as KTO rows: each chosen answer desirable, each rejected undesirable.

    Row i becomes rows 2i (chosen) and 2i + 1 (rejected), sources marked `(chosen)` and
    `(rejected)`. This throws away which answers were compared, so KTO runs on paired data
    only through this call, never by reading a pair as two rows implicitly.
    """
    out: list[Row] = []
    for i, row in enumerate(rows):
        prompt, chosen, rejected = _fields(row, i, "preference", ("chosen", "rejected"))
        source = row.get("source", f"row {i}")
        for answer, desirable, side in ((chosen, True, "chosen"), (rejected, False, "rejected")):
            out.append(
                {
                    "kind": "kto",
                    "prompt": [dict(m) for m in prompt],
                    "completion": [dict(m) for m in answer],
                    "desirable": desirable,
                    "source": f"{source} ({side})",
                }
            )
    return out
