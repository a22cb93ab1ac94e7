"""A small library of system prompts that work, with variables filled from the task.

Each is a template: `{labels}` is the label set (comma-separated), `{topic}` what the
assistant is for. A user's own prompt is a template too, so a team can try theirs on the
same footing as the defaults.
"""

from __future__ import annotations

import string
from typing import Any

from tuneloop.errors import TuneloopError

PROMPTS: dict[str, str] = {
    # a classifier told the label set: the base model cannot guess intent names otherwise
    "classifier": (
        "You sort customer messages into intents. The intents are: {labels}.\n"
        "Reply with exactly one intent from that list, written as it appears there, and "
        "nothing else."
    ),
    # an assistant that stays on its subject and redirects politely
    "on_topic": (
        "You are the support assistant for {topic}. Answer questions about {topic} "
        "briefly, accurately and politely. If you do not know, say so and point to human "
        "support; never invent policies, prices or dates. If a question is not about "
        "{topic}, say politely that you can only help with {topic}."
    ),
    # answers as one JSON object
    "json": (
        "Answer with a single JSON object and nothing else: no prose before or after it, "
        "no code fence."
    ),
}


def render_prompt(template: str, **values: Any) -> str:
    """`template` (a PROMPTS name or the text itself) with its variables filled in; an
    unknown variable is an error naming it, not a literal `{x}` sent to the model."""
    text = PROMPTS.get(template, template)
    wanted = {name for _, name, _, _ in string.Formatter().parse(text) if name}
    missing = sorted(wanted - set(values))
    if missing:
        raise TuneloopError(
            f"system prompt template needs {', '.join(missing)}; known here: "
            f"{', '.join(sorted(values)) or 'none'}"
        )
    return text.format(**{k: v for k, v in values.items() if k in wanted})
