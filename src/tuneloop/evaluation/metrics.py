"""Text metrics on (prediction, reference) pairs: exact match, token F1, ROUGE, BLEU,
METEOR, JSON validity, perplexity.

Each returns the aggregate and, where it is defined per example, the per-example scores
stored in the registry for error analysis. `SCORERS` maps metric names to these
functions for the text metrics (perplexity needs the model, not the text).

Tokenisation for token F1 and ROUGE: words of letters, digits and combining marks in any
script, and every Chinese / Japanese / Thai / other unspaced-script character as a token
of its own, so such answers are not scored as empty (rouge-score's own tokenizer keeps
only a-z and 0-9). Latin-script words are Porter-stemmed for ROUGE, as rouge-score does.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata

HIGHER_IS_BETTER = {
    "exact_match": True,
    "token_f1": True,
    "rouge_1": True,
    "rouge_2": True,
    "rouge_l": True,
    "rouge_lsum": True,
    "bleu": True,
    "meteor": True,
    "json_valid": True,
    "perplexity": False,
}

_ASCII_PUNCT = set(string.punctuation)


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize(text: str) -> str:
    """Lowercase, NFKC, drop punctuation (ASCII and Unicode) and collapse whitespace
    (SQuAD-style), keeping what makes a number: a leading sign and a decimal point or
    separator between digits, so "-3" is not "3" and "3.5" is not "35"."""
    text = unicodedata.normalize("NFKC", text).lower()
    out = []
    for i, ch in enumerate(text):
        if not _is_punct(ch):
            out.append(ch)
            continue
        before = text[i - 1] if i else ""
        after = text[i + 1] if i + 1 < len(text) else ""
        if ch in "-+" and after.isdigit() and not before.isalnum():
            out.append(ch)  # a sign
        elif ch in ".," and before.isdigit() and after.isdigit():
            out.append(ch)  # a decimal point or thousands separator
        else:
            out.append(" " if ch in "-_/" else "")  # "top-up" -> "top up", not "topup"
    return re.sub(r"\s+", " ", "".join(out)).strip()


def fact_match(preds: list[str], facts: list[list[str | list[str]]]) -> tuple[float, list[float]]:
    """Share of each answer's reference facts that it states, and their mean.

    A fact is a short string the right answer must contain (after `normalize`, so case,
    punctuation and spacing do not matter), or a list of alternative wordings of which
    one must appear ("2 years" / "two years"), as whole words ("2 years" is not found in
    "12 years"). A check on content, not on style: it
    tells a fluent wrong answer ("we ship worldwide") from a right one where ROUGE and
    token F1 are close. An example without facts scores 1.
    """
    per = []
    for pred, wanted in zip(preds, facts, strict=True):
        text = f" {normalize(pred)} "
        found = [
            any(f" {normalize(alt)} " in text for alt in ([f] if isinstance(f, str) else f))
            for f in wanted
        ]
        per.append(sum(found) / len(found) if found else 1.0)
    return (sum(per) / len(per) if per else 0.0), per


def exact_match(preds: list[str], refs: list[str]) -> tuple[float, list[float]]:
    scores = [float(normalize(p) == normalize(r)) for p, r in zip(preds, refs, strict=True)]
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


# scripts written without spaces between words: each character is a token
_UNSPACED = re.compile(
    r"[\u0e00-\u0e7f\u0e80-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff"
    r"\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
)


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens of any script (see the module docstring): runs of letters,
    digits and combining marks (so Devanagari or vowelled Arabic words stay whole), with
    each character of an unspaced script a token of its own (its marks attached)."""
    text = unicodedata.normalize("NFKC", text).lower()
    out: list[str] = []
    word: list[str] = []
    last_unspaced = False
    for ch in text:
        kind = unicodedata.category(ch)[0]
        if kind == "M" and not word and last_unspaced:
            out[-1] += ch  # a mark on an unspaced-script character
            continue
        if kind in "LN" or (kind == "M" and word):
            if _UNSPACED.match(ch):
                if word:
                    out.append("".join(word))
                    word = []
                out.append(ch)
                last_unspaced = True
            else:
                word.append(ch)
                last_unspaced = False
            continue
        if word:
            out.append("".join(word))
            word = []
        last_unspaced = False
    if word:
        out.append("".join(word))
    return out


def token_f1(preds: list[str], refs: list[str]) -> tuple[float, list[float]]:
    """SQuAD-style bag-of-tokens F1 between answer and reference (any script)."""
    from collections import Counter

    scores = []
    for p, r in zip(preds, refs, strict=True):
        pt, rt = tokenize(normalize(p)), tokenize(normalize(r))
        if not pt or not rt:
            scores.append(float(pt == rt))
            continue
        common = sum((Counter(pt) & Counter(rt)).values())
        if common == 0:
            scores.append(0.0)
            continue
        precision, recall = common / len(pt), common / len(rt)
        scores.append(2 * precision * recall / (precision + recall))
    return (sum(scores) / len(scores) if scores else 0.0), scores


