"""Label reranking: the model chooses among the labels a sentence-embedding lookup proposes.

A classifier run trained with `data.label_rerank: K` answers differently from free
generation. For each input, the run's label index (its training rows, embedded by the
bundled MiniLM or the tuned copy) proposes the K most likely labels with a retrieval
log-probability each; the model scores every candidate by the log-likelihood of writing it
as its answer (label tokens plus the end-of-turn token); the answer is the candidate with
the highest

    log p_model(label | prompt) + weight * log p_retrieval(label | text)

This is a product of two experts that make different mistakes: the fine-tuned model reads
the whole message, the lookup compares it with every training row. Every answer is a label,
and the candidates and their scores are kept with each example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneloop.data.formats import Conversation


@dataclass
class LabelRerank:
    """The run's label index and how to use it (recorded in the run's prompt format)."""

    index: Any  # tuneloop.data.hints.HintIndex
    k: int
    weight: float = 1.0

    @classmethod
    def from_record(
        cls, record: dict[str, Any], loaded: dict[str, Any] | None = None
    ) -> LabelRerank:
        """From the run's `label_rerank` record. loaded: indexes already read, by directory
        (a run with label hints too keeps one index for both; it is read once)."""
        from tuneloop.data.hints import HintIndex

        where = record["index"]
        index = (loaded or {}).get(where) or HintIndex.load(where)
        return cls(index, int(record["k"]), float(record["weight"]))


@dataclass
class Reranked:
    text: str  # the chosen label
    candidates: list[tuple[str, float, float]]  # (label, model log p, retrieval log p)


def rerank_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[Conversation],
    queries: list[str],
    rerank: LabelRerank,
    batch_size: int = 16,
    progress: Any = None,
) -> list[Reranked]:
    """The chosen label for every prompt (see the module docstring).

    queries: the text each prompt classifies, without any hints appended (what the index
    was built from).
    """
    import numpy as np

    from tuneloop.models.generate import score_candidates

    if len(prompts) != len(queries):
        raise ValueError(f"{len(prompts)} prompts but {len(queries)} queries")
    if not prompts:
        return []
    names, log_ret = rerank.index.label_log_probs(rerank.index.embed(queries))
    k = min(rerank.k, len(names))
    top = np.argsort(-log_ret, axis=1, kind="stable")[:, :k]
    scores = score_candidates(
        model, tokenizer, prompts, [[names[c] for c in row] for row in top], batch_size, progress
    )
    out: list[Reranked] = []
    for i, model_lp in enumerate(scores):
        cands = [
            (names[c], lp, float(log_ret[i, c])) for c, lp in zip(top[i], model_lp, strict=True)
        ]
        best = max(cands, key=lambda x: x[1] + rerank.weight * x[2])
        out.append(Reranked(text=best[0], candidates=cands))
    return out
