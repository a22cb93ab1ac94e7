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
from tuneloop.training import train
from tuneloop.training.loop import NonFiniteLoss, batch_plan

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
    from tuneloop.training.common import prepare_model

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


def _cuda_with_bitsandbytes() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.skipif(not _cuda_with_bitsandbytes(), reason="QLoRA needs a CUDA GPU + bitsandbytes")
def test_qlora_trains_lora_on_a_4bit_nf4_base_and_saves_a_peft_adapter(
    tiny_model: Path, tmp_path: Path
) -> None:
    """GPU only (CI has none): the base's linear layers are 4-bit NF4 with double
    quantisation, only the LoRA weights train, the loss falls, and the adapter is saved in
    the PEFT layout."""
    import bitsandbytes as bnb

    seen: dict[str, Any] = {}

    def inspect(step: int, model: Any) -> None:
        if step == 1:
            layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
            seen["layers"] = len(layers)
            seen["quant"] = {m.weight.quant_state.quant_type for m in layers}
            seen["nested"] = all(m.weight.quant_state.nested for m in layers)
            seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}

    recipe = _recipe(tiny_model, tmp_path, adapter={"type": "qlora"}, training={"max_steps": 8})
    result = train(recipe, on_step=inspect)
    assert seen["layers"] > 0 and seen["quant"] == {"nf4"} and seen["nested"]
    assert seen["trainable"] and all("lora_" in n for n in seen["trainable"])
    losses = _losses(result.history)
    assert all(math.isfinite(x) for x in losses.values()) and losses[8] < losses[1]
    assert (result.run_dir / "model" / "adapter_model.safetensors").is_file()
    assert (result.run_dir / "model" / "adapter_config.json").is_file()


def test_loss_is_finite_and_logged_to_registry(tiny_model: Path, tmp_path: Path) -> None:
    result = train(_recipe(tiny_model, tmp_path))
    entries = registry.run_metrics(result.run_id)
    assert [e["step"] for e in entries] == [1, 2, 3, 4]
    assert all(math.isfinite(e["loss"]) and e["tokens_per_s"] > 0 for e in entries)
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == entries


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_fast_loss_equals_plain_loss_and_gradients(tiny_model: Path, attention: str) -> None:
    """The loop's loss (output layer on target positions only, with either attention kernel
    `training.attention` may pick) is the plain full-logits sdpa cross-entropy: same value,
    same gradients."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.models import load_tokenizer
    from tuneloop.training.loop import _set_attention, collate, loss_module, token_loss_sum
    from tuneloop.training.tokenize import tokenize_conversations

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
    assert _set_attention(model, "sdpa") in ("sdpa", "eager")
    plain = token_loss_sum(model, batch)
    plain.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    assert _set_attention(model, attention) == "sdpa"
    assert model.config._attn_implementation == attention
    fast = loss_module(model)(**batch)
    fast.backward()
    assert fast.item() == pytest.approx(plain.item(), rel=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-6), n


def test_attention_auto_picks_eager_for_short_cpu_sequences(
    tiny_model: Path, tmp_path: Path
) -> None:
    from tuneloop.training.loop import choose_attention

    assert choose_attention("auto", 100, "cpu") == "eager"
    assert choose_attention("auto", 2048, "cpu") == "sdpa"
    assert choose_attention("auto", 100, "cuda") == "sdpa"
    assert choose_attention("sdpa", 100, "cpu") == "sdpa"
    result = train(_recipe(tiny_model, tmp_path, training={"max_steps": 1}))
    assert result.metrics["attention"] == "eager"


def test_attention_auto_falls_back_to_sdpa_when_eager_would_not_fit() -> None:
    """Eager keeps rows x heads x length^2 floats per layer for the backward: a large
    micro-batch of 512-token pairs picks sdpa when that passes a quarter of free memory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneloop.training.loop import choose_attention, eager_attention_bytes

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    model = LlamaForCausalLM(config)
    # a pair batch: 2 x 8 rows of 512 tokens; KTO's mismatched rows count too
    batch = {
        "input_ids": torch.zeros(16, 512, dtype=torch.long),
        "kl_input_ids": torch.zeros(8, 512, dtype=torch.long),
        "labels": torch.zeros(16, 512, dtype=torch.long),
    }
    estimate = eager_attention_bytes(batch, model)
    assert estimate == (16 + 8) * 512**2 * 3 * 4 * 4 * 2
    assert choose_attention("auto", 512, "cpu", estimate, free_bytes=4 * estimate) == "eager"
    assert choose_attention("auto", 512, "cpu", estimate, free_bytes=4 * estimate - 1) == "sdpa"
    assert choose_attention("auto", 512, "cpu", estimate, free_bytes=None) == "eager"
    assert choose_attention("eager", 512, "cpu", estimate, free_bytes=1) == "eager"


def _tiny_examples(tiny_model: Path, n: int) -> tuple[Any, list[Any]]:
    from tuneloop.models import load_tokenizer
    from tuneloop.training.tokenize import tokenize_conversations

    tokenizer = load_tokenizer(str(tiny_model))
    convs = [
        [
            {"role": "user", "content": f"question {i} " * (1 + 3 * (i % 4))},
            {"role": "assistant", "content": f"answer {i} " * (1 + i % 3)},
        ]
        for i in range(n)
    ]
    return tokenizer, tokenize_conversations(tokenizer, convs, 128, progress=False).examples


