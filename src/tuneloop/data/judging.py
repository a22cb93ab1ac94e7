"""What a pairwise judge is shown, and preference rows as training rows for a judge.

The prompt lives here, below both evaluation (which asks judges) and training (which tunes
them with `method: judge`), so a tuned judge is trained on exactly the text it is later
asked: the same system message, the same question layout, the same answer letters. A
judge's verdict is the bare letter `A` or `B` (or `tie`), which is what a local judge's
constrained decoding reads, so the training target is that letter alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuneloop.config.recipe import DEFAULT_JUDGE_CRITERIA

JUDGE_SYSTEM = "You are a careful, strict evaluator of answers. Follow the output format."
DEFAULT_CRITERIA = DEFAULT_JUDGE_CRITERIA


def pair_messages(question: str, first: str, second: str, criteria: str) -> list[dict[str, str]]:
    """The conversation that asks a judge which of two answers (shown as A, B) is better."""
    text = (
        f"Which answer to the question is better for {criteria}? Judge the content, not "
        "the order or the length.\n\n"
        f"Question:\n{question}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\n"
        "Reply with 'Verdict: A', 'Verdict: B' or 'Verdict: tie', then one sentence with "
        "the reason."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": text}]


def conversation_text(prompt: Sequence[dict[str, str]]) -> str:
    """The conversation before the answer as the text a judge sees (one turn: just it)."""
    turns = [m for m in prompt if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns)


def judge_rows(
    rows: Sequence[dict[str, Any]], criteria: str = DEFAULT_CRITERIA
) -> list[dict[str, Any]]:
    """Each preference row twice, as judge conversations: the preferred answer shown as A
    (verdict `A`), then shown as B (verdict `B`). Both orders, so the judge learns the
    content and not a position (and its training data has as many A as B verdicts)."""
    out = []
    for row in rows:
        question = conversation_text(row["prompt"])
        chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        for first, second, verdict in ((chosen, rejected, "A"), (rejected, chosen, "B")):
            messages = [
                *pair_messages(question, first, second, criteria),
                {"role": "assistant", "content": verdict},
            ]
            out.append({"messages": messages})
    return out
