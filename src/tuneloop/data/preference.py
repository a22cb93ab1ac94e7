"""Read preference data (paired and unpaired) into rows, and flag pairs that teach nothing.

Paired rows come in two shapes: an explicit `prompt` with `chosen`/`rejected` answers, or
Anthropic HH-style transcripts (`"\\n\\nHuman: ...\\n\\nAssistant: ..."`) where both sides
repeat the whole conversation and the prompt is whatever they share. Unpaired (KTO) rows are
`prompt`, `completion` and a boolean `label`.

Like the chat readers in `formats.py`, every converter raises ValueError with a message
naming the field or turn at fault, so a file reader can report `line N: ...` and go on.

HH transcripts, as found in the real harmless-base data, and what this module does with them:

- Only a `Human:` or `Assistant:` at the very start or right after a blank line (`\\n\\n`)
  starts a turn. The same words elsewhere (`Assistant: Human: Sure...`, where the model
  echoed a speaker tag, or `...end of sentence.  Human: ...` mid-paragraph) are kept as
  text of the current turn: they are what the annotated model said.
- Leading/trailing whitespace around the transcript and each turn is stripped; `\\r\\n` is
  read as `\\n`.
- Two turns in a row by the same speaker (8 of the 1,800 real pairs have `Assistant:` twice
  in a row, e.g. "here's the key:\\n\\nAssistant: O.k. ...") are merged into one message,
  joined by a blank line. Keeping them apart would break chat templates that require
  alternating roles, and a two-message answer would be half lost by code that trains on
  the final assistant message (`records.answer_of`).
- An empty final `Assistant:` turn is tolerated (an empty answer is a property of the pair,
  not a malformed file); `preference_checks` flags and by default drops it as
  "empty chosen"/"empty rejected". Any other empty turn is an error.
- Errors: no `Human:` turn, non-blank text before the first turn, a first turn that is not
  `Human:`, an empty turn other than the final answer. Turns are counted from 1, in the
  order their tags appear.
"""

from __future__ import annotations

import re
from typing import Any

from tuneloop.data.formats import ROLES
from tuneloop.data.records import Row
from tuneloop.data.steps import StepLog, step

Message = dict[str, str]

_SPEAKERS = {"Human": "user", "Assistant": "assistant"}
# A speaker tag starts a turn only at the start of the text or after a blank line.
_TURN = re.compile(r"(?:\A|(?<=\n\n))(Human|Assistant):")


def parse_hh_transcript(text: str) -> list[Message]:
    """Split an HH transcript into user/assistant messages; ValueError if malformed.

    The result alternates user, assistant, ... starting with the user. It may end with a
    user turn (the caller decides whether an answer is required) and its final assistant
    message may be empty; see the module docstring for which quirks are tolerated and why.
    """
    if not isinstance(text, str):
        raise ValueError(f"transcript must be a string, got {type(text).__name__}")
    text = text.replace("\r\n", "\n").strip()
    turns = list(_TURN.finditer(text))
    no_human = "no 'Human:' turn (a turn starts with 'Human:' after a blank line)"
    if not turns:
        raise ValueError(no_human)
    if turns[0].start() > 0:
        raise ValueError(f"text before the first turn: {_snippet(text[: turns[0].start()])}")
    if not any(m.group(1) == "Human" for m in turns):
        raise ValueError(no_human)
    if turns[0].group(1) != "Human":
        raise ValueError(f"turn 1 is '{turns[0].group(1)}:'; a transcript starts with 'Human:'")
    messages: list[Message] = []
    for i, match in enumerate(turns):
        end = turns[i + 1].start() if i + 1 < len(turns) else len(text)
        speaker = match.group(1)
        content = text[match.end() : end].strip()
        is_final_answer = i == len(turns) - 1 and speaker == "Assistant"
        if not content and not is_final_answer:
            raise ValueError(f"turn {i + 1} ('{speaker}:') is empty")
        if messages and messages[-1]["role"] == _SPEAKERS[speaker]:
            # A repeated tag inside one speaker's turn: still one turn (see module docstring).
            if content:
                messages[-1]["content"] += "\n\n" + content
            continue
        messages.append({"role": _SPEAKERS[speaker], "content": content})
    return messages


def _snippet(text: str, limit: int = 40) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _same(a: Message, b: Message) -> bool:
    return a["role"] == b["role"] and a["content"].strip() == b["content"].strip()


