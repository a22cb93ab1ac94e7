"""Remove training rows that overlap an evaluation set (the `decontaminate` step).

A model trained on its test questions scores well without being good. The check is the
13-gram overlap popularised by the GPT-3 paper: a training row is contaminated when it
shares a word 13-gram (lowercased, punctuation stripped) with an evaluation row. Thirteen
words is long enough that common phrases ("what is the capital of") do not match by chance,
and short enough to catch a copied question inside a longer training text. A prompt
template shared by both sides is text they share too: a template of 8 words plus the first
5 words of a question make a 13-gram, so templated rows can match on a common opening.
"""

from __future__ import annotations

import bisect
import itertools
from typing import Any

from tuneloop.data.dedup import normalize_for_hash, strip_shared_affixes
from tuneloop.data.records import MESSAGE_FIELDS, Row
from tuneloop.data.steps import StepLog, step
from tuneloop.errors import DataError

EXAMPLES_PER_SET = 3
EXAMPLE_CHARS = 160


def word_ngrams(text: str, n: int = 13) -> set[str]:
    """Distinct word n-grams of the normalised text; a shorter text is one n-gram (itself).

    Without the short-text rule, a 5-word question could never match anything; with it, it
    matches only a row that is the same 5 words, not every text that contains them.
    """
    words = normalize_for_hash(text).split()
    if len(words) <= n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def ngram_overlap(
    train_texts: list[str], eval_texts: list[str], n: int = 13
) -> list[tuple[int, list[int], float]]:
    """Train rows sharing an n-gram with any eval text, by train index.

    Each result is (train index, sorted eval indices it overlaps, fraction of the train
    text's distinct n-grams found in the eval set). The eval side is indexed once in a dict
    from n-gram hash to eval rows, so checking a train row costs one lookup per n-gram.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    index: dict[int, list[int]] = {}
    for j, text in enumerate(eval_texts):
        for gram in word_ngrams(text, n):
            owners = index.setdefault(hash(gram), [])
            if not owners or owners[-1] != j:
                owners.append(j)
    out: list[tuple[int, list[int], float]] = []
    for i, text in enumerate(train_texts):
        grams = word_ngrams(text, n)
        hits = 0
        evals: set[int] = set()
        for gram in grams:
            owners = index.get(hash(gram))
            if owners:
                hits += 1
                evals.update(owners)
        if hits:
            out.append((i, sorted(evals), hits / len(grams)))
    return out


def overlapping_requests(texts: list[str], references: list[str], min_words: int = 4) -> list[bool]:
    """Whether each text is a reference, holds one whole, or is held whole by one.

    Compared after `normalize_for_hash`, on word boundaries. The same request reaches two
    files through different prompt templates (a CSV row through the classification template
    in one, its raw text in a run's `validation.jsonl`), so equality alone misses it; a
    template only wraps the request, so containment catches it. A text or reference under
    `min_words` words counts only when equal: "hi" sits inside many unrelated requests.
    Each side is joined into one string and searched once per entry of the other, so
    10,003 templated Banking77 requests against 1,000 raw ones took 0.52 s here.
    """
    norm_texts = [normalize_for_hash(t) for t in texts]
    norm_refs = [normalize_for_hash(r) for r in references]
    exact = set(norm_refs)
    hit = [t in exact for t in norm_texts]
    # normalised text has no newlines, so "\n" separates entries; the spaces make every
    # match start and end on a word boundary
    joined_texts = "\n".join(f" {t} " for t in norm_texts)
    starts = list(itertools.accumulate((len(t) + 3 for t in norm_texts), initial=0))
    for ref in norm_refs:
        if len(ref.split()) < min_words:
            continue
        needle = f" {ref} "
        pos = joined_texts.find(needle)
        while pos != -1:
            hit[bisect.bisect_right(starts, pos) - 1] = True
            pos = joined_texts.find(needle, pos + 1)
    joined_refs = "\n".join(f" {r} " for r in norm_refs)
    for i, text in enumerate(norm_texts):
        if not hit[i] and len(text.split()) >= min_words and f" {text} " in joined_refs:
            hit[i] = True
    return hit


def content_text(row: Row) -> str:
    """All text of a row except system messages, joined.

    A system prompt shared by the training and eval data is an instruction, not eval
    content; left in, it would make every training row that uses it look contaminated.
    """
    parts = [
        msg["content"]
        for name in MESSAGE_FIELDS
        for msg in row.get(name) or []
        if msg.get("role") != "system"
    ]
    if isinstance(row.get("text"), str):
        parts.append(row["text"])
    return "\n".join(parts)


def _eval_sets(
    eval_files: list[str] | None, eval_rows: list[Row] | None
) -> list[tuple[str, list[Row]]]:
    """(name, rows) per eval set: `eval_rows` as one set, then one per file."""
    sets: list[tuple[str, list[Row]]] = []
    if eval_rows:
        sets.append(("eval_rows", eval_rows))
    for path in eval_files or []:
        # The reader returns normalised rows of any kind (chat, preference, text), so an
        # eval set need not be SFT data. strict: an unreadable eval row would go unchecked.
        from tuneloop.data.readers import read_rows

        sets.append((str(path), read_rows(path, strict=True).rows))
    if not sets:
        raise DataError("decontaminate: give eval_files or eval_rows (the sets to check against)")
    return sets


@step("decontaminate")
def decontaminate(
    rows: list[Row],
    log: StepLog,
    eval_files: list[str] | None = None,
    eval_rows: list[Row] | None = None,
    n: int = 13,
    remove: bool = True,
    min_overlap: float = 0.0,
) -> list[Row]:
    """Drop (or, with remove=False, only report) training rows that overlap an eval set.

    Compares all text of a row but its system messages (`content_text`). A row that
    overlaps several eval sets is dropped once, under the first set's name (eval_rows
    first, then eval_files in order); each set's report still counts it.
    n: word n-gram length. min_overlap: a row counts as contaminated only when at least
    this fraction of its n-grams is in the eval set (0: any shared n-gram is enough).
    """
    if not 0.0 <= min_overlap <= 1.0:
        raise DataError("decontaminate: min_overlap must be a fraction in [0, 1]")
    # a template or system text every row carries is not contamination: compare the rest
    train_texts = strip_shared_affixes([content_text(r) for r in rows])
    reasons: dict[int, str] = {}
    report: list[dict[str, Any]] = []
    for name, eval_set in _eval_sets(eval_files, eval_rows):
        eval_texts = strip_shared_affixes([content_text(r) for r in eval_set])
        hits = [h for h in ngram_overlap(train_texts, eval_texts, n) if h[2] >= min_overlap]
        for i, _, _ in hits:
            reasons.setdefault(i, f"overlaps eval set {name}")  # the first set named wins
        report.append(
            {
                "name": name,
                "eval_rows": len(eval_set),
                "train_rows_overlapping": len(hits),
                "examples": [
                    {
                        "train": rows[i].get("source", f"row {i}"),
                        "eval": eval_set[evals[0]].get("source", f"row {evals[0]}"),
                        "overlap": round(fraction, 3),
                        "train_text": train_texts[i][:EXAMPLE_CHARS],
                        "eval_text": eval_texts[evals[0]][:EXAMPLE_CHARS],
                    }
                    for i, evals, fraction in hits[:EXAMPLES_PER_SET]
                ],
            }
        )
    log.details["eval_sets"] = report
    log.details["contaminated_rows"] = len(reasons)
    if not remove:
        return list(rows)
    out = []
    for i, row in enumerate(rows):
        if i in reasons:
            log.drop(row, reasons[i])
        else:
            out.append(row)
    return out
