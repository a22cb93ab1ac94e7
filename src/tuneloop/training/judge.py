"""Tuning a pairwise judge from preference labels (`method: judge`).

The bundled 135M model, asked as a judge, agreed with human HH labels 0% of the time: every
verdict flipped with the order of the answers. A judge tuned on the team's own labels (HH,
or the studio's exports) is one RLAIF and `compare --judge` can trust as far as
`tuneloop judge agreement` says.

Flow, top to bottom: recipe -> preference rows (read strictly; validation held out by
pair, with the same split and seed as the reward and DPO recipes, so both orders of a pair
stay on one side) -> run record; the held-out pairs written to the run directory for
`tuneloop judge agreement` -> every pair as two judge conversations, with the preferred
answer shown first and then second (`data/judging.py`: the exact prompt `Judge.compare`
shows, the bare verdict letter as the answer) -> SFT on the verdict token only (the shared
loop with the SFT objective) -> the tuned causal model saved like any SFT run. A local
judge decodes its verdict constrained to A / B / tie, so it reads the tuned letter as is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tuneloop.config import Recipe
from tuneloop.errors import DataError
from tuneloop.training import common
from tuneloop.training.objectives import SFT


def train_judge(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    resume: str | Path | bool = False,
    on_step: Any = None,
) -> common.TrainResult:
    """Tune a pairwise judge as `recipe` says; returns where the model went and its metrics."""
    from tuneloop.data.judging import judge_rows
    from tuneloop.models import load_tokenizer, resolve
    from tuneloop.training.tokenize import tokenize_conversations

    started = time.perf_counter()
    common.check_runtime(recipe)
    d = recipe.data
    criteria = recipe.alignment.judge_criteria
    main = common.is_main_process()

    data = common.preference_data(recipe, main, ("preference",))
    resolved = resolve(recipe.model, loading=recipe.model_loading)
    run, run_path, meta = common.preference_run(
        recipe, data, resolved, run_dir, resume, main, keep_validation=True,
        judge_criteria=criteria,
    )  # fmt: skip
    meta["train_pairs"] = len(data.train)
    train_convs = [r["messages"] for r in judge_rows(data.train, criteria)]
    val_convs = [r["messages"] for r in judge_rows(data.validation, criteria)]
    timings = {"data_s": time.perf_counter() - started}
    with common.recording(run.id, main):
        t0 = time.perf_counter()
        tokenizer = load_tokenizer(resolved.base, resolved)
        train_tok = tokenize_conversations(tokenizer, train_convs, d.max_length, True)
        if not train_tok.examples:
            raise DataError(
                f"no judge example fits data.max_length {d.max_length} (both answers and "
                f"the question are shown at once): {dict(train_tok.dropped)}"
            )
        val_tok = (
            tokenize_conversations(tokenizer, val_convs, d.max_length, True, False)
            if val_convs
            else None
        )
        meta["tokenization"] = {"train": train_tok.summary()}
        if val_tok is not None:
            meta["tokenization"]["validation"] = val_tok.summary()
        model, model_info = common.prepare_model(recipe, resolved)
        meta["model"] = model_info
        lr = common.record_setup(recipe, run_path, meta, main)
        timings["setup_s"] = time.perf_counter() - t0
        result = common.fit(
            recipe,
            run,
            run_path,
            model,
            SFT,
            train_tok.examples,
            val_tok.examples if val_tok else None,
            tokenizer.pad_token_id,
            lr,
            resume,
            on_step,
        )
        if main:
            common.save_final(model, tokenizer, run_path / "model", resolved.base)
    return common.complete(
        run,
        recipe,
        run_path,
        meta,
        result,
        timings,
        started,
        main,
        dropped_rows=sum(train_tok.dropped.values()),
    )