def split_preference(
    chosen: list[Message], rejected: list[Message]
) -> tuple[list[Message], list[Message], list[Message]]:
    """(prompt, chosen tail, rejected tail) of two conversations that share a prompt.

    The prompt is the longest run of identical leading messages, cut after its last user
    message; the tails are what follows, and must be assistant messages only (normally one
    each). Identical conversations split fine: the tails are then equal, which
    `preference_problems` flags, rather than being an error here.
    """
    shared = 0
    while (
        shared < len(chosen) and shared < len(rejected) and _same(chosen[shared], rejected[shared])
    ):
        shared += 1
    users = [i for i in range(shared) if chosen[i]["role"] == "user"]
    if not users:
        raise ValueError(
            f"chosen and rejected share no prompt: they differ at message {shared} and no "
            "user message comes before it"
        )
    cut = users[-1] + 1
    prompt, chosen_tail, rejected_tail = chosen[:cut], chosen[cut:], rejected[cut:]
    for name, tail in (("chosen", chosen_tail), ("rejected", rejected_tail)):
        if not tail:
            raise ValueError(f"{name} has no assistant answer after the shared prompt")
        for j, msg in enumerate(tail):
            if msg["role"] != "assistant":
                raise ValueError(
                    f"chosen and rejected differ before their last user message ({name} "
                    f"message {cut + j} is {msg['role']!r} after they first differ at "
                    f"message {shared}), so they do not share one prompt"
                )
    return prompt, chosen_tail, rejected_tail