def test_pack_examples_best_fit_decreasing() -> None:
    from tuneloop.training.tokenize import IGNORE, Example, pack_examples

    lengths = [5, 9, 3, 7, 2, 12, 4]
    examples = [Example(list(range(1, n + 1)), list(range(1, n + 1))) for n in lengths]
    rows, fill = pack_examples(examples, capacity=14)
    assert sum(len(r.input_ids) for r in rows) == sum(lengths)
    assert all(len(r.input_ids) <= 14 for r in rows)
    assert len(rows) == 3  # 42 tokens in rows of 14: the minimum, all full
    assert fill == pytest.approx(1.0)
    for r in rows:
        assert r.positions is not None and len(r.positions) == len(r.input_ids)
        starts = [k for k, p in enumerate(r.positions) if p == 0]
        assert all(r.labels[k] == IGNORE for k in starts)  # no target across a boundary
    assert pack_examples(examples, capacity=14)[0] == rows  # deterministic


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_batch_equals_padded_batch(tiny_model: Path, attention: str) -> None:
    """Packing drops the padding and changes nothing else: same loss, same gradients."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.training.loop import _set_attention, collate, loss_module
    from tuneloop.training.tokenize import pack_examples

    tokenizer, examples = _tiny_examples(tiny_model, 8)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    _set_attention(model, attention)
    net = loss_module(model)
    padded = collate(examples, tokenizer.pad_token_id)
    rows, _ = pack_examples(examples, 2 * max(len(e.input_ids) for e in examples))
    packed = collate(rows, tokenizer.pad_token_id)
    assert "attention_mask" not in packed and "position_ids" in packed
    real = sum(len(e.input_ids) for e in examples)
    assert len(rows) < len(examples)  # rows really hold several examples
    assert real / packed["input_ids"].numel() > real / padded["input_ids"].numel()
    assert int((packed["labels"][:, 1:] != -100).sum()) == int(
        (padded["labels"][:, 1:] != -100).sum()
    )
    loss_padded = net(**padded)
    loss_padded.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss_packed = net(**packed)
    loss_packed.backward()
    assert loss_packed.item() == pytest.approx(loss_padded.item(), rel=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-6), n


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_examples_do_not_attend_to_each_other(tiny_model: Path, attention: str) -> None:
    """Changing one example's tokens leaves the logits of the others in its row unchanged,
    and each example's logits equal those it gets alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.training.loop import _set_attention, collate
    from tuneloop.training.tokenize import Example, pack_examples

    tokenizer, examples = _tiny_examples(tiny_model, 3)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    _set_attention(model, attention)
    capacity = sum(len(e.input_ids) for e in examples)
    pad = tokenizer.pad_token_id

    def logits(exs: list[Example]) -> Any:
        rows, _ = pack_examples(exs, capacity)
        assert len(rows) == 1  # one row holding all of them
        batch = collate(rows, pad)
        with torch.no_grad():
            return model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).logits[0]

    first = logits(examples)
    # the longest example goes first in the row (best-fit decreasing); perturb it
    order = sorted(range(3), key=lambda i: (-len(examples[i].input_ids), i))
    head = examples[order[0]]
    changed = Example([(t + 7) % 100 + 3 for t in head.input_ids], head.labels)
    second = logits([changed if e is head else e for e in examples])
    n = len(head.input_ids)
    assert not torch.allclose(first[:n], second[:n])  # the perturbed example did change
    assert torch.allclose(first[n:], second[n:], atol=1e-5)  # the others did not
    at = 0
    for i in order:  # each example, packed, sees exactly what it sees alone
        e = examples[i]
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
        assert torch.allclose(first[at : at + len(e.input_ids)], alone, atol=1e-4)
        at += len(e.input_ids)


def test_packing_run_records_its_rows(tiny_model: Path, tmp_path: Path) -> None:
    result = train(_recipe(tiny_model, tmp_path, training={"packing": True, "max_steps": 2}))
    meta = json.loads((result.run_dir / "run.json").read_text())
    packed = meta["tokenization"]["packed"]
    examples = meta["tokenization"]["train"]["examples"]
    assert 0 < packed["rows"] < examples and 0.5 < packed["fill"] <= 1.0
    assert all(math.isfinite(h["loss"]) for h in result.history if "loss" in h)


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_fused_chunked_cross_entropy_equals_plain(tiny_model: Path, adapter: str) -> None:
    """Pretraining-style batches (every position a target) through the fused, chunked
    output layer give the plain loss and gradients, head weight included (tied or not)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.training.loop import loss_module, token_loss_sum

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    if adapter == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (3, 20), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    batch["labels"][2, :5] = -100  # a few positions without a target
    plain = token_loss_sum(model, batch)
    plain.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = {n: p.grad.clone() for n, p in trainable.items()}
    model.zero_grad()
    net = loss_module(model)
    net.ce_chunk = 7  # 52 targets: 8 chunks, the last one partial
    fused = net(**batch)
    fused.backward()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    for n, p in trainable.items():
        # relative to the tensor's largest gradient (LoRA A's are exactly 0 at init)
        err = float((p.grad - grads[n]).abs().max() / grads[n].abs().max().clamp(min=1e-12))
        assert err < 1e-4, n
