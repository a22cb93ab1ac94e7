"""The training loop's guarantees, on a tiny model: invariants, resume, guards, checkpoints."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tuneloop import registry
from tuneloop.config import recipe_from_dict
from tuneloop.errors import RecipeError, TrainingError, TrainingInterrupted
from tuneloop.train import train
from tuneloop.train.loop import NonFiniteLoss, batch_plan

from conftest import SUPPORT, chat, write_jsonl


def _recipe(tiny_model: Path, tmp_path: Path, data: dict | None = None, **sections: Any) -> Any:
    # fp32: these tests check exact arithmetic invariants (1e-4), which bf16 rounding (on by
    # default on CPUs with native bf16) would blur; bf16 has its own test below
    training = {
        "precision": "fp32",
        "max_steps": 4,
        "batch_size": 4,
        "logging_steps": 1,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.0,
        **sections.pop("training", {}),
    }
    return recipe_from_dict(
        {
            "name": "tiny",
            "model": str(tiny_model),
            "data": {"train": str(SUPPORT / "train.jsonl"), "max_length": 128, **(data or {})},
            "adapter": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
            | sections.pop("adapter", {}),
            "training": training,
            "output_dir": str(tmp_path / "runs"),
            **sections,
        }
    )


def _losses(history: list[dict[str, Any]]) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def test_batch_plan_is_deterministic_and_covers_every_row() -> None:
    lengths = [(i * 37) % 101 for i in range(203)]
    a = batch_plan(lengths, 8, seed=3, epoch=1, group_by_length=True)
    assert a == batch_plan(lengths, 8, seed=3, epoch=1, group_by_length=True)
    assert a != batch_plan(lengths, 8, seed=3, epoch=2, group_by_length=True)
    assert sorted(i for b in a for i in b) == list(range(203))
    assert lengths[a[0][0]] == max(lengths)  # the longest batch first
    plain = batch_plan(lengths, 8, seed=3, epoch=1, group_by_length=False)
    assert sorted(i for b in plain for i in b) == list(range(203))


def test_bf16_autocast_trains_like_fp32(tiny_model: Path, tmp_path: Path) -> None:
    """The fast path (bf16 autocast, auto-selected on CPUs with native bf16) follows the
    fp32 loss curve, and its trainable weights and optimizer stay fp32."""
    from safetensors.torch import load_file

    settings = {"max_steps": 4, "learning_rate": 1e-3}
    exact = train(_recipe(tiny_model, tmp_path / "a", training=settings))
    fast = train(_recipe(tiny_model, tmp_path / "b", training={**settings, "precision": "bf16"}))
    a, b = _losses(exact.history), _losses(fast.history)
    assert a.keys() == b.keys() == {1, 2, 3, 4}
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=2e-2)
    assert a != b  # bf16 really ran: the losses are close, not identical
    wa = load_file(exact.model_dir / "adapter_model.safetensors")
    wb = load_file(fast.model_dir / "adapter_model.safetensors")
    import torch

    for name in wa:
        assert wb[name].dtype == wa[name].dtype == torch.float32
        if "lora_B" in name:  # B starts at zero, so B is the learned update itself
            cos = torch.nn.functional.cosine_similarity(wa[name].flatten(), wb[name].flatten(), 0)
            assert cos > 0.99, (name, float(cos))


def test_batch_8_equals_batch_1_with_8_accumulation_steps(tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    # no length grouping: both runs must see the same 8 rows per optimizer step
    common = {"max_steps": 3, "group_by_length": False, "learning_rate": 1e-3}
    big = train(_recipe(tiny_model, tmp_path, training={**common, "batch_size": 8}))
    small = train(
        _recipe(
            tiny_model,
            tmp_path,
            training={**common, "batch_size": 1, "gradient_accumulation_steps": 8},
        )
    )
    a, b = _losses(big.history), _losses(small.history)
    assert a.keys() == b.keys() == {1, 2, 3}
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-4, abs=1e-5)
    wa = load_file(big.model_dir / "adapter_model.safetensors")
    wb = load_file(small.model_dir / "adapter_model.safetensors")
    for name in wa:
        assert (wa[name] - wb[name]).abs().max() < 1e-4, name


@pytest.mark.parametrize(
    ("adapter", "trained", "frozen"),
    [
        (
            {"type": "lora"},
            ["lora_A", "lora_B"],
            ["q_proj.base_layer", "embed_tokens", "mlp.up_proj.base"],
        ),
        (
            {"type": "freeze", "train_top_layers": 1},
            ["layers.1.", "model.norm"],
            ["layers.0.", "embed_tokens"],
        ),
        ({"type": "full"}, ["layers.0.", "layers.1.", "embed_tokens", "norm"], []),
        (
            {"type": "lora", "dora": True, "rslora": True},
            ["lora_A", "lora_B", "lora_magnitude"],
            ["embed_tokens"],
        ),
    ],
)
def test_every_trainable_parameter_moves_and_no_frozen_one_does(
    tiny_model: Path, tmp_path: Path, adapter: dict, trained: list[str], frozen: list[str]
) -> None:
    import torch

    snapshots: dict[str, dict[str, torch.Tensor]] = {}

    def watch(step: int, model: Any) -> None:
        snapshots[str(step)] = {n: p.detach().clone() for n, p in model.named_parameters()}

    recipe = _recipe(tiny_model, tmp_path, adapter=adapter, training={"max_steps": 2})
    from tuneloop.models.resolve import resolve
    from tuneloop.train.common import prepare_model

    model, info = prepare_model(recipe, resolve(str(tiny_model)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert info["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    train(recipe, on_step=watch)
    after = snapshots["2"]
    assert set(after) == set(before)
    for name in before:
        moved = not torch.equal(before[name], after[name])
        assert moved == (name in trainable), f"{name}: moved={moved}"
    for part in trained:
        assert any(part in n for n in trainable), part
    for part in frozen:
        hits = [n for n in before if part in n]
        assert hits and not any(n in trainable for n in hits), part


def test_sigterm_saves_and_resume_continues_the_same_curve(
    tiny_model: Path, tmp_path: Path
) -> None:
    # dropout on, so resume must also restore the random number generators
    adapter = {"dropout": 0.1}
    settings = {"max_steps": 6, "save_steps": 100}
    full = train(_recipe(tiny_model, tmp_path, adapter=adapter, training=settings))

    def interrupt(step: int, model: Any) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    recipe = _recipe(tiny_model, tmp_path / "b", adapter=adapter, training=settings)
    run_dir = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted, match="SIGTERM received: saved checkpoint at step 3"):
        train(recipe, run_dir=run_dir, on_step=interrupt)
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-000003"]
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert registry.get_run(run_id).status == "interrupted"
    assert not (run_dir / "model").exists()

    resumed = train(recipe, run_dir=run_dir, resume=True)
    assert resumed.run_id == run_id and registry.get_run(run_id).status == "completed"
    a, b = _losses(full.history), _losses(resumed.history)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]  # one clean curve in metrics.jsonl
    for step in range(1, 7):
        assert b[step] == pytest.approx(a[step], abs=1e-4), step
    steps = [e["step"] for e in registry.run_metrics(run_id) if "loss" in e]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_missing_or_corrupt_checkpoint_is_an_error(tiny_model: Path, tmp_path: Path) -> None:
    recipe = _recipe(tiny_model, tmp_path, training={"max_steps": 4, "save_steps": 2})
    run_dir = tmp_path / "run"
    train(recipe, run_dir=run_dir)
    ckpt = run_dir / "checkpoints" / "step-000002"
    assert (ckpt / "manifest.json").is_file()
    with (ckpt / "weights.pt").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"garbage")
    with pytest.raises(TrainingError, match=r"weights\.pt is corrupt"):
        train(recipe, run_dir=run_dir, resume=ckpt)
    # a run that stopped before its first checkpoint cannot be resumed (no silent restart)
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "run.json").write_text((run_dir / "run.json").read_text())
    with pytest.raises(TrainingError, match="no checkpoint to resume from"):
        train(recipe, run_dir=empty, resume=True)


def test_nan_stops_within_one_step_and_saves_nothing(tiny_model: Path, tmp_path: Path) -> None:
    import torch

    def poison(step: int, model: Any) -> None:
        if step == 2:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))

    # weights poisoned after step 2: the loss of step 3 is NaN and the run stops there
    recipe = _recipe(tiny_model, tmp_path, training={"max_steps": 6, "save_steps": 100})
    run_dir = tmp_path / "nan"
    with pytest.raises(NonFiniteLoss, match="loss became nan at step 3"):
        train(recipe, run_dir=run_dir, on_step=poison)
    assert not (run_dir / "model").exists()
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert registry.get_run(run_id).status == "failed"

    # with a checkpoint due at step 2, the poisoned weights are refused, not written
    recipe = _recipe(tiny_model, tmp_path, training={"max_steps": 6, "save_steps": 1})
    run_dir = tmp_path / "nan2"
    with pytest.raises(NonFiniteLoss, match="weights became non-finite at step 2"):
        train(recipe, run_dir=run_dir, on_step=poison)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000001"]
    assert not (run_dir / "model").exists()


def test_validation_early_stopping_and_checkpoint_rotation(
    tiny_model: Path, tmp_path: Path
) -> None:
    recipe = _recipe(
        tiny_model,
        tmp_path,
        data={"eval": str(SUPPORT / "eval.jsonl")},
        training={
            "max_steps": 20,
            "eval_steps": 2,
            "save_total_limit": 1,
            # nothing counts as better after the first validation: stop at the second
            "early_stopping_patience": 1,
            "early_stopping_min_delta": 100.0,
        },
    )
    result = train(recipe)
    evals = [h for h in result.history if "eval_loss" in h]
    assert [e["step"] for e in evals] == [2, 4]
    assert result.metrics["stopped_early"] and result.metrics["train_steps"] == 4
    assert result.metrics["best_step"] == 2
    assert result.metrics["eval_loss"] == pytest.approx(evals[0]["eval_loss"])
    names = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert names == ["step-000002"]  # the best is kept even with save_total_limit 1


def test_rows_cut_off_by_max_length_are_dropped_and_counted(
    tiny_model: Path, tmp_path: Path
) -> None:
    long_prompt = "word " * 200
    rows = [chat("short question?", "short answer") for _ in range(6)]
    rows += [chat(long_prompt, "this answer falls past the limit")]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    result = train(_recipe(tiny_model, tmp_path, data={"train": str(data), "max_length": 64}))
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["tokenization"]["train"]["dropped"] == {"answer cut off entirely by max_length": 1}
    assert result.metrics["dropped_rows"] == 1


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("training", {"learning_rate": -1e-4}, "learning_rate"),
        ("adapter", {"r": 0}, "adapter.r"),
        ("adapter", {"type": "freeze"}, "trains nothing"),
    ],
)
def test_bad_recipes_fail_with_clear_messages(
    tiny_model: Path, tmp_path: Path, section: str, value: dict, message: str
) -> None:
    from tuneloop.config import load_recipe

    base = _recipe(tiny_model, tmp_path).model_dump(mode="json")
    base[section] = {**base[section], **value}
    path = tmp_path / "r.yaml"
    import yaml

    path.write_text(yaml.safe_dump(base))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_qlora_on_cpu_and_tiny_max_length_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="qlora needs a CUDA GPU"):
            train(_recipe(tiny_model, tmp_path, adapter={"type": "qlora"}))
    with pytest.raises(RecipeError, match="not longer than the chat template's own prefix"):
        train(_recipe(tiny_model, tmp_path, data={"max_length": 8}))
    assert all(r.status == "failed" for r in registry.list_runs())


def test_loss_is_finite_and_logged_to_registry(tiny_model: Path, tmp_path: Path) -> None:
    result = train(_recipe(tiny_model, tmp_path))
    entries = registry.run_metrics(result.run_id)
    assert [e["step"] for e in entries] == [1, 2, 3, 4]
    assert all(math.isfinite(e["loss"]) and e["tokens_per_s"] > 0 for e in entries)
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == entries


def test_fast_loss_equals_plain_loss_and_gradients(tiny_model: Path) -> None:
    """The loop's loss (output layer on target positions only) is the plain full-logits
    cross-entropy: same value, same gradients."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.models import load_tokenizer
    from tuneloop.train.loop import collate, loss_module, token_loss_sum
    from tuneloop.train.tokenize import tokenize_conversations

    tokenizer = load_tokenizer(str(tiny_model))
    convs = [
        [
            {"role": "user", "content": f"question {i} " * (i + 1)},
            {"role": "assistant", "content": f"answer {i}"},
        ]
        for i in range(4)
    ]
    examples = tokenize_conversations(tokenizer, convs, 128, progress=False).examples
    batch = collate(examples, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    plain = token_loss_sum(model, batch)
    plain.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    fast = loss_module(model)(**batch)
    fast.backward()
    assert fast.item() == pytest.approx(plain.item(), rel=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-6), n
