"""Supervised fine-tuning: full, LoRA (rsLoRA, DoRA), QLoRA on a GPU, or frozen lower layers.

Flow, top to bottom: recipe -> data (read strictly, versioned, optionally split) -> run
record and directory -> model with its trainable parameters -> tokenise with the loss on
assistant turns only -> the shared training loop (checkpoints, resume, validation, early
stopping) -> save atomically -> model card -> record. The run directory's `run.json` keeps
how rows became prompts, so `tuneloop eval --model run:ID --data NEW_FILE` prompts new data
exactly as in training.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tuneloop.config import Recipe
from tuneloop.errors import DataError, RecipeError
from tuneloop.training import common
from tuneloop.training.objectives import SFT
from tuneloop.training.tokenize import (
    pack_examples,
    template_prefix_tokens,
    tokenize_conversations,
)


def sft(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    resume: str | Path | bool = False,
    on_step: Any = None,
) -> common.TrainResult:
    """Run one SFT job described by `recipe`; returns where the model went and its metrics.

    resume: True continues the latest checkpoint of the run in `run_dir` (which must be
    given); a path names one checkpoint directory.
    """
    from tuneloop.data.readers import read_conversations
    from tuneloop.models import load_tokenizer, resolve

    started = time.perf_counter()
    common.check_runtime(recipe)
    d = recipe.data
    main = common.is_main_process()  # under --nproc, only rank 0 writes records and files

    # --- data: read strictly (a malformed row stops the run before a model is loaded)
    options = common.row_options(recipe)
    train_path = common.data_path(d.train)
    fmt = "auto" if d.format == "auto" else d.format
    train_data = read_conversations(train_path, fmt, options=options)
    labels = common.label_set(recipe)
    if labels is not None:
        _check_labels(train_data.labels, labels, train_path)
    conversations, row_labels = train_data.conversations, train_data.labels
    validation, held_labels = None, None
    if d.eval:
        eval_path = common.data_path(d.eval)
        eval_data = read_conversations(eval_path, fmt, options=options)
        if labels is not None:
            _check_labels(eval_data.labels, labels, eval_path)
        validation = eval_data.conversations
    elif d.validation_split > 0:
        tr, va = common.stratified_split(row_labels, d.validation_split, recipe.training.seed)
        validation = [conversations[i] for i in va]
        held_labels = [row_labels[i] for i in va]
        conversations, row_labels = [conversations[i] for i in tr], [row_labels[i] for i in tr]
    if d.limit_per_label:
        keep = common.limit_per_label(row_labels, d.limit_per_label, recipe.training.seed)
        conversations, row_labels = [conversations[i] for i in keep], [row_labels[i] for i in keep]
    if d.fraction < 1.0:
        _, keep = common.stratified_split(row_labels, d.fraction, recipe.training.seed + 1)
        conversations, row_labels = [conversations[i] for i in keep], [row_labels[i] for i in keep]

    datasets: dict[str, int] = {}
    if main:
        datasets["train"] = common.record_data(
            d.train, train_path, train_data.conversations, train_data.format
        )
        if d.eval:
            datasets["eval"] = common.record_data(
                d.eval, eval_path, eval_data.conversations, eval_data.format
            )

    # --- run record and directory
    resolved = resolve(recipe.model, loading=recipe.model_loading)
    run, run_path = common.run_for(recipe, datasets, resolved.base, run_dir, resume)
    if labels is None and train_data.format == "classification":
        # the classes seen in the whole training file, so eval can constrain to them
        labels = sorted({lab for lab in train_data.labels if lab is not None})
    fmt_record = common.prompt_format(recipe, train_data.format, labels, train_data.conversations)
    meta = common.run_meta(
        run,
        recipe,
        resolved.base,
        datasets=datasets,
        data_format=train_data.format,
        system_prompt=d.system_prompt,
        prompt_format=fmt_record,
        validation_split=d.validation_split if not d.eval else None,
    )
    meta["train_rows"] = len(conversations)
    if main and held_labels is not None and validation is not None:
        common.write_conversations(run_path / "validation.jsonl", validation, held_labels)
        meta["validation_file"] = str(run_path / "validation.jsonl")
    if d.label_hints or d.label_rerank:
        conversations, validation = _add_label_hints(
            recipe, conversations, row_labels, validation, run_path, fmt_record, main
        )
    if d.retrieval is not None:
        conversations, validation = _add_retrieval(
            recipe, conversations, validation, run_path, fmt_record, main
        )
    timings = {"data_s": time.perf_counter() - started}
    with common.recording(run.id, main):
        if recipe.training.replay.ratio > 0:
            conversations = _with_replay(recipe, resolved, conversations, run.id, meta, main)
        t0 = time.perf_counter()
        tokenizer = load_tokenizer(resolved.base, resolved)
        prefix = template_prefix_tokens(tokenizer, d.system_prompt)
        if d.max_length <= prefix:
            raise RecipeError(
                f"data.max_length {d.max_length} is not longer than the chat template's own "
                f"prefix ({prefix} tokens before the first answer), so no answer token fits"
            )
        train_tok = tokenize_conversations(
            tokenizer, conversations, d.max_length, d.train_on == "last_assistant"
        )
        if not train_tok.examples:
            raise DataError(
                f"no training example left: {dict(train_tok.dropped)} (raise data.max_length)"
            )
        val_tok = (
            tokenize_conversations(
                tokenizer, validation, d.max_length, d.train_on == "last_assistant", False
            )
            if validation
            else None
        )
        meta["tokenization"] = {"train": train_tok.summary()}
        train_examples = train_tok.examples
        if recipe.training.packing:
            train_examples, fill = pack_examples(train_examples, d.max_length)
            meta["tokenization"]["packed"] = {"rows": len(train_examples), "fill": fill}
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
            train_examples,
            val_tok.examples if val_tok else None,
            tokenizer.pad_token_id,
            lr,
            resume,
            on_step,
            general=_general_text(recipe, resolved, tokenizer) if recipe.training.ewc else None,
        )
        if main:
            common.save_final(model, tokenizer, run_path / "model", resolved.base)
    dropped = sum(train_tok.dropped.values())
    return common.complete(
        run, recipe, run_path, meta, result, timings, started, main, dropped_rows=dropped
    )


def _general_text(recipe: Recipe, resolved: Any, tokenizer: Any) -> tuple[list[Any], str]:
    """EWC's general text: the first `training.ewc_samples` built-in replay prompts (never
    the forgetting probes), each rendered by the chat template as one example with every
    token a target, and a key naming the starting model for the Fisher's cache."""
    from tuneloop.training.replay import BUILTIN, model_key, replay_prompts
    from tuneloop.training.tokenize import Example

    prompts = replay_prompts(BUILTIN)[: recipe.training.ewc_samples]
    examples = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        ids = list(ids)[: recipe.data.max_length]
        examples.append(Example(input_ids=ids, labels=list(ids)))
    return examples, model_key(resolved, prompts, recipe.data.max_length)


