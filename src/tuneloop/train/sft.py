"""Supervised fine-tuning (LoRA or full) through TRL's SFTTrainer.

Flow, top to bottom: recipe -> run directory and registry record -> data (validated,
versioned) -> model -> trainer -> train -> save atomically -> record. Loss is computed on the
final assistant answer only (prompt tokens are masked), and the end-of-turn token is part
of the answer, so tuned models learn to stop.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop import __version__
from tuneloop.config import Recipe, dump_recipe, runs_dir
from tuneloop.data.formats import Conversation
from tuneloop.data.readers import read_conversations


@dataclass
class TrainResult:
    run_id: int
    run_dir: Path
    model_dir: Path
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def to_prompt_completion(conversations: list[Conversation]) -> list[dict[str, Any]]:
    """TRL's conversational prompt-completion rows: loss only on the final answer."""
    return [{"prompt": c[:-1], "completion": [c[-1]]} for c in conversations]


def _precision(recipe: Recipe) -> bool:
    import torch

    if recipe.training.precision == "bf16":
        return True
    if recipe.training.precision == "auto":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return False


def train(recipe: Recipe, run_dir: str | Path | None = None) -> TrainResult:
    """Run one SFT job described by `recipe`; returns where the model went and its metrics."""
    from tuneloop import registry
    from tuneloop.models import resolve

    started = time.perf_counter()
    timings: dict[str, float] = {}

    # --- data: read strictly (any malformed row stops the run before a model is loaded)
    train_data = read_conversations(
        recipe.data.train, recipe.data.format, recipe.data.system_prompt
    )
    eval_data = (
        read_conversations(recipe.data.eval, recipe.data.format, recipe.data.system_prompt)
        if recipe.data.eval
        else None
    )
    datasets = {
        "train": registry.register_dataset(
            Path(recipe.data.train).stem,
            train_data.conversations,
            recipe.data.train,
            train_data.format,
        ).id
    }
    if eval_data is not None and recipe.data.eval:
        datasets["eval"] = registry.register_dataset(
            Path(recipe.data.eval).stem,
            eval_data.conversations,
            recipe.data.eval,
            eval_data.format,
        ).id

    # --- run record and directory
    resolved = resolve(recipe.model)
    run = registry.start_run(
        name=recipe.name,
        kind="train",
        recipe=recipe.model_dump(mode="json"),
        base_model=recipe.model,
        datasets=datasets,
    )
    parent = Path(recipe.output_dir) if recipe.output_dir else runs_dir()
    run_path = Path(run_dir) if run_dir else parent / f"{run.id:04d}-{_slug(recipe.name)}"
    run_path.mkdir(parents=True, exist_ok=True)
    registry.update_run(run.id, run_dir=str(run_path))
    dump_recipe(recipe, run_path / "recipe.yaml")
    meta = {
        "run_id": run.id,
        "package_version": __version__,
        "git_commit": run.git_commit,
        "datasets": datasets,
        "base_model": recipe.model,
        "base_model_path": resolved.base,
        "data_format": train_data.format,
        "system_prompt": recipe.data.system_prompt,
    }
    (run_path / "run.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    timings["data_s"] = time.perf_counter() - started

    try:
        result = _train(recipe, resolved, train_data.conversations, run_path)
    except BaseException as err:
        registry.update_run(run.id, status="failed", error=f"{type(err).__name__}: {err}")
        raise
    timings.update(result.pop("timings"))
    timings["total_s"] = time.perf_counter() - started
    model_dir = run_path / "model"
    kind = "adapter" if recipe.adapter.type == "lora" else "full"
    registry.add_model(
        name=f"{recipe.name}-{run.id}",
        kind=kind,
        path=str(model_dir),
        base_model=recipe.model,
        run_id=run.id,
        step=result["history"][-1]["step"] if result["history"] else None,
    )
    registry.update_run(run.id, status="completed", metrics=result["metrics"], timings=timings)
    return TrainResult(
        run_id=run.id,
        run_dir=run_path,
        model_dir=model_dir,
        metrics=result["metrics"],
        history=result["history"],
        seconds=timings["total_s"],
    )


def _train(
    recipe: Recipe,
    resolved: Any,
    conversations: list[Conversation],
    run_path: Path,
) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from tuneloop.models import load_tokenizer
    from tuneloop.train.callbacks import MetricsLogCallback, ProgressCallback

    t0 = time.perf_counter()
    torch.manual_seed(recipe.training.seed)
    tokenizer = load_tokenizer(resolved.base)
    model = AutoModelForCausalLM.from_pretrained(resolved.base, dtype=torch.float32)
    bf16 = _precision(recipe)
    peft_config = None
    if recipe.adapter.type == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=recipe.adapter.r,
            lora_alpha=recipe.adapter.alpha,
            lora_dropout=recipe.adapter.dropout,
            target_modules=recipe.adapter.target_modules,
            task_type="CAUSAL_LM",
        )
    t = recipe.training
    args = SFTConfig(
        output_dir=str(run_path / "trainer"),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,
        save_strategy="no",
        eval_strategy="no",
        report_to=t.report_to or "none",
        bf16=bf16,
        fp16=False,
        activation_checkpointing=t.gradient_checkpointing,
        max_length=recipe.data.max_length,
        completion_only_loss=True,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        seed=t.seed,
        data_seed=t.seed,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(to_prompt_completion(conversations)),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[ProgressCallback(), logger := MetricsLogCallback(run_path / "metrics.jsonl")],
    )
    trainer.remove_callback(PrinterCallback)  # our progress bar and metrics.jsonl replace it
    timings = {"setup_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    output = trainer.train()
    timings["train_s"] = time.perf_counter() - t1
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    metrics = {
        "train_loss": float(output.training_loss),
        "train_steps": int(trainer.state.global_step),
        "train_tokens": tokens,
        "train_tokens_per_s": tokens / max(timings["train_s"], 1e-9),
    }
    losses = [h["loss"] for h in logger.history if "loss" in h]
    if losses:
        metrics["final_loss"] = float(losses[-1])
    _save_atomically(trainer.model, tokenizer, run_path / "model", resolved.base)
    shutil.rmtree(run_path / "trainer", ignore_errors=True)
    return {"metrics": metrics, "history": logger.history, "timings": timings}


def _save_atomically(model: Any, tokenizer: Any, target: Path, base_path: str) -> None:
    """Save to a sibling temp dir then rename, so `target` is never half-written."""
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    cfg = staging / "adapter_config.json"
    if cfg.is_file():  # point the adapter at the base it was trained on, by path
        data = json.loads(cfg.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = base_path
        cfg.write_text(json.dumps(data, indent=2), encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