class _RougeTokenizer:
    """rouge-score's tokenizer interface over `tokenize`, stemming Latin-script words."""

    def __init__(self) -> None:
        from nltk.stem import porter

        self._stem = porter.PorterStemmer().stem

    def tokenize(self, text: str) -> list[str]:
        return [self._stem(t) if t.isascii() and len(t) > 3 else t for t in tokenize(text)]


def _rouge(kind: str, preds: list[str], refs: list[str]) -> tuple[float, list[float]]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([kind], tokenizer=_RougeTokenizer())
    scores = []
    for p, r in zip(preds, refs, strict=True):
        if kind == "rougeLsum":  # summary-level LCS over sentences, one per line
            p, r = _sentences(p), _sentences(r)
        scores.append(scorer.score(r, p)[kind].fmeasure)
    return (sum(scores) / len(scores) if scores else 0.0), scores


def _sentences(text: str) -> str:
    return "\n".join(x for x in re.split(r"(?<=[.!?\u3002\uff01\uff1f])\s*|\n", text) if x)


def rouge_1(preds: list[str], refs: list[str]) -> tuple[float, list[float]]:
    """Mean ROUGE-1 F1 (unigram overlap)."""
    return _rouge("rouge1", preds, refs)


def rouge_2(preds: list[str], refs: list[str]) -> tuple[float, list[float]]:
    """Mean ROUGE-2 F1 (bigram overlap)."""
    return _rouge("rouge2", preds, refs)


def rouge_l(preds: list[str], refs: list[str]) -> tuple[float, list[float]]:
    """Mean ROUGE-L F1 (longest common subsequence)."""
    return _rouge("rougeL", preds, refs)


def rouge_lsum(preds: list[str], refs: list[str]) -> tuple[float, list[float]]:
    """Mean ROUGE-Lsum F1 (union LCS over sentences)."""
    return _rouge("rougeLsum", preds, refs)


def bleu_signature() -> str:
    """sacrebleu's signature of the BLEU settings used, stored with every BLEU score."""
    from sacrebleu.metrics import BLEU

    scorer = BLEU()
    scorer.corpus_score(["x"], [["x"]])  # the signature names the reference count
    return str(scorer.get_signature())


class _NoWordNet:
    """Stands in for WordNet when its data is not installed: no synonyms."""

    def synsets(self, *_: object, **__: object) -> list[object]:
        return []


def meteor_stages() -> list[str]:
    """METEOR's matching stages that run here: exact and stem always; synonyms only when
    nltk's WordNet data is installed (it is never downloaded at run time)."""
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("test")
        return ["exact", "stem", "synonym"]
    except LookupError:
        return ["exact", "stem"]


def meteor(preds: list[str], refs: list[str]) -> tuple[float, list[float]]:
    """Mean METEOR (nltk), on `tokenize`d text; see `meteor_stages` for what matched."""
    from nltk.translate.meteor_score import meteor_score

    kwargs = {} if "synonym" in meteor_stages() else {"wordnet": _NoWordNet()}
    scores = [
        float(meteor_score([tokenize(r)], tokenize(p), **kwargs))
        for p, r in zip(preds, refs, strict=True)
    ]
    return (sum(scores) / len(scores) if scores else 0.0), scores


def _json_text(text: str) -> str:
    """The answer without a surrounding markdown code fence, if it has one."""
    fenced = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, re.DOTALL)
    return fenced.group(1) if fenced else text


def json_valid(
    preds: list[str], refs: list[str], schema: dict | None = None
) -> tuple[float, list[float]]:
    """Share of answers that parse as JSON (a ```json fence allowed) and, with `schema`,
    conform to that JSON Schema."""
    import json

    validator = None
    if schema is not None:
        import jsonschema

        validator = jsonschema.Draft202012Validator(schema)
    scores = []
    for p in preds:
        try:
            value = json.loads(_json_text(p))
        except ValueError:
            scores.append(0.0)
            continue
        scores.append(float(validator is None or validator.is_valid(value)))
    return (sum(scores) / len(scores) if scores else 0.0), scores


SCORERS = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "rouge_1": rouge_1,
    "rouge_2": rouge_2,
    "rouge_l": rouge_l,
    "rouge_lsum": rouge_lsum,
    "bleu": bleu,
    "meteor": meteor,
    "json_valid": json_valid,
}