def _with_replay(
    recipe: Recipe,
    resolved: Any,
    conversations: list[Any],
    run_id: int,
    meta: dict[str, Any],
    main: bool,
) -> list[Any]:
    """The task rows plus `training.replay` rows (training/replay.py); the replay set is a
    dataset version linked to the run as its `replay` data."""
    from tuneloop import registry
    from tuneloop.training import replay

    cfg = recipe.training.replay
    rows, record = replay.replay_rows(recipe, resolved, main)
    mixed = replay.mix(conversations, rows, cfg.ratio, recipe.training.seed)
    record.update(
        source=cfg.source,
        ratio=cfg.ratio,
        available=len(rows),
        task_rows=len(conversations),
        replay_rows=len(mixed) - len(conversations),
    )
    if main:
        source = f"replay:{record['key']}" if cfg.source == "self" else None
        dataset = registry.register_dataset(
            "replay-self" if cfg.source == "self" else Path(cfg.source).stem,
            rows,
            record["file"],
            "chat",
            meta={"replay": {k: record[k] for k in ("source", "prompts") if k in record}},
            source=source,
        )
        registry.link_datasets(run_id, {"replay": dataset.id})
        record["dataset_id"] = dataset.id
        meta.setdefault("datasets", {})["replay"] = dataset.id
    meta["replay"] = record
    meta["train_rows"] = len(mixed)
    return mixed


