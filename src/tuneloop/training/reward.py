"""Reward models: a scalar score head on a base or SFT model, trained on preference pairs
with the Bradley-Terry loss `-log σ(r_chosen - r_rejected - margin)`.

Flow, top to bottom: recipe -> preference rows (any paired format the data layer reads;
validation held out by `data.validation_split` or read from `data.eval`) -> run record ->
pairs as tokens (a pair longer than `data.max_length` is dropped and counted, never cut)
-> the causal model (a bundled name, a folder, or `run:ID` of an SFT run, merged) turned
into a one-output sequence-classification model (`models/reward.py`), with LoRA adapters
plus a fully trained head, or fully trained -> the shared loop with `RewardObjective`
(loss per pair; pair accuracy and reward gap beside it; `eval_loss`, `eval_accuracy`,
`eval_reward_gap` at validation) -> the validation pairs scored once more with the final
model: pair accuracy with its bootstrap interval and the gap's quantiles, into `run.json`
and the run's metrics -> the merged model saved in transformers' sequence-classification
format -> the epilogue every method shares.

Margins are one number for the run (`alignment.margin`): the preference readers keep only
the fields they know, so a per-row margin column would be dropped before it got here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tuneloop.config import Recipe
from tuneloop.errors import DataError, RecipeError
from tuneloop.training import common
from tuneloop.training.losses import bradley_terry
from tuneloop.training.objectives import Objective
from tuneloop.training.pairs import PairExample, collate_pairs, tokenize_pairs


class RewardObjective(Objective):
    """Bradley-Terry loss summed over pairs, normalised by pairs; statistics: `accuracy`
    (pairs with r_chosen > r_rejected) and `reward_gap` (r_chosen - r_rejected)."""

    name = "reward"
    unit = "pairs"

    def __init__(self, margin: float = 0.0) -> None:
        self.margin = margin

    def collate(self, examples: list[PairExample], pad_id: int) -> dict[str, Any]:
        batch = collate_pairs(examples, pad_id)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["input_ids"].shape[0]) // 2

    def module(self, model: Any) -> Any:
        return _loss_module()(model, self.margin)


def _loss_module() -> Any:
    import torch

    class RewardLoss(torch.nn.Module):
        """The reward model plus its pair loss, as one module (DDP/FSDP wrap it whole)."""

        def __init__(self, model: Any, margin: float) -> None:
            super().__init__()
            self.model = model
            self.margin = margin

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            rewards = out.logits[:, 0].float()
            half = rewards.shape[0] // 2  # rows 0..B-1 chosen, B..2B-1 rejected
            chosen, rejected = rewards[:half], rewards[half:]
            loss = bradley_terry(chosen, rejected, self.margin or None).sum()
            gap = (chosen - rejected).detach()
            return loss, {"accuracy": (gap > 0).sum(), "reward_gap": gap.sum()}

    return RewardLoss


def pair_gaps(model: Any, pairs: list[PairExample], pad_id: int, batch_size: int) -> list[float]:
    """r_chosen - r_rejected of each pair under `model` (no gradients), in order."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gaps: list[float] = []
    with torch.inference_mode():
        for lo in range(0, len(pairs), batch_size):
            batch = collate_pairs(pairs[lo : lo + batch_size], pad_id)
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits[:, 0]
            half = logits.shape[0] // 2
            gaps += (logits[:half] - logits[half:]).float().tolist()
    model.train(was_training)
    return gaps


def _check_recipe(recipe: Recipe) -> None:
    if recipe.adapter.type == "qlora":
        raise RecipeError(
            "method reward: adapter.type qlora is not supported (the score head needs a "
            "full-precision model); use adapter.type lora"
        )
    if recipe.training.packing:
        raise RecipeError("method reward: training.packing is for sft and pretrain; turn it off")


def train_reward(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    resume: str | Path | bool = False,
    on_step: Any = None,
) -> common.TrainResult:
    """Train a reward model as `recipe` says; returns where the model went and its metrics.

    resume: True continues the latest checkpoint of the run in `run_dir`; a path names one
    checkpoint directory.
    """
    from tuneloop.models import load_tokenizer, resolve
    from tuneloop.models.reward import pair_summary, reward_model_from_causal

    started = time.perf_counter()
    _check_recipe(recipe)  # first: on a CPU, check_runtime would refuse qlora less clearly
    common.check_runtime(recipe)
    d = recipe.data
    main = common.is_main_process()

    # --- data: read strictly before any model is loaded
    data = common.preference_data(recipe, main, ("preference",))

    # --- run record and directory
    resolved = resolve(recipe.model, loading=recipe.model_loading)
    run, run_path, meta = common.preference_run(
        recipe, data, resolved, run_dir, resume, main, keep_validation=True,
        system_prompt=d.system_prompt, margin=recipe.alignment.margin,
    )  # fmt: skip
    meta["train_pairs"] = len(data.train)
    timings = {"data_s": time.perf_counter() - started}
    report: dict[str, Any] | None = None
    with common.recording(run.id, main):
        t0 = time.perf_counter()
        tokenizer = load_tokenizer(resolved.base, resolved)
        train_tok = tokenize_pairs(tokenizer, data.train, d.max_length, d.system_prompt)
        if not train_tok.examples:
            raise DataError(
                f"no training pair left: {dict(train_tok.dropped)} (raise data.max_length)"
            )
        val_tok = (
            tokenize_pairs(tokenizer, data.validation, d.max_length, d.system_prompt, False)
            if data.validation
            else None
        )
        meta["tokenization"] = {"train": train_tok.summary()}
        if val_tok is not None:
            meta["tokenization"]["validation"] = val_tok.summary()
        model, model_info = common.prepare_model(
            recipe,
            resolved,
            convert=lambda causal: reward_model_from_causal(causal, tokenizer.pad_token_id),
            task_type="SEQ_CLS",
        )
        if recipe.adapter.type == "freeze":  # the new head always trains
            for p in model.score.parameters():
                p.requires_grad_(True)
            model_info["trainable_params"] = sum(
                p.numel() for p in model.parameters() if p.requires_grad
            )
        meta["model"] = {**model_info, "head": "score (1 output)"}
        lr = common.record_setup(recipe, run_path, meta, main)
        timings["setup_s"] = time.perf_counter() - t0

        result = common.fit(
            recipe,
            run,
            run_path,
            model,
            RewardObjective(recipe.alignment.margin),
            train_tok.examples,
            val_tok.examples if val_tok else None,
            tokenizer.pad_token_id,
            lr,
            resume,
            on_step,
        )
        if main:
            final = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
            if val_tok is not None and val_tok.examples:
                gaps = pair_gaps(
                    final, val_tok.examples, tokenizer.pad_token_id, recipe.training.batch_size * 2
                )
                report = pair_summary(gaps, seed=recipe.training.seed)
                meta["validation"] = report
                common.write_json(run_path / "run.json", meta)
            common.save_final(final, tokenizer, run_path / "model", resolved.base)
    extra: dict[str, Any] = {"dropped_pairs": sum(train_tok.dropped.values())}
    if report is not None:
        ci = report["pair_accuracy_ci"]
        extra |= {
            "eval_pair_accuracy": report["pair_accuracy"],
            "eval_pair_accuracy_low": ci["low"],
            "eval_pair_accuracy_high": ci["high"],
            "eval_reward_gap_mean": report["reward_gap_mean"],
            **{f"eval_reward_gap_{k}": v for k, v in report["reward_gap_quantiles"].items()},
        }
    return common.complete(run, recipe, run_path, meta, result, timings, started, main, **extra)