def _messages(value: Any, field: str, default_role: str) -> list[Message]:
    """A string as one message of `default_role`, or a validated list of messages."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list):
        raise ValueError(
            f"'{field}' must be a string or a list of messages, got {type(value).__name__}"
        )
    if not value:
        raise ValueError(f"'{field}' has no messages")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise ValueError(f"'{field}' message {i} must be an object with role and content")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise ValueError(
                f"'{field}' message {i}: role {role!r} is not one of {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise ValueError(
                f"'{field}' message {i}: content must be a string, got {type(content).__name__}"
            )
        out.append({"role": role, "content": content})
    return out


def _check_prompt(prompt: list[Message]) -> None:
    for i, msg in enumerate(prompt):
        if not msg["content"].strip():
            raise ValueError(f"'prompt' message {i} is empty")
    if prompt[-1]["role"] != "user":
        raise ValueError(f"'prompt' must end with a user message, not {prompt[-1]['role']!r}")


def _with_system(prompt: list[Message], raw: dict[str, Any]) -> list[Message]:
    system = raw.get("system")
    if system is None:
        return prompt
    if not isinstance(system, str):
        raise ValueError(f"'system' must be a string, got {type(system).__name__}")
    if not system.strip():
        return prompt
    if prompt[0]["role"] == "system":
        raise ValueError("both a 'system' field and a system message in the prompt")
    return [{"role": "system", "content": system}, *prompt]


def _answer(value: Any, field: str, prompt: list[Message]) -> list[Message]:
    """Assistant messages of an answer given alone or as a conversation starting with prompt."""
    msgs = _messages(value, field, "assistant")
    body = prompt[1:] if prompt[0]["role"] == "system" else prompt
    for lead in (prompt, body):
        if len(msgs) > len(lead) and all(_same(a, b) for a, b in zip(msgs, lead, strict=False)):
            msgs = msgs[len(lead) :]
            break
    for j, msg in enumerate(msgs):
        if msg["role"] != "assistant":
            raise ValueError(
                f"'{field}' message {j} is {msg['role']!r}: expected assistant messages only, "
                "or a conversation that starts with the prompt"
            )
    return msgs


def _require(raw: Any, *fields: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
    for name in fields:
        if name not in raw:
            raise ValueError(f"no '{name}' field")
    return raw


def to_preference_row(raw: dict[str, Any], source: str) -> Row:
    """A `preference` row from a paired example; ValueError naming the problem.

    Accepts `{"prompt", "chosen", "rejected"}` where each is a string or a list of messages
    (answers may repeat the prompt as whole conversations; it is stripped), or
    `{"chosen", "rejected"}` alone as HH transcripts or message lists, split on their shared
    prompt. An optional `system` string becomes the first prompt message. Empty answers are
    kept so that `preference_checks` can count them.
    """
    raw = _require(raw, "chosen", "rejected")
    if "prompt" in raw:
        prompt = _messages(raw["prompt"], "prompt", "user")
        _check_prompt(prompt)
        prompt = _with_system(prompt, raw)
        chosen = _answer(raw["chosen"], "chosen", prompt)
        rejected = _answer(raw["rejected"], "rejected", prompt)
    else:
        sides = []
        for name in ("chosen", "rejected"):
            value = raw[name]
            if isinstance(value, str):
                try:
                    sides.append(parse_hh_transcript(value))
                except ValueError as err:
                    raise ValueError(f"'{name}': {err}") from None
            else:
                sides.append(_messages(value, name, "assistant"))
        prompt, chosen, rejected = split_preference(sides[0], sides[1])
        _check_prompt(prompt)
        prompt = _with_system(prompt, raw)
    return {
        "kind": "preference",
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "source": source,
    }


def to_kto_row(raw: dict[str, Any], source: str) -> Row:
    """A `kto` row from `{"prompt", "completion", "label"}`; ValueError naming the problem.

    `label` must be a JSON boolean or 0/1: strings such as "false" are refused, because
    reading them as truthy would silently flip the training signal.
    """
    raw = _require(raw, "prompt", "completion", "label")
    label = raw["label"]
    if not isinstance(label, bool):
        if type(label) is int and label in (0, 1):
            label = bool(label)
        else:
            raise ValueError(f"'label' must be true/false (or 1/0), got {label!r}")
    prompt = _messages(raw["prompt"], "prompt", "user")
    _check_prompt(prompt)
    prompt = _with_system(prompt, raw)
    completion = _answer(raw["completion"], "completion", prompt)
    if not completion or not any(m["content"].strip() for m in completion):
        raise ValueError("'completion' is empty")
    return {
        "kind": "kto",
        "prompt": prompt,
        "completion": completion,
        "desirable": label,
        "source": source,
    }


def _flat(messages: list[Message]) -> str:
    return " ".join(word for m in messages for word in m["content"].split())


def preference_problems(row: Row) -> list[str]:
    """Every reason a preference pair is degenerate (no signal or a misleading one).

    Texts are compared with whitespace collapsed. Empty sides are reported first; the prefix
    checks are character prefixes and only apply to two different non-empty answers, since
    a truncated answer preferred over (or below) its own continuation teaches length, not
    quality.
    """
    chosen, rejected = _flat(row["chosen"]), _flat(row["rejected"])
    problems = []
    if not chosen:
        problems.append("empty chosen")
    if not rejected:
        problems.append("empty rejected")
    if chosen == rejected:
        problems.append("chosen equals rejected")
    elif chosen and rejected:
        if rejected.startswith(chosen):
            problems.append("chosen is a prefix of rejected")
        elif chosen.startswith(rejected):
            problems.append("rejected is a prefix of chosen")
    return problems


@step("preference_checks")
def preference_checks(rows: list[Row], log: StepLog, drop: bool = True) -> list[Row]:
    """Drop (or with drop=False only count) degenerate preference pairs.

    `log.details["flagged"]` counts every reason found, so a pair that is both empty and
    equal counts under each; a dropped row is counted in `log.dropped` once, under its first
    reason, so dropped counts add up to the rows removed. Other kinds pass through untouched.
    """
    log.details["flagged"] = {}
    kept = []
    for row in rows:
        problems = preference_problems(row) if row.get("kind") == "preference" else []
        for problem in problems:
            log.flag(row, problem)
        if problems and drop:
            log.drop(row, problems[0])
        else:
            kept.append(row)
    return kept


def to_prompt_row(raw: dict[str, Any], source: str) -> Row:
    """A `prompt` row from `{"prompt"}` alone: a question with no answer, for the methods
    that sample their own answers (PPO, GRPO, RLOO, RLAIF) and for `compare --data`.

    `prompt` is a string or a list of messages ending with a user message; an optional
    `system` string becomes the first message. Methods that need an answer refuse the row.
    """
    raw = _require(raw, "prompt")
    prompt = _messages(raw["prompt"], "prompt", "user")
    _check_prompt(prompt)
    return {"kind": "prompt", "prompt": _with_system(prompt, raw), "source": source}
