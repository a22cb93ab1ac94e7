"""A reward model as a scorer: pair accuracy on preference data, and a judge of two policies.

`evaluate_pairs` scores both answers of every pair of a preference file (any paired format
the data layer reads) with a reward model and reports pair accuracy with its bootstrap
interval and the reward gap's quantiles (`models.reward.pair_summary`), stored as an eval
record like any other evaluation (the per-pair scores as its examples).

`reward_compare` answers every prompt of a file with two models (greedy, the batched
generation of `generate.py`), scores both answers with the reward model and reports the
win rate of the second model over the first, a tie counting half, with a bootstrap
interval. `judge_compare` is the same report with an LLM judge's pairwise verdicts (both
orders, an order-dependent verdict is a tie) instead of a reward model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.evaluation.run import EvalOutput
from tuneloop.progress import Progress


def is_reward_ref(ref: str) -> bool:
    """Whether `ref` names a reward model (a `reward` run or a sequence-classification folder)."""
    from tuneloop.models import resolve
    from tuneloop.models.reward import is_reward_dir

    if ref.startswith("openai:"):
        return False
    try:
        resolved = resolve(ref, pull_missing=False)
    except TuneloopError:
        return False
    return not resolved.adapter and is_reward_dir(resolved.base)


def _preference_rows(data: str | Path, limit: int | None) -> tuple[Any, list[dict[str, Any]]]:
    from tuneloop.data.readers import read_rows

    read = read_rows(data, "auto", strict=True)
    bad = next((i for i, r in enumerate(read.rows) if r["kind"] != "preference"), None)
    if bad is not None:
        raise TuneloopError(
            f"{data}: row {bad} is a {read.rows[bad]['kind']!r} row; a reward model is "
            "evaluated on preference pairs (prompt/chosen/rejected or HH transcripts)"
        )
    return read, read.rows[:limit] if limit else read.rows


def evaluate_pairs(
    model_ref: str,
    data: str | Path,
    batch_size: int = 16,
    limit: int | None = None,
    seed: int = 0,
) -> EvalOutput:
    """Pair accuracy (with its bootstrap interval) and the reward-gap distribution of a
    reward model on a preference file; recorded in the registry as an evaluation.

    Metrics: `pair_accuracy`, `pair_accuracy_low`/`_high` (95%), `reward_gap_mean` and
    `reward_gap_q05` .. `q95`. Pairs are scored whole (never truncated), so pairs longer
    than the run's `max_length` (dropped in training) are scored here too.
    """
    from tuneloop import registry
    from tuneloop.models.reward import load_reward_model, pair_summary

    started = time.perf_counter()
    data_path = Path(data)
    read, rows = _preference_rows(data_path, limit)
    rm = load_reward_model(model_ref)
    sides = [[*r["prompt"], *r["chosen"]] for r in rows] + [
        [*r["prompt"], *r["rejected"]] for r in rows
    ]
    with Progress(total=len(sides), desc=f"{model_ref}: scoring", unit="answer") as bar:
        scores = rm.score(sides, batch_size, progress=bar.update)
    chosen, rejected = scores[: len(rows)], scores[len(rows) :]
    gaps = [c - r for c, r in zip(chosen, rejected, strict=True)]
    report = pair_summary(gaps, seed=seed)
    ci = report["pair_accuracy_ci"]
    metrics = {
        "pair_accuracy": report["pair_accuracy"],
        "pair_accuracy_low": ci["low"],
        "pair_accuracy_high": ci["high"],
        "reward_gap_mean": report["reward_gap_mean"],
        **{f"reward_gap_{k}": v for k, v in report["reward_gap_quantiles"].items()},
    }
    examples = [
        {
            "prompt": r["prompt"],
            "reference": r["chosen"][-1]["content"],
            "prediction": r["rejected"][-1]["content"],
            "scores": {"chosen": c, "rejected": j, "gap": c - j, "correct": float(c > j)},
        }
        for r, c, j in zip(rows, chosen, rejected, strict=True)
    ]
    dataset = registry.register_dataset(
        data_path.stem, read.rows, str(data_path.resolve()), read.format
    )
    seconds = time.perf_counter() - started
    record = registry.add_eval(
        model_ref=model_ref,
        metrics=metrics,
        examples=examples,
        settings={
            "kind": "reward pairs",
            "batch_size": batch_size,
            "limit": limit,
            "system_prompt": rm.system_prompt,
            "pairs": report,
            "note": "reference = chosen answer, prediction = rejected answer",
        },
        run_id=rm.run_id,
        dataset_id=dataset.id,
        seconds=seconds,
    )
    return EvalOutput(
        metrics=metrics,
        examples=examples,
        seconds=seconds,
        eval_id=record.id,
        dataset_id=dataset.id,
    )


def _prompts(data: str | Path, limit: int | None) -> list[list[dict[str, str]]]:
    """The prompt of every row of any file the data layer reads (a chat row's messages
    before its final answer, a pair's shared prompt)."""
    from tuneloop.data.readers import read_rows
    from tuneloop.data.records import prompt_of

    rows = read_rows(data, "auto", strict=True).rows
    prompts = [list(prompt_of(r)) for r in rows[:limit] if r["kind"] != "text"]
    if not prompts:
        raise TuneloopError(f"{data}: no prompts (chat, prompt/response or preference rows)")
    return prompts


def win_rate(outcomes: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """The mean of per-prompt outcomes (1 win, 0.5 tie, 0 loss for the tuned model) with
    its bootstrap interval, and the counts."""
    from tuneloop.intervals import mean_interval

    interval = mean_interval(list(outcomes), seed=seed)
    return {
        "win_rate": interval.value,
        "win_rate_ci": interval.as_dict(),
        "wins": sum(o == 1.0 for o in outcomes),
        "ties": sum(o == 0.5 for o in outcomes),
        "losses": sum(o == 0.0 for o in outcomes),
        "prompts": len(outcomes),
    }


def _answers(
    ref: str,
    prompts: list[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int,
    best_of: int = 1,
    picker: Any = None,
    seed: int = 0,
) -> list[str]:
    """Each prompt's answer from `ref`: greedy, or with `best_of` > 1 the one of that many
    samples (temperature 1, seeded) that the reward model `picker` scores highest."""
    from tuneloop.models import load
    from tuneloop.models.generate import generate, sample

    model, tokenizer, resolved = load(ref)
    system = ((resolved.recipe or {}).get("data") or {}).get("system_prompt")
    asked = prompts
    if system:  # a run answers with the system prompt it was trained with
        from tuneloop.data.readers import with_system_prompt

        asked = with_system_prompt(prompts, system)
    if best_of <= 1:
        with Progress(total=len(prompts), desc=f"{ref}: generating", unit="prompt") as bar:
            gens, _ = generate(
                model, tokenizer, asked, max_new_tokens, batch_size, progress=bar.update
            )
        del model
        return [g.text for g in gens]
    texts: list[list[str]] = []
    with Progress(total=len(prompts), desc=f"{ref}: best of {best_of}", unit="prompt") as bar:
        for lo in range(0, len(asked), batch_size):
            groups = sample(
                model, tokenizer, asked[lo : lo + batch_size], n=best_of,
                max_new_tokens=max_new_tokens, seed=seed + lo, batch_size=batch_size,
            )  # fmt: skip
            texts += [[s.text for s in g] for g in groups]
            bar.update(len(groups))
    del model
    convs = [
        [*p, {"role": "assistant", "content": t}]
        for p, options in zip(prompts, texts, strict=True)
        for t in options
    ]
    scores = picker.score(convs, batch_size)
    out = []
    for i, options in enumerate(texts):
        mine = scores[i * best_of : (i + 1) * best_of]
        out.append(options[max(range(best_of), key=mine.__getitem__)])
    return out


def reward_compare(
    base: str,
    tuned: str,
    data: str | Path | list[list[dict[str, str]]],
    judge: str,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    limit: int | None = None,
    seed: int = 0,
    best_of: int = 1,
    picker: str | None = None,
) -> dict[str, Any]:
    """Win rate of `tuned` over `base` on the prompts of `data` (a file, or the prompts
    themselves), judged by `judge`: a reward model (higher score wins; equal scores tie) or
    an LLM judge (pairwise, both orders).

    best_of > 1: `tuned` answers best-of-n, the sample that the reward model `picker`
    (default: the judge, when it is a reward model) scores highest, the classic baseline
    for RLHF policies. With the judge as its own picker the win rate is optimistic: the
    answers are chosen by the model that then grades them."""
    from tuneloop.models.reward import load_reward_model

    if best_of > 1 and picker is None and not is_reward_ref(judge):
        raise TuneloopError(
            "best-of-n needs a reward model to pick the best sample: give a picker "
            "(run:ID of a reward run), or judge with a reward model"
        )

    started = time.perf_counter()
    prompts = _prompts(data, limit) if isinstance(data, str | Path) else list(data)[:limit]
    reward = is_reward_ref(judge)
    rm = load_reward_model(judge) if reward else None  # a bad judge fails before generating
    base_answers = _answers(base, prompts, max_new_tokens, batch_size)
    chooser = None
    if best_of > 1:
        chooser = load_reward_model(picker) if picker else rm
    tuned_answers = _answers(tuned, prompts, max_new_tokens, batch_size, best_of, chooser, seed)
    per_prompt: list[dict[str, Any]] = []
    if rm is not None:
        convs = [
            [*p, {"role": "assistant", "content": a}]
            for p, a in zip(prompts, base_answers, strict=True)
        ]
        convs += [
            [*p, {"role": "assistant", "content": a}]
            for p, a in zip(prompts, tuned_answers, strict=True)
        ]
        scores = rm.score(convs, batch_size)
        base_scores, tuned_scores = scores[: len(prompts)], scores[len(prompts) :]
        outcomes = [
            1.0 if t > b else 0.5 if t == b else 0.0
            for b, t in zip(base_scores, tuned_scores, strict=True)
        ]
        for p, ba, ta, b, t, o in zip(
            prompts, base_answers, tuned_answers, base_scores, tuned_scores, outcomes, strict=True
        ):
            per_prompt.append(
                {
                    "prompt": p,
                    "base": ba,
                    "tuned": ta,
                    "base_score": b,
                    "tuned_score": t,
                    "outcome": o,
                }
            )
        extra: dict[str, Any] = {
            "judge_kind": "reward model",
            "mean_score": {"base": _mean(base_scores), "tuned": _mean(tuned_scores)},
        }
    else:
        from tuneloop.evaluation.judge import Judge, conversation_text, position_bias

        verdicts = Judge(judge, batch_size=batch_size, reason_tokens=0).compare(
            [conversation_text(p) for p in prompts], tuned_answers, base_answers
        )
        outcomes = [{"a": 1.0, "b": 0.0, "tie": 0.5}[v.winner] for v in verdicts]
        for p, ba, ta, v, o in zip(
            prompts, base_answers, tuned_answers, verdicts, outcomes, strict=True
        ):
            per_prompt.append(
                {"prompt": p, "base": ba, "tuned": ta, "verdict": v.winner, "outcome": o}
            )
        extra = {"judge_kind": "llm judge", "position_bias": position_bias(verdicts)}
    return {
        "base": base,
        "tuned": tuned,
        "judge": judge,
        "data": str(data) if isinstance(data, str | Path) else f"{len(prompts)} prompts",
        **win_rate(outcomes, seed),
        **extra,
        "max_new_tokens": max_new_tokens,
        "best_of": best_of,
        "picker": (picker or judge) if best_of > 1 else None,
        "seconds": time.perf_counter() - started,
        "per_prompt": per_prompt,
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
