"""Text metrics on (prediction, reference) pairs: exact match, ROUGE-L, BLEU, perplexity.

Each returns the aggregate and, where it is defined per example, the per-example scores
stored in the registry for error analysis.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata

HIGHER_IS_BETTER = {"exact_match": True, "rouge_l": True, "bleu": True, "perplexity": False}

_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lowercase, NFKC, drop punctuation and collapse whitespace (SQuAD-style)."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_PUNCT)
    return re.sub(r"\s+", " ", text).strip()


def exact_match(preds: list[str], refs: list[str]) -> tuple[float, list[float]]:
    scores = [float(normalize(p) == normalize(r)) for p, r in zip(preds, refs, strict=True)]
    return (sum(scores) / len(scores) if scores else 0.0), scores


def rouge_l(preds: list[str], refs: list[str]) -> tuple[float, list[float]]:
    """Mean ROUGE-L F1 (rouge-score, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)]
    return (sum(scores) / len(scores) if scores else 0.0), scores


def bleu(preds: list[str], refs: list[str]) -> tuple[float, list[float]]:
    """Corpus BLEU (sacrebleu, 0-100) and per-example sentence BLEU."""
    import sacrebleu

    corpus = sacrebleu.corpus_bleu(preds, [refs]).score
    per = [sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(preds, refs, strict=True)]
    return corpus, per


def perplexity(nll_and_counts: list[tuple[float, int]]) -> tuple[float, list[float]]:
    """Token-weighted perplexity over all answers, and each answer's own perplexity."""
    total = sum(n for n, _ in nll_and_counts)
    count = sum(c for _, c in nll_and_counts)
    per = [math.exp(n / c) if c else float("nan") for n, c in nll_and_counts]
    return (math.exp(total / count) if count else float("nan")), per
