"""`training.l2_to_base`: the pull toward the starting weights. Its closed-form gradient
matches autograd on the explicit penalty, is zero at the start and grows with the
distance; in training it keeps the adapter's delta small."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tuneloop.config import recipe_from_dict
from tuneloop.training import train
from tuneloop.training.regularize import L2ToBase

from conftest import SUPPORT


def _lora(tiny_model: Path) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    return get_peft_model(base, config)


def _explicit(model: torch.nn.Module) -> torch.Tensor:
    """sum of ||scaling * B @ A||² over the LoRA layers, the delta written out."""
    total = torch.zeros(())
    for module in model.modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            total = total + (module.scaling["default"] * b @ a).pow(2).sum()
    return total


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _move_away(model: torch.nn.Module) -> None:
    """Random B matrices (seeded): the adapters now hold a delta."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)


def test_lora_penalty_and_gradient_match_autograd(tiny_model: Path) -> None:
    model = _lora(tiny_model)
    reg = L2ToBase(model, weight=0.5)
    assert reg.lora and not reg.full  # only A and B train
    reg.add_gradients()  # at the start B = 0: no delta, no pull
    assert reg.value() == 0.0 and all(g.abs().max() == 0 for g in _grads(model).values())

    _move_away(model)
    model.zero_grad()
    (0.5 * _explicit(model)).backward()
    expected = _grads(model)
    model.zero_grad()
    reg.add_gradients()
    got = _grads(model)
    assert reg.value() == pytest.approx(float(_explicit(model).detach()), rel=1e-5)
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7)

    # twice the distance: four times the penalty, and a larger pull on A
    before = {n: float(g.norm()) for n, g in got.items() if "lora_A" in n}
    first = reg.value()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(2)
    value = reg.value()
    model.zero_grad()
    reg.add_gradients()
    after = {n: float(g.norm()) for n, g in _grads(model).items() if "lora_A" in n}
    assert value == pytest.approx(4 * first, rel=1e-5)
    assert all(after[n] == pytest.approx(4 * before[n], rel=1e-4) for n in before)


def test_full_weights_are_pulled_toward_their_start(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    reg = L2ToBase(model, weight=2.0)
    weight = model.model.layers[0].mlp.up_proj.weight
    start = weight.detach().clone()
    with torch.no_grad():
        weight.add_(0.01)
    reg.add_gradients()
    torch.testing.assert_close(weight.grad, 2 * 2.0 * (weight.detach() - start))
    assert reg.value() == pytest.approx(float((weight.detach() - start).pow(2).sum()), rel=1e-5)


def _train(tiny_model: Path, tmp_path: Path, name: str, **training: object) -> Path:
    """A short LoRA run on the support rows with the given training settings."""
    recipe = recipe_from_dict(
        {
            "name": name,
            "model": str(tiny_model),
            "data": {"train": str(SUPPORT / "train.jsonl"), "max_length": 64},
            "adapter": {"type": "lora", "r": 4, "alpha": 8},
            "training": {"batch_size": 4, "learning_rate": 1e-2, **training},
            "output_dir": str(tmp_path / "runs"),
        }
    )
    return Path(train(recipe).run_dir)


def _run(tiny_model: Path, tmp_path: Path, weight: float) -> dict:
    run_dir = _train(
        tiny_model, tmp_path, f"l2-{weight}", max_steps=6, logging_steps=3, l2_to_base=weight
    )
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, run_dir / "model")
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    return {"delta": float(_explicit(tuned)), "log": log}


def test_the_pull_keeps_the_adapter_delta_small(tiny_model: Path, tmp_path: Path) -> None:
    free = _run(tiny_model, tmp_path, 0.0)
    pulled = _run(tiny_model, tmp_path, 50.0)
    assert pulled["delta"] < 0.5 * free["delta"], (pulled["delta"], free["delta"])
    logged = [e["l2_to_base"] for e in pulled["log"] if "l2_to_base" in e]
    assert logged and all(v > 0 for v in logged)
    assert not any("l2_to_base" in e for e in free["log"])