def _add_label_hints(
    recipe: Recipe,
    conversations: list[Any],
    row_labels: list[str | None],
    validation: list[Any] | None,
    run_path: Path,
    fmt_record: dict[str, Any],
    main: bool,
) -> tuple[list[Any], list[Any] | None]:
    """Build the label index; with hints, training rows are hinted leave-one-out and
    validation rows from the whole training index.

    The index is saved in the run directory (rank 0) and recorded in the prompt format, so
    evaluation of new data hints from exactly these rows.
    """
    from tuneloop.data import hints

    k = recipe.data.label_hints
    started = time.perf_counter()
    steps = recipe.data.hint_tune_steps
    index = hints.HintIndex.build(
        [hints.query_text(c) for c in conversations], row_labels, steps, recipe.training.seed
    )
    if k:
        conversations = hints.with_hints(conversations, index, k, leave_one_out=True)
        if validation:
            validation = hints.with_hints(validation, index, k)
    directory = run_path / "label_hints"
    if main:
        index.save(directory)
    record = hints.hint_record(directory, k, len(index.texts), steps)
    record["seconds"] = round(time.perf_counter() - started, 1)
    if k:
        fmt_record["label_hints"] = record
    if recipe.data.label_rerank:
        fmt_record["label_rerank"] = {
            **record,
            "k": recipe.data.label_rerank,
            "weight": recipe.data.rerank_weight,
            "temperature": hints.RETRIEVAL_TEMPERATURE,
        }
    return conversations, validation


def _add_retrieval(
    recipe: Recipe,
    conversations: list[Any],
    validation: list[Any] | None,
    run_path: Path,
    fmt_record: dict[str, Any],
    main: bool,
) -> tuple[list[Any], list[Any] | None]:
    """Index the recipe's documents and add each row's passages to its system message.

    Training rows get the passages retrieval finds for them, right or not, as requests
    will at serving time; the model learns to use good passages and to see past poor
    ones. The index is saved in the run directory and recorded in the prompt format, so
    evaluation and serving retrieve from exactly these chunks.
    """
    from tuneloop.data import retrieval
    from tuneloop.data.hints import query_text

    cfg = recipe.data.retrieval
    assert cfg is not None
    started = time.perf_counter()
    index = retrieval.RetrievalIndex.build(
        cfg.docs, max_chars=cfg.max_chars, overlap=cfg.overlap, progress=main
    )
    conversations = retrieval.with_context(
        conversations, index.search([query_text(c[:-1]) for c in conversations], cfg.k)
    )
    if validation:
        validation = retrieval.with_context(
            validation, index.search([query_text(c[:-1]) for c in validation], cfg.k)
        )
    directory = run_path / "retrieval"
    if main:
        index.save(directory)
    fmt_record["retrieval"] = {
        **retrieval.retrieval_record(directory, cfg.k),
        "chunks": len(index),
        "documents": [d["source"] for d in index.documents],
        "seconds": round(time.perf_counter() - started, 1),
    }
    return conversations, validation


def _check_labels(found: list[str | None], labels: list[str], path: str) -> None:
    allowed = set(labels)
    for i, label in enumerate(found):
        if label is not None and label not in allowed:
            raise DataError(
                f"{path}: row {i}: label {label!r} is not in data.labels "
                f"({len(allowed)} labels, e.g. {sorted(allowed)[:3]})"
            )
