"""Continued pretraining: adapt a model to a domain by next-token prediction on raw text.

Flow: recipe -> documents (a folder of .txt/.md/.html, or a file of text rows) -> run record
-> model -> documents tokenised, joined by EOS and packed into `data.max_length` blocks (no
padding; the loss is on every token) -> the shared loop -> save -> model card -> record.
Blocks cross document boundaries, as in standard causal-LM pretraining; the EOS between
documents tells the model where one ends.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tuneloop.config import Recipe
from tuneloop.errors import DataError
from tuneloop.training import common
from tuneloop.training.objectives import PRETRAIN
from tuneloop.training.tokenize import pack_documents


def _texts(path: str) -> tuple[list[str], str]:
    from tuneloop.data.readers import read_rows

    result = read_rows(path, "text", strict=True)
    texts = [r["text"] for r in result.rows if r.get("kind") == "text" and r.get("text")]
    if not texts:
        raise DataError(f"{path}: no text documents (pretrain reads .txt/.md/.html or text rows)")
    return texts, result.format


def pretrain(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    resume: str | Path | bool = False,
    on_step: Any = None,
) -> common.TrainResult:
    """Run one continued-pretraining job; returns a `common.TrainResult`."""
    from tuneloop.models import load_tokenizer, resolve

    started = time.perf_counter()
    common.check_runtime(recipe)
    d = recipe.data
    main = common.is_main_process()  # under --nproc, only rank 0 writes records and files
    train_path = common.data_path(d.train)
    texts, fmt = _texts(train_path)
    eval_texts = None
    if d.eval:
        eval_path = common.data_path(d.eval)
        eval_texts, _ = _texts(eval_path)
    elif d.validation_split > 0:
        _, va = common.stratified_split(
            [None] * len(texts), d.validation_split, recipe.training.seed
        )
        held = set(va)
        eval_texts = [t for i, t in enumerate(texts) if i in held]
        texts = [t for i, t in enumerate(texts) if i not in held]
    datasets: dict[str, int] = {}
    if main:
        datasets["train"] = common.record_data(
            d.train, train_path, [{"text": t} for t in texts], fmt
        )
    resolved = resolve(recipe.model, loading=recipe.model_loading)
    run, run_path = common.run_for(recipe, datasets, resolved.base, run_dir, resume)
    meta = common.run_meta(
        run, recipe, resolved.base, datasets=datasets, data_format="text", prompt_format=None
    )
    timings = {"data_s": time.perf_counter() - started}
    with common.recording(run.id, main):
        tokenizer = load_tokenizer(resolved.base, resolved)
        packed = pack_documents(tokenizer, texts, d.max_length)
        if not packed.examples:
            raise DataError(
                f"{train_path}: {packed.summary()['tokens']} tokens is less than one block of "
                f"data.max_length {d.max_length}"
            )
        val = pack_documents(tokenizer, eval_texts, d.max_length) if eval_texts else None
        meta["tokenization"] = {"train": packed.summary(), "documents": len(texts)}
        model, info = common.prepare_model(recipe, resolved)
        meta["model"] = info
        lr = common.record_setup(recipe, run_path, meta, main)
        result = common.fit(
            recipe,
            run,
            run_path,
            model,
            PRETRAIN,
            packed.examples,
            val.examples if val else None,
            tokenizer.pad_token_id,
            lr,
            resume,
            on_step,
            desc="pretraining",
        )
        if main:
            common.save_final(model, tokenizer, run_path / "model", resolved.base)
    return common.complete(run, recipe, run_path, meta, result, timings, started, main)
