"""LLM-as-judge: rubric grading, reference-guided grading and pairwise comparison.

A judge is any model tuneloop can run (a bundled or local model, a run, a checkpoint) or
an OpenAI-compatible endpoint: `openai:MODEL` with the base URL in `OPENAI_BASE_URL` and
the key in `OPENAI_API_KEY`.

Local judges decode their verdict constrained to the allowed answers (the scores of the
scale, or A / B / tie) with the same token trie as `eval --constrain-labels`, so every
verdict is valid even from a small model; the short reason is a second, free generation
after the verdict. Endpoint judges answer in one call and the verdict is parsed from the
text ("Score: 7", "Verdict: A"); an unparseable reply is counted, never guessed.

Pairwise comparisons are judged in both orders (A/B, then B/A). When the two orders
disagree the pair is a tie and counts towards the judge's position-bias rate, the share
of pairs whose verdict depended on the order.

Every judge completion is cached in the registry (`judge_calls`), keyed by the judge and
the exact request, so re-running a report or adding a model re-judges only what is new.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.data.judging import (
    DEFAULT_CRITERIA,
    JUDGE_SYSTEM,
    conversation_text,
    pair_messages,
)
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.agreement import cohen_kappa
from tuneloop.progress import Progress


@dataclass(frozen=True)
class Rubric:
    """What single-answer grading asks for: criteria and an integer scale."""

    criteria: str = "helpfulness, correctness and clarity"
    low: int = 1
    high: int = 10

    def __post_init__(self) -> None:
        if self.high <= self.low:
            raise ValueError(f"rubric scale must go up: {self.low}..{self.high}")
        if self.high - self.low > 20:
            raise ValueError("rubric scale too wide (at most 21 points)")

    @property
    def scores(self) -> list[str]:
        return [str(k) for k in range(self.low, self.high + 1)]


@dataclass
class Grade:
    score: float | None  # None when an endpoint's reply had no parseable score
    reason: str
    raw: str


@dataclass
class PairVerdict:
    winner: str  # "a", "b" or "tie" (also when the two orders disagree)
    first_order: str  # verdict with a shown first: "a", "b" or "tie" ("?" unparsed)
    second_order: str  # verdict with b shown first, mapped back to a/b
    consistent: bool
    reasons: list[str] = field(default_factory=list)


def _grade_messages(
    question: str, answer: str, rubric: Rubric, reference: str | None
) -> list[dict[str, str]]:
    ref = f"Reference answer (correct):\n{reference}\n\n" if reference is not None else ""
    guide = (
        "Compare the answer with the reference; an answer that contradicts it is wrong. "
        if reference is not None
        else ""
    )
    text = (
        f"Grade the answer to the question for {rubric.criteria}, on a scale of "
        f"{rubric.low} (worst) to {rubric.high} (best). {guide}\n\n"
        f"Question:\n{question}\n\n{ref}Answer to grade:\n{answer}\n\n"
        f"Reply with 'Score: N' (N from {rubric.low} to {rubric.high}), then one sentence "
        "with the reason."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": text}]


_SCORE = re.compile(r"score\s*[:=]?\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_VERDICT = re.compile(r"verdict\s*[:=]?\s*(a|b|tie)\b", re.IGNORECASE)


def parse_score(text: str, rubric: Rubric) -> float | None:
    """The score in a free-text reply ("Score: 7"), if present and on the scale."""
    m = _SCORE.search(text) or re.match(r"\s*(-?\d+(?:\.\d+)?)\b", text)
    if not m:
        return None
    value = float(m.group(1))
    return value if rubric.low <= value <= rubric.high else None


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from a free-text reply ("Verdict: B"), if present."""
    # "Verdict: X" anywhere, or a reply that starts with the verdict and a stop ("B.",
    # "tie - both fine"): never the article in "A close call"
    m = _VERDICT.search(text) or re.match(
        r"\s*(a|b|tie)\s*(?:[.:,;!\-\u2013\u2014]|$)", text, re.IGNORECASE
    )
    if not m:
        return None
    v = m.group(1).lower()
    return "tie" if v == "tie" else v.upper()


