"""Few-shot prompts: k solved examples placed before the request as earlier turns.

Examples are chosen per request by embedding similarity (the bundled MiniLM, the same
embedder as label hints and drift checks) from a pool of training conversations, or fixed
(the first k, for a like-for-like "k fixed examples" baseline). Nearest examples are put
last, right before the request, where a small model attends most.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneloop.data.formats import Conversation
from tuneloop.data.hints import query_text


@dataclass
class FewShot:
    """A pool of solved examples (conversations ending with the answer) to draw from."""

    pool: list[Conversation]
    vectors: Any = field(default=None, repr=False)

    @classmethod
    def build(cls, pool: list[Conversation]) -> FewShot:
        from tuneloop.data.embed import embed

        texts = [query_text(c[:-1]) for c in pool]
        return cls(list(pool), embed(texts))

    def nearest(self, queries: list[str], k: int) -> list[list[int]]:
        """For each query text, the pool indices of its k most similar examples, best
        first."""
        import numpy as np

        from tuneloop.data.embed import embed

        if k <= 0 or not self.pool:
            return [[] for _ in queries]
        q = embed(list(queries))
        out: list[list[int]] = []
        for lo in range(0, len(q), 1024):
            sims = q[lo : lo + 1024] @ self.vectors.T
            top = np.argsort(-sims, axis=1, kind="stable")[:, : min(k, len(self.pool))]
            out.extend(row.tolist() for row in top)
        return out

    def prompts(
        self, conversations: list[Conversation], k: int, fixed: bool = False
    ) -> list[Conversation]:
        """Each conversation (ending with its reference answer) with k examples inserted
        after its system message and before its request."""
        if fixed:
            chosen = [list(range(min(k, len(self.pool))))] * len(conversations)
        else:
            chosen = self.nearest([query_text(c[:-1]) for c in conversations], k)
        out = []
        for conv, picks in zip(conversations, chosen, strict=True):
            head = [m for m in conv[:1] if m["role"] == "system"]
            shots: list[dict[str, str]] = []
            for i in reversed(picks):  # nearest last, next to the request
                example = self.pool[i]
                shots += [m for m in example if m["role"] != "system"]
            out.append(head + shots + conv[len(head) :])
        return out
