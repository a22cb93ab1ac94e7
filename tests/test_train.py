"""Integration: the real SFT path end to end on a tiny model (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop import registry
from tuneloop.config import recipe_from_dict
from tuneloop.evaluate import evaluate_file
from tuneloop.train.sft import train

from conftest import SUPPORT, chat, write_jsonl


def _recipe(tiny_model: Path, tmp_path: Path, **training) -> object:
    return recipe_from_dict(
        {
            "name": "tiny",
            "model": str(tiny_model),
            "data": {"train": str(SUPPORT / "train.jsonl"), "max_length": 256},
            "adapter": {"type": training.pop("adapter", "lora"), "r": 4, "alpha": 8},
            "training": {
                "max_steps": 3,
                "batch_size": 4,
                "logging_steps": 1,
                "learning_rate": 1e-2,
                **training,
            },
            "output_dir": str(tmp_path / "runs"),
        }
    )


def test_lora_run_is_recorded_and_reloadable(tiny_model: Path, tmp_path: Path) -> None:
    result = train(_recipe(tiny_model, tmp_path))
    run = registry.get_run(result.run_id)
    assert run.status == "completed"
    assert run.metrics["train_steps"] == 3 and run.metrics["train_tokens"] > 0
    assert [d.role for d in run.datasets] == ["train"]
    # the run directory holds the resolved recipe, run metadata, metrics and the adapter
    assert (result.run_dir / "recipe.yaml").is_file()
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["run_id"] == run.id and meta["data_format"] == "messages"
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)] == [1, 2, 3]
    assert (result.model_dir / "adapter_model.safetensors").is_file()
    config = json.loads((result.model_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model)
    assert not (result.run_dir / "trainer").exists()

    # LoRA B matrices start at zero; after training every one of them has moved
    from safetensors.torch import load_file

    weights = load_file(result.model_dir / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())

    # the run is a model reference: evaluate it by id
    out = evaluate_file(
        f"run:{run.id}", SUPPORT / "eval.jsonl", limit=4, max_new_tokens=4, batch_size=2
    )
    assert set(out.metrics) == {"exact_match", "rouge_l", "bleu", "perplexity"}
    assert registry.evals_for_run(run.id)[0].id == out.eval_id
    assert len(registry.eval_examples(out.eval_id)) == 4


def test_full_finetune_changes_weights(tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    result = train(_recipe(tiny_model, tmp_path, adapter="full", max_steps=2))
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(result.model_dir / "model.safetensors")
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert len(changed) == len(before), "every weight of a full fine-tune should move"


def test_malformed_training_data_stops_before_any_run(tiny_model: Path, tmp_path: Path) -> None:
    from tuneloop.errors import DataError

    bad = write_jsonl(tmp_path / "bad.jsonl", [chat("q", "a"), {"messages": "oops"}])
    recipe = _recipe(tiny_model, tmp_path)
    recipe.data.train = str(bad)
    with pytest.raises(DataError, match="line 2: 'messages' must be a list"):
        train(recipe)
    assert registry.list_runs() == []


def test_generation_and_perplexity_are_deterministic(tiny_model: Path) -> None:
    from tuneloop.data import read_conversations
    from tuneloop.evaluate import evaluate_conversations
    from tuneloop.models import load

    model, tokenizer, _ = load(str(tiny_model))
    convs = read_conversations(SUPPORT / "eval.jsonl").conversations[:5]
    a = evaluate_conversations(model, tokenizer, convs, max_new_tokens=6, batch_size=2)
    b = evaluate_conversations(model, tokenizer, convs, max_new_tokens=6, batch_size=5)
    assert [e["prediction"] for e in a.examples] == [e["prediction"] for e in b.examples]
    assert a.metrics["perplexity"] == pytest.approx(b.metrics["perplexity"], rel=1e-4)
