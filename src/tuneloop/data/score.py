"""The `score` step: per-row quality and relevance signals, and dataset-level quantity and
diversity, with thresholds that filter.

Row signals: answer length in words, repetition (share of repeated word 3-grams in the
answer), conflicting answers to the same prompt, labels outside the label set, and
optionally relevance (embedding similarity to seed examples or a domain description).
Dataset signals (in the log, shown in the card): quantity against the method's guideline,
distinct-n-gram diversity of prompts, label balance, and embedding cluster coverage.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tuneloop.data.dedup import shared_affix_lengths, strip_affixes
from tuneloop.data.records import Row, answer_of, prompt_of
from tuneloop.data.steps import StepLog, step
from tuneloop.errors import DataError

# Practitioners' rule of thumb for how many pairs each method wants (low, high).
QUANTITY_GUIDELINE = {
    "lora": (1_000, 10_000),
    "qlora": (1_000, 10_000),
    "freeze": (1_000, 10_000),
    "full": (10_000, 100_000),
    "dpo": (1_000, 10_000),
    "kto": (1_000, 10_000),
    "pretrain": (10_000, 1_000_000),
}

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def repetition(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0 = none, near 1 = a loop)."""
    toks = words(text)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Unique n-grams over all n-grams across texts (a standard lexical diversity score).

    N-grams are counted by their 64-bit hashes in sorted numpy arrays, 8 bytes per distinct
    n-gram: a set of word tuples took ~200 bytes each, gigabytes on millions of rows. Two
    n-grams share a hash with probability 2^-64, far below the score's 4 decimals.
    """
    import numpy as np

    from tuneloop.data.dedup import _sorted_unique

    total = 0
    seen = np.zeros(0, dtype=np.int64)
    pending: list[int] = []
    for text in texts:
        toks = words(text)
        grams = list(zip(*(toks[i:] for i in range(n)), strict=False))
        total += len(grams)
        pending.extend(map(hash, grams))
        # merge once the new hashes outnumber the distinct ones so far: each hash is sorted
        # a logarithmic number of times, not once per merge (merging every 64k was
        # quadratic: an hour on 2M rows)
        if len(pending) >= max(1 << 16, len(seen)):
            seen = _sorted_unique(np.concatenate([seen, np.array(pending, dtype=np.int64)]))
            pending.clear()
    if pending:
        seen = _sorted_unique(np.concatenate([seen, np.array(pending, dtype=np.int64)]))
    return len(seen) / total if total else 0.0


def normalized_entropy(counts: list[int]) -> float:
    """Label balance: 1 when all labels are equally frequent, 0 when one label has all."""
    total = sum(counts)
    if total == 0 or len(counts) < 2:
        return 1.0 if counts else 0.0
    h = -sum(c / total * math.log(c / total) for c in counts if c)
    return h / math.log(len(counts))


def load_labels(path: str | Path) -> list[str]:
    """A label set from JSON: a list of labels or a mapping whose keys are labels."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read labels file {path}: {err}") from None
    if isinstance(data, dict):
        data = list(data)
    if not isinstance(data, list) or not all(isinstance(x, str | int) for x in data):
        raise DataError(f"{path}: a labels file must be a JSON list of labels")
    return [str(x) for x in data]


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _prompt_key(row: Row) -> str:
    return " ".join(words(" ".join(m["content"] for m in prompt_of(row))))


