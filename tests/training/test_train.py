"""Integration: the real SFT path end to end on a tiny model (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop import registry
from tuneloop.config import recipe_from_dict
from tuneloop.evaluation import evaluate_file
from tuneloop.training import train

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
    from tuneloop.evaluation import evaluate_conversations
    from tuneloop.models import load

    model, tokenizer, _ = load(str(tiny_model))
    convs = read_conversations(SUPPORT / "eval.jsonl").conversations[:5]
    a = evaluate_conversations(model, tokenizer, convs, max_new_tokens=6, batch_size=2)
    b = evaluate_conversations(model, tokenizer, convs, max_new_tokens=6, batch_size=5)
    assert [e["prediction"] for e in a.examples] == [e["prediction"] for e in b.examples]
    assert a.metrics["perplexity"] == pytest.approx(b.metrics["perplexity"], rel=1e-4)


def _tiny_recipe(tiny_model: Path, tmp_path: Path, train_file: Path, **extra: object) -> object:
    data = {"train": str(train_file), "max_length": 64, **extra.pop("data", {})}  # type: ignore[arg-type]
    return recipe_from_dict(
        {
            "name": "tiny",
            "model": str(tiny_model),
            "data": data,
            "adapter": extra.pop("adapter", {"type": "full"}),
            "training": {
                "learning_rate": 3e-3,
                "logging_steps": 5,
                "warmup_ratio": 0.0,
                **extra.pop("training", {}),
            },  # type: ignore[dict-item]
            "output_dir": str(tmp_path / "runs"),
            **extra,
        }
    )


def test_tuned_model_emits_end_of_turn_and_stops(tiny_model: Path, tmp_path: Path) -> None:
    """The end-of-turn token is trained, so generation ends by itself, not at the budget."""
    from tuneloop.models import load
    from tuneloop.models.generate import generate

    rows = [chat(f"What is the status of order {i}?", "It has shipped.") for i in range(24)]
    data = write_jsonl(tmp_path / "orders.jsonl", rows)
    # fp32: bf16 rounding on a width-64 model makes this 10-epoch toy run land elsewhere
    # (the real model stops on all 1003 Banking77 answers under bf16; docs/experiments.md)
    training = {"epochs": 10, "batch_size": 8, "learning_rate": 1e-2, "precision": "fp32"}
    recipe = _tiny_recipe(tiny_model, tmp_path, data, training=training)
    result = train(recipe)
    model, tokenizer, _ = load(f"run:{result.run_id}")
    prompts = [[{"role": "user", "content": f"What is the status of order {i}?"}] for i in (77, 5)]
    outputs, _ = generate(model, tokenizer, prompts, max_new_tokens=20, batch_size=2)
    # the answer, then the end-of-turn token: not the 20-token budget
    assert [(o.text, o.stopped) for o in outputs] == [("It has shipped.", True)] * 2


def test_eval_on_new_raw_data_uses_the_runs_prompt_format(tiny_model: Path, tmp_path: Path) -> None:
    """A classification run remembers its template: a new CSV of text,label rows is
    prompted exactly as in training with no flags."""
    import csv

    template = "Ticket: {text}\nTeam:"
    rows = [{"text": f"printer {i} is jammed", "label": "hardware"} for i in range(8)]
    rows += [{"text": f"password {i} expired", "label": "accounts"} for i in range(8)]
    train_csv = tmp_path / "tickets.csv"
    with train_csv.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    result = train(
        _tiny_recipe(
            tiny_model,
            tmp_path,
            train_csv,
            data={
                "format": "classification",
                "template": template,
                "validation_split": 0.25,
                "labels": ["hardware", "accounts"],
            },
            training={"max_steps": 2, "batch_size": 4},
        )
    )
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["prompt_format"]["template"] == template
    assert meta["prompt_format"]["labels"] == ["hardware", "accounts"]
    assert meta["train_rows"] == 12  # 2 of each label held out
    held = [json.loads(x) for x in (result.run_dir / "validation.jsonl").read_text().splitlines()]
    assert sorted(r["label"] for r in held) == ["accounts"] * 2 + ["hardware"] * 2

    new_csv = tmp_path / "new.csv"
    new_csv.write_text("text,label\nscanner is broken,hardware\n")
    out = evaluate_file(f"run:{result.run_id}", new_csv, max_new_tokens=2, batch_size=1)
    prompt = registry.eval_examples(out.eval_id)[0].prompt
    assert prompt[-1]["content"] == "Ticket: scanner is broken\nTeam:"


def test_labels_outside_the_label_set_are_an_error(tiny_model: Path, tmp_path: Path) -> None:
    from tuneloop.errors import DataError

    data = tmp_path / "d.csv"
    data.write_text("text,label\na,x\nb,y\nc,z\n")
    recipe = _tiny_recipe(
        tiny_model, tmp_path, data, data={"format": "classification", "labels": ["x", "y"]}
    )
    with pytest.raises(DataError, match=r"row 2: label 'z' is not in data.labels"):
        train(recipe)


def test_export_adapter_and_merged_model_agree(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneloop.training.export import export_run

    result = train(_recipe(tiny_model, tmp_path))
    out = export_run(f"run:{result.run_id}", tmp_path / "export")
    assert set(out) == {"adapter", "merged"}
    assert (out["adapter"] / "adapter_model.safetensors").is_file()
    card = (out["merged"] / "README.md").read_text()
    assert f"run {result.run_id}" in card and "Base model" in card and "train_loss" in card
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, out["adapter"]).eval()
    merged = AutoModelForCausalLM.from_pretrained(out["merged"], dtype=torch.float32).eval()
    ids = torch.tensor([[1, 20, 300, 4000, 5]])
    with torch.no_grad():
        a, b = with_adapter(ids).logits, merged(ids).logits
    assert torch.allclose(a, b, atol=1e-4)


def test_pretrain_on_a_folder_of_documents(tiny_model: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Fees\n\n" + "Transfers abroad cost one euro. " * 40)
    (docs / "b.html").write_text(
        "<html><body><p>" + "Cards arrive within five working days. " * 40 + "</p></body></html>"
    )
    recipe = _tiny_recipe(
        tiny_model,
        tmp_path,
        docs,
        method="pretrain",
        data={"max_length": 32, "validation_split": 0.5},
        training={"epochs": 2, "batch_size": 4, "logging_steps": 1},
    )
    result = train(recipe)
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["method"] == "pretrain" and meta["tokenization"]["documents"] == 1
    blocks = meta["tokenization"]["train"]["examples"]
    # packed blocks are full and every token is a target (no padding, no masking)
    assert meta["tokenization"]["train"]["target_tokens"] == blocks * 32
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0]
    assert any("eval_loss" in h for h in result.history)
    assert registry.get_run(result.run_id).kind == "pretrain"


def test_unset_learning_rate_follows_adapter_and_size_and_labels_are_recorded(
    tiny_model: Path, tmp_path: Path
) -> None:
    """The careful defaults: LoRA-family adapters get a larger step than full fine-tuning,
    big models a smaller one; a classification run without data.labels records the labels
    of its training file, so `eval --constrain-labels` knows them."""
    import csv

    from tuneloop.training.common import learning_rate

    def rate(adapter: str, params: int, lr: float | None = None) -> float:
        recipe = recipe_from_dict(
            {
                "name": "x",
                "model": "m",
                "data": {"train": "t.jsonl"},
                "adapter": {"type": adapter}
                | ({"train_top_layers": 1} if adapter == "freeze" else {}),
                "training": {"learning_rate": lr},
            }
        )
        return learning_rate(recipe, params)

    assert rate("lora", 135_000_000) == 1e-3
    assert rate("lora", 7_000_000_000) == 2e-4
    assert rate("full", 135_000_000) == 1e-4
    assert rate("freeze", 7_000_000_000) == 2e-5
    assert rate("full", 135_000_000, lr=5e-5) == 5e-5

    train_csv = tmp_path / "intents.csv"
    with train_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(6):
            writer.writerow([f"card {i} never came", "card_arrival"])
            writer.writerow([f"refund {i} missing", "refund_missing"])
    result = train(
        _tiny_recipe(
            tiny_model,
            tmp_path,
            train_csv,
            data={"format": "classification"},
            training={"max_steps": 1, "batch_size": 4, "learning_rate": None},
        )
    )
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["learning_rate"] == 1e-4  # full fine-tuning of a tiny model
    assert meta["prompt_format"]["labels"] == ["card_arrival", "refund_missing"]
