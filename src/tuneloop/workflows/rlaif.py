"""RLAIF: preference pairs from the policy's own answers, labelled by a judge, then DPO.

`tuneloop rlaif RECIPE` takes a preference recipe (`dpo`, `simpo` or `orpo`) whose
`data.train` holds prompts (any rows tuneloop reads: chats, prompt/response, preference
rows) and whose `rlaif` section names the judge:

1. hold out `rlaif.heldout` of the prompts (seeded), never used for pairs;
2. sample `rlaif.samples_per_prompt` answers per training prompt from the policy
   (`model`, e.g. the SFT run) with the rollout engine PPO and GRPO use;
3. label: an LLM judge compares every two distinct answers in both orders; a verdict that
   changes with the order, or a tie, gives no pair and is counted. A reward model scores
   every answer; the best and the worst answer of a prompt form its pair, unless they score
   the same;
4. the pairs become a dataset version (`rlaif-pairs`) whose parent is the prompts' version
   and whose metadata names the policy, the judge and the counts;
5. the recipe's method trains on them (a normal run, reference = the policy);
6. the held-out prompts are answered by the policy and the new run, and the same judge gives
   the win rate of the new policy (ties count half) with its bootstrap interval.

Everything lands in the output folder (`rlaif.json`, `pairs.jsonl`, `heldout.jsonl`), is
written atomically, and is in the registry.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.config import Recipe
from tuneloop.errors import DataError, RecipeError
from tuneloop.files import atomic_write_json, atomic_write_jsonl
from tuneloop.progress import Progress
from tuneloop.results import Serializable

PAIRED_METHODS = ("dpo", "simpo", "orpo")


@dataclass
class RlaifResult(Serializable):
    """What one RLAIF round made: the pairs, the run trained on them, the judged win rate."""

    directory: Path
    run_id: int
    pairs_dataset_id: int
    counts: dict[str, int]
    win_rate: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)


def check_recipe(recipe: Recipe) -> None:
    """Refuse what cannot run before any model is loaded, with one clear line."""
    if recipe.method not in PAIRED_METHODS:
        raise RecipeError(
            f"rlaif trains with a pairwise preference method ({', '.join(PAIRED_METHODS)}); "
            f"the recipe says method: {recipe.method}"
        )
    if not recipe.rlaif.judge:
        raise RecipeError(
            "rlaif needs a judge: set rlaif.judge to a model (asked pairwise), run:ID of a "
            "judge or reward run, or openai:MODEL"
        )


def _policy_answers(
    ref: str, prompts: list[list[dict[str, str]]], recipe: Recipe, batch_size: int
) -> list[list[str]]:
    """k sampled answers per prompt from the policy, with the system prompt it was trained
    with (a run's), seeded by `training.seed`."""
    from tuneloop.data.prompting import Prompting
    from tuneloop.models import load
    from tuneloop.models.generate import sample

    cfg = recipe.rlaif
    model, tokenizer, resolved = load(ref)
    model.eval()
    asked = Prompting.of(resolved).with_system(prompts)  # as the run was trained
    out: list[list[str]] = []
    step = batch_size
    with Progress(total=len(prompts), desc=f"{ref}: sampling", unit="prompt") as bar:
        for lo in range(0, len(asked), step):
            batch = sample(
                model,
                tokenizer,
                asked[lo : lo + step],
                n=cfg.samples_per_prompt,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                seed=recipe.training.seed + lo,
                batch_size=step,
            )
            out += [[s.text for s in answers] for answers in batch]
            bar.update(len(batch))
    del model
    return out


def label_pairs(
    judge: str,
    prompts: list[list[dict[str, str]]],
    answers: list[list[str]],
    criteria: str | None = None,
    batch_size: int = 8,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Preference rows from the judge's verdicts, and the counts of what gave no pair."""
    from tuneloop.evaluation.reward import is_reward_ref

    counts = {"prompts": len(prompts), "answers": sum(len(a) for a in answers)}
    rows: list[dict[str, Any]] = []
    if is_reward_ref(judge):
        from tuneloop.models.reward import load_reward_model

        rm = load_reward_model(judge)
        convs = [
            [*p, {"role": "assistant", "content": a}]
            for p, options in zip(prompts, answers, strict=True)
            for a in options
        ]
        scores = rm.score(convs, batch_size)
        counts |= {"comparisons": len(prompts), "equal_scores": 0, "identical_answers": 0}
        start = 0
        for p, options in zip(prompts, answers, strict=True):
            scored = list(zip(scores[start : start + len(options)], options, strict=True))
            start += len(options)
            best, worst = max(scored), min(scored)
            if best[1] == worst[1]:
                counts["identical_answers"] += 1
            elif best[0] == worst[0]:
                counts["equal_scores"] += 1
            else:
                rows.append(_pair_row(p, best[1], worst[1], best[0] - worst[0]))
        return rows, counts

    from tuneloop.data.judging import conversation_text
    from tuneloop.evaluation.judge import Judge

    questions, first, second, owner = [], [], [], []
    identical = 0
    for i, (p, options) in enumerate(zip(prompts, answers, strict=True)):
        for a, b in itertools.combinations(range(len(options)), 2):
            if options[a].strip() == options[b].strip():
                identical += 1
                continue
            questions.append(conversation_text(p))
            first.append(options[a])
            second.append(options[b])
            owner.append(i)
    verdicts = (
        Judge(judge, batch_size=batch_size, reason_tokens=0).compare(
            questions, first, second, criteria
        )
        if questions
        else []
    )
    counts |= {
        "comparisons": len(questions),
        "identical_answers": identical,
        "order_dependent": sum(not v.consistent for v in verdicts),
        "ties": sum(v.consistent and v.winner == "tie" for v in verdicts),
    }
    for i, a, b, v in zip(owner, first, second, verdicts, strict=True):
        if v.consistent and v.winner in ("a", "b"):
            chosen, rejected = (a, b) if v.winner == "a" else (b, a)
            rows.append(_pair_row(prompts[i], chosen, rejected, None))
    return rows, counts


def _pair_row(
    prompt: list[dict[str, str]], chosen: str, rejected: str, margin: float | None
) -> dict[str, Any]:
    row: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if margin is not None:
        row["score_margin"] = round(float(margin), 6)
    return row


def rlaif(
    recipe: Recipe,
    out: str | Path | None = None,
    *,
    compare_tokens: int | None = None,
    batch_size: int = 8,
) -> RlaifResult:
    """One RLAIF round as the module docstring describes; returns what it made."""
    from tuneloop import registry
    from tuneloop.data.readers import read_rows
    from tuneloop.data.records import prompt_of
    from tuneloop.evaluation.reward import reward_compare
    from tuneloop.training import train
    from tuneloop.training.common import data_path, stratified_split

    check_recipe(recipe)
    cfg = recipe.rlaif
    started = time.perf_counter()
    directory = Path(out) if out else Path(f"rlaif-{recipe.name}")
    directory.mkdir(parents=True, exist_ok=True)

    # --- prompts, strictly read; held-out ones never become pairs
    source = data_path(recipe.data.train)
    read = read_rows(source, "auto", strict=True)
    prompts = [list(prompt_of(r)) for r in read.rows if r["kind"] != "text"]
    if not prompts:
        raise DataError(f"{source}: no prompts (chat, prompt/response or preference rows)")
    parent = registry.register_dataset(Path(source).stem, read.rows, source, read.format)
    keep, held = (
        stratified_split([None] * len(prompts), cfg.heldout, recipe.training.seed)
        if cfg.heldout > 0
        else (list(range(len(prompts))), [])
    )
    train_prompts = [prompts[i] for i in keep][: cfg.max_prompts]
    heldout = [prompts[i] for i in held]
    if heldout:  # a record of which prompts were held out (the conversation before an answer)
        atomic_write_jsonl(directory / "heldout.jsonl", ({"prompt": p} for p in heldout))

    # --- sample, label, version
    t0 = time.perf_counter()
    answers = _policy_answers(recipe.model, train_prompts, recipe, batch_size)
    sample_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows, counts = label_pairs(cfg.judge, train_prompts, answers, cfg.criteria, batch_size)
    label_s = time.perf_counter() - t0
    counts["pairs"] = len(rows)
    if not rows:
        raise DataError(
            f"the judge {cfg.judge} gave no usable pair: {counts} (an order-dependent judge "
            "labels nothing; check it with `tuneloop judge agreement`, or use a reward model)"
        )
    pairs_path = directory / "pairs.jsonl"
    atomic_write_jsonl(pairs_path, rows)
    lineage = {
        "made_by": "rlaif",
        "policy": recipe.model,
        "judge": cfg.judge,
        "criteria": cfg.criteria,
        "samples_per_prompt": cfg.samples_per_prompt,
        "temperature": cfg.temperature,
        "counts": counts,
    }
    # registered as the rows the preference reader makes of the file, under the file's own
    # source, so the training run's registration of the same file is this very version
    written = read_rows(pairs_path, "auto", strict=True)
    pairs_ds = registry.register_dataset(
        pairs_path.stem,
        written.rows,
        str(pairs_path),
        written.format,
        meta=lineage,
        parent_id=parent.id,
        source=registry.dataset_source(str(pairs_path)),
    )

    # --- train on the pairs (a normal run; its reference is the policy)
    dpo_recipe = recipe.model_copy(
        update={"data": recipe.data.model_copy(update={"train": str(pairs_path)})}
    )
    trained = train(dpo_recipe)

    # --- the judge's win rate of the new policy over the old, on held-out prompts
    win: dict[str, Any] = {}
    if heldout:
        win = reward_compare(
            recipe.model,
            f"run:{trained.run_id}",
            heldout,
            cfg.judge,
            max_new_tokens=compare_tokens or cfg.max_new_tokens,
            batch_size=batch_size,
            seed=recipe.training.seed,
        )
    report = {
        "recipe": recipe.name,
        "policy": recipe.model,
        "judge": cfg.judge,
        "prompts": {"train": len(train_prompts), "heldout": len(heldout)},
        "counts": counts,
        "pairs_file": str(pairs_path),
        "pairs_dataset_id": pairs_ds.id,
        "prompts_dataset_id": parent.id,
        "run_id": trained.run_id,
        "run_metrics": trained.metrics,
        "win_rate": {k: v for k, v in win.items() if k != "per_prompt"},
        "seconds": {
            "sampling": round(sample_s, 1),
            "labelling": round(label_s, 1),
            "total": round(time.perf_counter() - started, 1),
        },
    }
    if win:
        atomic_write_json(directory / "heldout_answers.json", win)
    atomic_write_json(directory / "rlaif.json", report)
    return RlaifResult(directory, trained.run_id, pairs_ds.id, counts, report["win_rate"], report)
