"""Reward models (`method: reward`): the Bradley-Terry objective by value, pooling and token
ids as in training, learning a marker word, exact resume, dropped pairs, clear errors."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tuneloop import registry
from tuneloop.errors import DataError, ModelError, RecipeError, TrainingInterrupted
from tuneloop.training import train
from tuneloop.training.reward import RewardObjective

from conftest import (
    assert_one_line_error,
    marker_pairs,
    reward_recipe,
    run_cli,
    write_jsonl,
)


def _fixed(values: list[float]) -> Any:
    """A stand-in model whose reward of row i is `values[i]` (the objective by hand)."""
    from types import SimpleNamespace

    import torch

    class Fixed(torch.nn.Module):
        def forward(self, input_ids: Any, attention_mask: Any, use_cache: bool = False) -> Any:
            return SimpleNamespace(logits=torch.tensor(values)[: input_ids.shape[0], None])

    return Fixed()


def test_bradley_terry_objective_by_hand() -> None:
    import torch

    # pairs (chosen, rejected): (2.0, 0.5) and (-1.0, 0.0); margin 0.5
    module = RewardObjective(margin=0.5).module(_fixed([2.0, -1.0, 0.5, 0.0]))
    ids = torch.ones((4, 3), dtype=torch.long)
    loss, stats = module(input_ids=ids, attention_mask=ids)
    by_hand = math.log(1 + math.exp(-(1.5 - 0.5))) + math.log(1 + math.exp(-(-1.0 - 0.5)))
    assert float(loss) == pytest.approx(by_hand, abs=1e-6)  # 2.014669...
    assert float(stats["accuracy"]) == 1.0  # one of the two pairs is ranked right
    assert float(stats["reward_gap"]) == pytest.approx(1.5 + -1.0)
    assert RewardObjective().count({"input_ids": ids}) == 2  # normalised by pairs
    no_margin, _ = RewardObjective().module(_fixed([2.0, -1.0, 0.5, 0.0]))(
        input_ids=ids, attention_mask=ids
    )
    assert float(no_margin) == pytest.approx(
        math.log(1 + math.exp(-1.5)) + math.log(1 + math.exp(1.0)), abs=1e-6
    )


def test_scores_use_training_token_ids_and_right_padding_pools_the_last_token(
    tiny_model: Path, tmp_path: Path
) -> None:
    from tuneloop.data.readers import read_rows
    from tuneloop.models import load_model, load_tokenizer, resolve
    from tuneloop.models.reward import reward_model_from_causal, score, score_ids
    from tuneloop.training.pairs import collate_pairs, tokenize_pairs

    tokenizer = load_tokenizer(str(tiny_model))
    causal = load_model(resolve(str(tiny_model)))
    model = reward_model_from_causal(causal, tokenizer.pad_token_id)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    for name, p in causal.model.state_dict().items():  # the decoder came across unchanged
        assert (model.model.state_dict()[name] == p).all(), name
    rows = [
        {"prompt": "hi", "chosen": "a much longer answer than the other one", "rejected": "no"},
        {"prompt": "a longer question here", "chosen": "yes", "rejected": "maybe so"},
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    pref = read_rows(path, strict=True).rows
    pairs = tokenize_pairs(tokenizer, pref, 256, "Be brief.", progress=False).examples
    convs = [[*r["prompt"], *r["chosen"]] for r in pref] + [
        [*r["prompt"], *r["rejected"]] for r in pref
    ]
    ids = [score_ids(tokenizer, c, "Be brief.") for c in convs]
    assert ids == [p.chosen.input_ids for p in pairs] + [p.rejected.input_ids for p in pairs]
    batched = score(model, tokenizer, convs, batch_size=4, system_prompt="Be brief.")
    alone = [score(model, tokenizer, [c], system_prompt="Be brief.")[0] for c in convs]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert len(set(round(x, 6) for x in alone)) == 4  # not a constant
    # the training batch (right-padded, chosen first) gives the same rewards
    import torch

    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.logits[:, 0].tolist() == pytest.approx(alone, abs=1e-5)


def test_reward_model_learns_the_marker_and_is_a_scorer(tiny_model: Path, tmp_path: Path) -> None:
    from tuneloop.models import load, resolve
    from tuneloop.models.reward import load_reward_model

    recipe = reward_recipe(tiny_model, tmp_path, training={"max_steps": 25, "eval_steps": 25})
    result = train(recipe)
    evals = [h for h in result.history if "eval_loss" in h]
    assert evals and {"eval_accuracy", "eval_reward_gap"} <= set(evals[-1])
    assert result.metrics["eval_pair_accuracy"] >= 0.8  # chance is 0.5 (15 held-out pairs)
    meta = json.loads((result.run_dir / "run.json").read_text())
    val = meta["validation"]
    assert val["pairs"] == 15 and val["pair_accuracy"] == result.metrics["eval_pair_accuracy"]
    held = [json.loads(line) for line in Path(meta["validation_file"]).read_text().splitlines()]
    assert len(held) == 15 and {"prompt", "chosen", "rejected"} <= set(held[0])
    ci = val["pair_accuracy_ci"]
    assert ci["level"] == 0.95 and ci["low"] <= val["pair_accuracy"] <= ci["high"]
    q = val["reward_gap_quantiles"]
    assert q["q05"] <= q["q25"] <= q["q50"] <= q["q75"] <= q["q95"] and q["q50"] > 0
    # saved merged, in transformers' sequence-classification format, recorded as a reward model
    config = json.loads((result.model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert not (result.model_dir / "adapter_config.json").exists()
    assert [m.kind for m in registry.models_for_run(result.run_id)] == ["reward"]
    ref = f"run:{result.run_id}"
    assert resolve(ref).base == str(result.model_dir)
    rm = load_reward_model(ref)
    fresh = marker_pairs(10, seed=7)
    good = rm.score(
        [
            [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["chosen"]},
            ]
            for r in fresh
        ]
    )
    bad = rm.score(
        [
            [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["rejected"]},
            ]
            for r in fresh
        ]
    )
    assert sum(g > b for g, b in zip(good, bad, strict=True)) >= 8
    with pytest.raises(ModelError, match="is a reward model"):
        load(ref)  # it cannot generate


def test_resume_continues_the_same_curve(tiny_model: Path, tmp_path: Path) -> None:
    adapter = {"dropout": 0.1}  # resume must restore the random number generators too
    settings = {"max_steps": 6, "save_steps": 100, "batch_size": 4}
    full = train(reward_recipe(tiny_model, tmp_path, adapter=adapter, training=settings))

    def interrupt(step: int, model: Any) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    recipe = reward_recipe(tiny_model, tmp_path, adapter=adapter, training=settings)
    run_dir = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted, match="saved checkpoint at step 3"):
        train(recipe, run_dir=run_dir, on_step=interrupt)
    resumed = train(recipe, run_dir=run_dir, resume=True)
    a = {h["step"]: h["loss"] for h in full.history if "loss" in h}
    b = {h["step"]: h["loss"] for h in resumed.history if "loss" in h}
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert b[step] == pytest.approx(a[step], abs=1e-4), step
    assert resumed.metrics["eval_pair_accuracy"] == pytest.approx(
        full.metrics["eval_pair_accuracy"]
    )


def test_pairs_cut_by_max_length_are_dropped_and_counted(tiny_model: Path, tmp_path: Path) -> None:
    rows = marker_pairs(12)
    rows += [{"prompt": "word " * 80, "chosen": "fine", "rejected": "no"} for _ in range(3)]
    write_jsonl(tmp_path / "long.jsonl", rows)
    recipe = reward_recipe(
        tiny_model,
        tmp_path,
        data={"train": str(tmp_path / "long.jsonl"), "validation_split": 0.0},
        training={"max_steps": 1},
    )
    result = train(recipe)
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["tokenization"]["train"]["dropped"] == {"longer than max_length": 3}
    assert meta["tokenization"]["train"]["pairs"] == 12
    assert result.metrics["dropped_pairs"] == 3
    assert "validation" not in meta  # no validation split, no validation report


def test_bad_reward_recipes_fail_with_one_clear_line(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="qlora is not supported"):
        train(reward_recipe(tiny_model, tmp_path, adapter={"type": "qlora"}))
    kto = [{"prompt": "q", "completion": "a", "label": True}] * 4
    write_jsonl(tmp_path / "kto.jsonl", kto)
    with pytest.raises(DataError, match="method reward trains on preference rows"):
        train(reward_recipe(tiny_model, tmp_path, data={"train": str(tmp_path / "kto.jsonl")}))
    import yaml

    bad = reward_recipe(tiny_model, tmp_path).model_dump(mode="json")
    bad["alignment"]["margin"] = -1.0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert_one_line_error(run_cli("train", str(path)), "alignment.margin")