def _examples(n: int) -> list:
    from tuneloop.training.tokenize import Example

    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        ids = torch.randint(5, 200, (6 + i,), generator=g).tolist()
        out.append(Example(input_ids=ids, labels=ids))
    return out


def test_fisher_matches_a_direct_computation(tiny_model: Path) -> None:
    """Mean squared per-example gradient of the summed token loss, scaled to mean 1."""
    from transformers import AutoModelForCausalLM

    from tuneloop.training.regularize import diagonal_fisher

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    targets = [
        model.model.layers[0].mlp.up_proj.weight,
        model.model.layers[1].self_attn.q_proj.weight,
    ]
    examples = _examples(3)
    got = diagonal_fisher(model, examples, pad_id=0, targets=targets)

    direct = [torch.zeros_like(t) for t in targets]
    for e in examples:
        ids = torch.tensor([e.input_ids])
        logits = model(input_ids=ids).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
        model.zero_grad()
        loss.backward()
        for d, t in zip(direct, targets, strict=True):
            d += t.grad.pow(2) / len(examples)
    mean = sum(float(d.sum()) for d in direct) / sum(d.numel() for d in direct)
    for g, d in zip(got, direct, strict=True):
        torch.testing.assert_close(g, d / mean, rtol=1e-4, atol=1e-6)
    assert sum(float(g.sum()) for g in got) / sum(g.numel() for g in got) == pytest.approx(1.0)
    # the parameters' trainability is as it was
    assert all(p.requires_grad for p in model.parameters())


def test_ewc_gradient_matches_autograd_and_a_flat_fisher_is_the_l2_pull(tiny_model: Path) -> None:
    from tuneloop.training.regularize import EWC

    model = _lora(tiny_model)
    ewc = EWC(model, weight=0.5)
    g = torch.Generator().manual_seed(2)
    fisher = [torch.rand(t.shape, generator=g) * 2 for t in ewc.targets()]
    ewc.set_fisher(fisher)
    ewc.add_gradients()  # at the start: no delta, no pull
    assert ewc.value() == 0.0 and all(x.abs().max() == 0 for x in _grads(model).values())

    _move_away(model)
    explicit = torch.zeros(())
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(layers) == len(fisher)
    for m, f in zip(layers, fisher, strict=True):
        delta = m.scaling["default"] * m.lora_B["default"].weight @ m.lora_A["default"].weight
        explicit = explicit + (f * delta.pow(2)).sum()
    model.zero_grad()
    (0.5 * explicit).backward()
    expected = _grads(model)
    model.zero_grad()
    ewc.add_gradients()
    got = _grads(model)
    assert ewc.value() == pytest.approx(float(explicit.detach()), rel=1e-5)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7)

    flat = EWC(model, weight=0.5)
    flat.set_fisher([torch.ones(t.shape) for t in flat.targets()])
    assert flat.value() == pytest.approx(L2ToBase(model, 0.5).value(), rel=1e-5)


def _ewc_run(tiny_model: Path, tmp_path: Path, name: str) -> Path:
    return _train(tiny_model, tmp_path, name, max_steps=4, logging_steps=2, ewc=5.0, ewc_samples=8)


def test_ewc_trains_with_a_cached_fisher(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    first = _ewc_run(tiny_model, tmp_path, "ewc-a")
    record = json.loads((first / "regulariser.json").read_text())
    assert record["kind"] == "ewc" and record["fisher"]["examples"] == 8
    assert record["fisher"]["cached"] is False and record["extra_memory_mb"] > 0
    assert Path(record["fisher"]["file"]).is_file()
    log = [json.loads(line) for line in (first / "metrics.jsonl").open()]
    logged = [e["ewc"] for e in log if "ewc" in e]
    assert logged and logged[-1] > 0
    second = json.loads((_ewc_run(tiny_model, tmp_path, "ewc-b") / "regulariser.json").read_text())
    assert second["fisher"]["cached"] is True
    assert second["fisher"]["file"] == record["fisher"]["file"]