class Judge:
    """A model that grades and compares answers (see the module docstring).

    ref: a model reference (`smollm2-135m-instruct`, a directory, `run:ID`) or
    `openai:MODEL` for an OpenAI-compatible endpoint.
    """

    def __init__(
        self, ref: str, batch_size: int = 8, reason_tokens: int = 48, cache: bool = True
    ) -> None:
        self.ref = ref
        self.batch_size = batch_size
        self.reason_tokens = reason_tokens
        self.cache = cache
        self.calls = 0  # completions actually computed (not answered by the cache)
        self._local: tuple[Any, Any] | None = None
        self._identity: str | None = None
        self._tuned: dict[str, Any] | bool | None = False  # False: not looked up yet
        self.remote = ref.startswith("openai:")
        if self.remote and not os.environ.get("OPENAI_BASE_URL"):
            raise TuneloopError(
                f"judge {ref}: set OPENAI_BASE_URL (and OPENAI_API_KEY if the endpoint "
                "needs one) to the OpenAI-compatible server"
            )

    def tuned_recipe(self) -> dict[str, Any] | None:
        """The recipe of a judge tuned with `method: judge` (None for any other judge)."""
        if self.remote:
            return None
        if self._tuned is False:
            try:
                from tuneloop.models import resolve

                recipe = resolve(self.ref, pull_missing=False).recipe or {}
            except Exception:  # an unresolvable model fails later, when it loads
                recipe = {}
            self._tuned = recipe if recipe.get("method") == "judge" else None
        return self._tuned  # type: ignore[return-value]

    def default_criteria(self) -> str:
        """What this judge compares for: a tuned judge's own `alignment.judge_criteria`
        (the words it was trained with), else the generic criteria."""
        tuned = self.tuned_recipe()
        if tuned is not None:
            return str((tuned.get("alignment") or {}).get("judge_criteria") or DEFAULT_CRITERIA)
        return DEFAULT_CRITERIA

    # --- completions, cached -------------------------------------------------------------

    def _complete(
        self,
        conversations: Sequence[list[dict[str, str]]],
        choices: list[str] | None,
        max_new_tokens: int,
    ) -> list[str]:
        from tuneloop import registry

        requests = [
            {"messages": list(c), "choices": choices, "max_new_tokens": max_new_tokens}
            for c in conversations
        ]
        identity = self.identity()
        keys = [registry.judge_call_key(identity, r) for r in requests]
        known = registry.cached_judge_calls(keys) if self.cache else {}
        todo = [i for i, k in enumerate(keys) if k not in known]
        # remote calls are stored one by one (a failure keeps what was already paid for);
        # local ones in batches
        step = 1 if self.remote else max(1, self.batch_size * 4)
        kind = "verdicts" if choices is not None else "reasons"
        with Progress(total=len(todo), desc=f"judge {self.ref}: {kind}", unit="call") as bar:
            for lo in range(0, len(todo), step):
                part = todo[lo : lo + step]
                fresh = self._run([conversations[i] for i in part], choices, max_new_tokens)
                self.calls += len(part)
                for i, text in zip(part, fresh, strict=True):
                    known[keys[i]] = text
                if self.cache:
                    registry.store_judge_calls(
                        identity, [(keys[i], requests[i], known[keys[i]]) for i in part]
                    )
                bar.update(len(part))
        return [known[k] for k in keys]

    def identity(self) -> str:
        """What the cache keys on: the reference, plus for a model on disk the size and
        modification time of its files, so a retrained model in the same place is a new
        judge."""
        if self._identity is None:
            from pathlib import Path

            stamp = ""
            if not self.remote:
                try:
                    from tuneloop.models import resolve

                    resolved = resolve(self.ref, pull_missing=False)
                    dirs = [Path(resolved.base)] + (
                        [Path(resolved.adapter)] if resolved.adapter else []
                    )
                    stamp = ";".join(
                        f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}"
                        for d in dirs
                        for f in sorted(d.glob("*.safetensors"))
                    )
                except Exception:  # an unresolvable model fails later, when it loads
                    stamp = ""
            self._identity = f"{self.ref}|{stamp}" if stamp else self.ref
        return self._identity

    def _run(
        self,
        conversations: Sequence[list[dict[str, str]]],
        choices: list[str] | None,
        max_new_tokens: int,
    ) -> list[str]:
        if self.remote:
            return [self._remote(c, max_new_tokens) for c in conversations]
        from tuneloop.models.generate import generate

        if self._local is None:
            from tuneloop.models import load

            model, tokenizer, _ = load(self.ref)
            model.eval()
            self._local = (model, tokenizer)
        model, tokenizer = self._local
        gens, _ = generate(
            model, tokenizer, list(conversations), max_new_tokens, self.batch_size, choices=choices
        )
        return [g.text for g in gens]

    def _remote(self, messages: list[dict[str, str]], max_new_tokens: int) -> str:
        from tuneloop.models.remote import chat_completion

        data = chat_completion(self.ref, messages, max_new_tokens, timeout=120)
        try:
            return str(data["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise TuneloopError(f"judge {self.ref}: unexpected reply {str(data)[:200]}") from None

    # --- grading -------------------------------------------------------------------------

    def grade(
        self,
        questions: Sequence[str],
        answers: Sequence[str],
        rubric: Rubric = Rubric(),
        references: Sequence[str] | None = None,
    ) -> list[Grade]:
        """One grade per answer; with `references`, reference-guided grading."""
        refs = list(references) if references is not None else [None] * len(questions)
        if not len(questions) == len(answers) == len(refs):
            raise ValueError("questions, answers and references must have the same length")
        prompts = [
            _grade_messages(q, a, rubric, r)
            for q, a, r in zip(questions, answers, refs, strict=True)
        ]
        if self.remote:
            replies = self._complete(prompts, None, self.reason_tokens + 16)
            return [Grade(parse_score(t, rubric), t, t) for t in replies]
        scores = self._complete(prompts, rubric.scores, 8)
        reasons = self._reasons(prompts, [f"Score: {s}" for s in scores])
        return [
            Grade(float(s), r, f"Score: {s}. {r}") for s, r in zip(scores, reasons, strict=True)
        ]

    def _reasons(self, prompts: list[list[dict[str, str]]], verdicts: list[str]) -> list[str]:
        if self.reason_tokens == 0 or self.tuned_recipe() is not None:
            # verdicts only (bulk labelling such as RLAIF); a tuned judge learnt the verdict
            # letter alone and has no reasons to give
            return [""] * len(prompts)
        follow = [
            [
                *p,
                {"role": "assistant", "content": v},
                {"role": "user", "content": "Why, in one sentence?"},
            ]
            for p, v in zip(prompts, verdicts, strict=True)
        ]
        return self._complete(follow, None, self.reason_tokens)

    # --- pairwise ------------------------------------------------------------------------

    def compare(
        self,
        questions: Sequence[str],
        answers_a: Sequence[str],
        answers_b: Sequence[str],
        criteria: str | None = None,
    ) -> list[PairVerdict]:
        """Judge every pair in both orders; disagreement between the orders is a tie.
        criteria: what to compare for (default: `default_criteria()`)."""
        criteria = criteria or self.default_criteria()
        if not len(questions) == len(answers_a) == len(answers_b):
            raise ValueError("questions and both answer lists must have the same length")
        forward = [
            pair_messages(q, a, b, criteria)
            for q, a, b in zip(questions, answers_a, answers_b, strict=True)
        ]
        backward = [
            pair_messages(q, b, a, criteria)
            for q, a, b in zip(questions, answers_a, answers_b, strict=True)
        ]
        prompts = forward + backward
        if self.remote:
            replies = self._complete(prompts, None, self.reason_tokens + 16)
            raw = [parse_verdict(t) or "?" for t in replies]
            reasons = replies
        else:
            raw = self._complete(prompts, ["A", "B", "tie"], 4)
            reasons = self._reasons(prompts, [f"Verdict: {v}" for v in raw])
        n = len(questions)
        out = []
        for i in range(n):
            first = {"A": "a", "B": "b", "tie": "tie"}.get(raw[i], "?")
            second = {"A": "b", "B": "a", "tie": "tie"}.get(raw[n + i], "?")  # b was shown first
            consistent = first == second and first != "?"
            out.append(
                PairVerdict(
                    winner=first if consistent else "tie",
                    first_order=first,
                    second_order=second,
                    consistent=consistent,
                    reasons=[reasons[i], reasons[n + i]],
                )
            )
        return out


def position_bias(verdicts: Sequence[PairVerdict]) -> dict[str, float]:
    """How much the order of the answers decided the verdicts.

    inconsistent_rate: share of pairs whose two orders disagreed (reported as ties).
    first_position_rate: among decisive verdicts (A or B), the share that picked the answer
    shown first; 0.5 is an unbiased judge.
    Pairs with an unparseable reply (endpoint judges) are counted in `unparsed` and left
    out of both rates.
    """
    parsed = [v for v in verdicts if "?" not in (v.first_order, v.second_order)]
    unparsed = len(verdicts) - len(parsed)
    if not parsed:
        return {
            "inconsistent_rate": 0.0,
            "first_position_rate": 0.5,
            "pairs": len(verdicts),
            "unparsed": unparsed,
        }
    inconsistent = sum(not v.consistent for v in parsed) / len(parsed)
    first = decisive = 0
    for v in parsed:
        for shown_first, verdict in (("a", v.first_order), ("b", v.second_order)):
            if verdict in ("a", "b"):
                decisive += 1
                first += verdict == shown_first
    return {
        "inconsistent_rate": inconsistent,
        "first_position_rate": first / decisive if decisive else 0.5,
        "pairs": len(verdicts),
        "unparsed": unparsed,
    }


def human_agreement(
    judge: Judge,
    pairs: str | Path,
    limit: int | None = None,
    seed: int = 0,
    criteria: str | None = None,
) -> dict[str, Any]:
    """How far a judge agrees with human preference labels, so users know how far to trust it.

    `pairs` is any preference file tuneloop reads (prompt/chosen/rejected or HH
    transcripts): the human preferred `chosen`. Each pair is shown with the human's choice
    as A or B by a seeded coin flip (a judge that always says "A" then agrees half the time,
    as chance does), judged in both orders like every pairwise comparison, and compared
    with the human label:

    - agreement: share of pairs where the judge picked the human's answer (a tie is a miss),
      with a bootstrap interval;
    - kappa: Cohen's kappa between the judge's a/b/tie and the human's a/b (0 is chance);
    - decisive_agreement: agreement among the pairs the judge did not call a tie;
    - position_bias: as in every pairwise report.
    """
    import numpy as np

    from tuneloop.data.readers import read_rows
    from tuneloop.intervals import bootstrap

    read = read_rows(pairs, fmt="preference", strict=True)
    rows = read.rows[:limit] if limit else read.rows
    flips = np.random.default_rng(seed).random(len(rows)) < 0.5
    questions, answers_a, answers_b, human = [], [], [], []
    for row, flip in zip(rows, flips, strict=True):
        chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        questions.append(conversation_text(row["prompt"]))
        answers_a.append(rejected if flip else chosen)
        answers_b.append(chosen if flip else rejected)
        human.append("b" if flip else "a")
    criteria = criteria or judge.default_criteria()
    verdicts = judge.compare(questions, answers_a, answers_b, criteria)
    said = [v.winner for v in verdicts]
    hits = [float(s == h) for s, h in zip(said, human, strict=True)]
    decisive = [i for i, s in enumerate(said) if s != "tie"]
    agreement = bootstrap(len(hits), lambda idx: float(np.mean([hits[i] for i in idx])), seed=seed)
    return {
        "judge": judge.ref,
        "pairs_file": str(pairs),
        "pairs": len(rows),
        "criteria": criteria,
        "agreement": agreement.as_dict(),
        "kappa": cohen_kappa(said, human),
        "decisive": len(decisive),
        "decisive_agreement": (float(np.mean([hits[i] for i in decisive])) if decisive else None),
        "verdicts": {k: said.count(k) for k in ("a", "b", "tie")},
        "human_labels": {k: human.count(k) for k in ("a", "b")},
        "position_bias": position_bias(verdicts),
        "judge_calls": judge.calls,
        "per_pair": [
            {"human": h, "judge": v.winner, "first": v.first_order, "second": v.second_order}
            for h, v in zip(human, verdicts, strict=True)
        ],
    }