@step("score")
def score(
    rows: list[Row],
    log: StepLog,
    min_answer_words: int = 1,
    max_answer_words: int | None = None,
    max_repetition: float = 0.5,
    drop_conflicts: bool = False,
    labels: list[str] | None = None,
    labels_file: str | None = None,
    drop_unknown_labels: bool = True,
    relevance_seeds: str | None = None,
    relevance_description: str | None = None,
    min_relevance: float | None = None,
    diversity_embeddings: bool = False,
    method: str = "lora",
) -> list[Row]:
    """Score every row, drop those below thresholds, record distributions for the card.

    relevance_seeds: a data file of on-topic examples; relevance_description: a sentence
    describing the domain. Either turns on embedding relevance (cosine similarity to the
    seeds' centroid or the description); min_relevance drops rows below it.
    """
    if labels_file:
        labels = load_labels(labels_file)
    label_set = set(labels) if labels else None

    answer_words = [len(words(answer_of(r))) for r in rows]
    reps = [repetition(answer_of(r)) for r in rows]

    # conflicting answers: the same prompt (normalised) with different answers; by digests
    # of both, since holding every prompt and answer as text doubled the rows' memory
    # (documents and prompt-only rows have no answer to conflict)
    prompt_keys = [
        None if r["kind"] in ("text", "prompt") else _digest(_prompt_key(r)) for r in rows
    ]
    first_answer: dict[bytes, bytes] = {}
    conflicts: set[bytes] = set()
    for r, key in zip(rows, prompt_keys, strict=True):
        if key is not None:
            answer = _digest(" ".join(words(answer_of(r))))
            if first_answer.setdefault(key, answer) != answer:
                conflicts.add(key)
    del first_answer

    relevance: list[float] | None = None
    if relevance_seeds or relevance_description:
        relevance = _relevance(rows, relevance_seeds, relevance_description)

    kept: list[Row] = []
    log.details["flagged"] = {}
    for i, r in enumerate(rows):
        reason = None
        if r["kind"] == "prompt":  # no answer to measure: only relevance applies
            low = relevance is not None and min_relevance is not None
            if low and relevance[i] < min_relevance:  # type: ignore[index,operator]
                reason = f"relevance below {min_relevance}"
        elif answer_words[i] < min_answer_words:
            reason = f"answer shorter than {min_answer_words} words"
        elif max_answer_words is not None and answer_words[i] > max_answer_words:
            reason = f"answer longer than {max_answer_words} words"
        elif reps[i] > max_repetition:
            reason = f"repetition above {max_repetition}"
        elif label_set is not None and r.get("label") is not None and r["label"] not in label_set:
            log.flag(r, "label outside the label set")
            if drop_unknown_labels:
                reason = "label outside the label set"
        elif relevance is not None and min_relevance is not None and relevance[i] < min_relevance:
            reason = f"relevance below {min_relevance}"
        if reason is None and r["kind"] != "text" and prompt_keys[i] in conflicts:
            log.flag(r, "conflicting answers to the same prompt")
            if drop_conflicts:
                reason = "conflicting answers to the same prompt"
        if reason:
            log.drop(r, reason)
        else:
            kept.append(r)

    low, high = QUANTITY_GUIDELINE.get(method, QUANTITY_GUIDELINE["lora"])
    label_counts = Counter(r["label"] for r in kept if r.get("label") is not None)
    details: dict[str, Any] = {
        "scores": {"answer_words": answer_words, "repetition": [round(x, 4) for x in reps]},
        "conflicting_prompts": len(conflicts),
        "quantity": {"rows": len(kept), "method": method, "guideline": [low, high]},
        "diversity": {
            "distinct_2_prompts": round(distinct_n(_stripped_prompts(kept)), 4),
            "distinct_2_answers": round(distinct_n(answer_of(r) for r in kept), 4),
        },
    }
    if label_counts:
        details["labels"] = dict(label_counts.most_common())
        details["diversity"]["label_balance"] = round(
            normalized_entropy(list(label_counts.values())), 4
        )
        if label_set is not None:
            details["labels_missing"] = sorted(label_set - set(label_counts))
    if relevance is not None:
        details["scores"]["relevance"] = [round(x, 4) for x in relevance]
    if diversity_embeddings and len(kept) >= 20:
        details["diversity"]["cluster_coverage"] = _cluster_coverage(kept)
    log.details.update(details)
    return kept


def _stripped_prompts(rows: list[Row]) -> Iterator[str]:
    """`strip_shared_affixes` of the rows' prompts, generated twice rather than held."""

    def prompts() -> Iterator[str]:
        return (" ".join(m["content"] for m in prompt_of(r)) for r in rows)

    # shared system prompts and templates would make every dataset look repetitive
    front, back = shared_affix_lengths(prompts()) if len(rows) >= 2 else (0, 0)
    return (strip_affixes(p, front, back) for p in prompts())


def _relevance(rows: list[Row], seeds: str | None, description: str | None) -> list[float]:
    import numpy as np

    from tuneloop.data.embed import embed

    if seeds:
        from tuneloop.data.readers import read_rows

        seed_rows = read_rows(seeds).rows
        anchor = embed([" ".join(m["content"] for m in prompt_of(r)) for r in seed_rows])
        anchor = anchor.mean(axis=0)
    else:
        anchor = embed([description or ""])[0]
    anchor = anchor / (np.linalg.norm(anchor) or 1.0)
    vectors = embed([" ".join(m["content"] for m in prompt_of(r)) for r in rows])
    return [float(x) for x in vectors @ anchor]


def _cluster_coverage(rows: list[Row]) -> dict[str, float]:
    """k-means on prompt embeddings: how evenly rows spread over k topics (1 = evenly)."""
    import numpy as np
    from sklearn.cluster import KMeans

    from tuneloop.data.embed import embed

    vectors = embed([" ".join(m["content"] for m in prompt_of(r)) for r in rows])
    k = max(2, min(50, len(rows) // 20))
    labels = KMeans(n_clusters=k, n_init=3, random_state=0).fit_predict(vectors)
    sizes = np.bincount(labels, minlength=k).tolist()
    return {
        "k": k,
        "balance": round(normalized_entropy(sizes), 4),
        "effective_clusters": round(math.exp(normalized_entropy(sizes) * math.log(k)), 2),
    }
