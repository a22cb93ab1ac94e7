"""Pulls toward the starting model, against forgetting: an L2 pull
(`training.l2_to_base`) and elastic weight consolidation (`training.ewc`).

The objective becomes `loss + weight * R`, with R the squared distance of the trained
weights from where they started:

- a LoRA layer's R is `||scaling * B @ A||²`, its weight delta, computed as
  `scaling² * sum((BᵀB) * (AAᵀ))` from two r x r matrices instead of the out x in delta;
  its gradient is `2 scaling² B (AAᵀ)` for B and `2 scaling² (BᵀB) A` for A. At the start
  (B = 0) the delta, R and the gradient are zero;
- every other trainable tensor (full or frozen-layer fine-tuning, DoRA magnitudes,
  `modules_to_save`) counts `||θ - θ₀||²` against a copy of its starting value, so full
  fine-tuning holds a second copy of the trainable weights.

The gradient is added to the accumulated gradients once per optimizer step, after the
micro-batches' backward passes (and their all-reduce) and before clipping: exactly the
gradient of the regularised objective, whatever the accumulation. Sharded layouts (FSDP,
ZeRO) hold no whole A and B on one rank, so they are refused with the regulariser on.

EWC weighs each coordinate of the same distance by how much the starting model's
predictions on general text depend on it: R = sum(F * (θ - θ₀)²) with F the diagonal
empirical Fisher (the mean squared gradient of the language-model loss, one example at a
time) of the starting model on general text (`diagonal_fisher`). For a LoRA layer the
coordinates are those of its base weight and θ - θ₀ its delta, so the delta is formed
(out x in) at each step. F is scaled to mean 1 over all coordinates, so `training.ewc`
and `training.l2_to_base` weights are on one scale: EWC with a uniform F is the L2 pull.
F costs one forward and backward pass per general example, once: it is cached as
safetensors under `$TUNELOOP_HOME/cache/fisher/`, keyed by the starting model, the
examples and the weights it covers, and it holds one fp32 number per covered weight.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any


class L2ToBase:
    """R and its gradient for a model's trainable weights; see the module docstring."""

    def __init__(self, model: Any, weight: float) -> None:
        import torch

        self.weight = float(weight)
        self.lora: list[tuple[Any, Any, float]] = []  # (A weight, B weight, scaling)
        self.lora_base: list[Any] = []  # the base weight each LoRA pair changes
        paired: set[int] = set()
        for module in model.modules():
            a_dict, b_dict = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
            if a_dict is None or b_dict is None or not hasattr(module, "scaling"):
                continue
            for name, a in a_dict.items():
                if name not in b_dict:
                    continue
                wa, wb = a.weight, b_dict[name].weight
                if wa.requires_grad or wb.requires_grad:
                    self.lora.append((wa, wb, float(module.scaling[name])))
                    self.lora_base.append(module.get_base_layer().weight)
                    paired.update((id(wa), id(wb)))
        self.full = [
            (p, p.detach().clone().to(torch.float32))
            for p in model.parameters()
            if p.requires_grad and id(p) not in paired
        ]

    def value(self) -> float:
        """R now (for the log)."""
        import torch

        with torch.no_grad():
            total = 0.0
            for wa, wb, s in self.lora:
                a, b = wa.float(), wb.float()
                total += s * s * float(((b.T @ b) * (a @ a.T)).sum())
            for p, start in self.full:
                total += float((p.float() - start).pow(2).sum())
            return total

    def add_gradients(self) -> None:
        """Add `weight * dR/dθ` to each parameter's accumulated gradient."""
        import torch

        with torch.no_grad():
            for wa, wb, s in self.lora:
                a, b = wa.float(), wb.float()
                factor = 2.0 * s * s * self.weight
                if wb.requires_grad:
                    _add(wb, factor * (b @ (a @ a.T)))
                if wa.requires_grad:
                    _add(wa, factor * ((b.T @ b) @ a))
            for p, start in self.full:
                _add(p, 2.0 * self.weight * (p.float() - start))

    def extra_bytes(self) -> int:
        """Memory the regulariser holds beyond the model (copies of starting weights)."""
        return sum(start.numel() * 4 for _, start in self.full)

    def targets(self) -> list[Any]:
        """The weights whose distance from the start counts, in a fixed order: LoRA base
        weights, then the other trainable tensors."""
        return [*self.lora_base, *(p for p, _ in self.full)]


class EWC(L2ToBase):
    """R = sum(F * (θ - θ₀)²) with F the starting model's diagonal Fisher; see the module
    docstring. `set_fisher` gives it one tensor per `targets()` entry, already scaled."""

    def set_fisher(self, fisher: list[Any]) -> None:
        if len(fisher) != len(self.targets()):
            raise ValueError(f"{len(fisher)} Fisher tensors for {len(self.targets())} weights")
        self.lora_fisher = fisher[: len(self.lora)]
        self.full_fisher = fisher[len(self.lora) :]

    def _deltas(self) -> list[Any]:
        return [s * (wb.float() @ wa.float()) for wa, wb, s in self.lora]

    def value(self) -> float:
        import torch

        with torch.no_grad():
            total = 0.0
            for delta, f in zip(self._deltas(), self.lora_fisher, strict=True):
                total += float((f * delta.pow(2)).sum())
            for (p, start), f in zip(self.full, self.full_fisher, strict=True):
                total += float((f * (p.float() - start).pow(2)).sum())
            return total

    def add_gradients(self) -> None:
        import torch

        with torch.no_grad():
            for (wa, wb, s), delta, f in zip(
                self.lora, self._deltas(), self.lora_fisher, strict=True
            ):
                g = 2.0 * self.weight * s * (f * delta)  # dR/dΔW times dΔW/d(BA) = s
                if wb.requires_grad:
                    _add(wb, g @ wa.float().T)
                if wa.requires_grad:
                    _add(wa, wb.float().T @ g)
            for (p, start), f in zip(self.full, self.full_fisher, strict=True):
                _add(p, 2.0 * self.weight * f * (p.float() - start))

    def extra_bytes(self) -> int:
        fisher = sum(f.numel() * 4 for f in (*self.lora_fisher, *self.full_fisher))
        return super().extra_bytes() + fisher


def diagonal_fisher(model: Any, examples: list[Any], pad_id: int, targets: list[Any]) -> list[Any]:
    """Mean over `examples` (one at a time) of the squared gradient of the summed token
    loss with respect to each of `targets`, scaled to mean 1 over all coordinates. The
    targets' `requires_grad` is switched on for the passes and restored after; the model's
    other gradients are left as they were (none)."""
    import torch

    from tuneloop.training.objectives import collate, token_loss_sum

    if not examples:
        raise ValueError("no general examples for the Fisher")
    flags = {p: p.requires_grad for p in (*model.parameters(), *targets)}
    was_training = model.training
    sums = [torch.zeros(t.shape, dtype=torch.float32) for t in targets]
    device = targets[0].device
    try:
        for p in flags:
            p.requires_grad_(False)
        for t in targets:
            t.requires_grad_(True)
        model.eval()  # no dropout: the Fisher of the model as it predicts
        for example in examples:
            batch = {k: v.to(device) for k, v in collate([example], pad_id).items()}
            grads = torch.autograd.grad(token_loss_sum(model, batch), targets)
            for total, g in zip(sums, grads, strict=True):
                total += g.detach().float().cpu().pow(2)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    # F = sums / n; scaled to mean 1 that is sums / mean(sums)
    mean = sum(float(s.sum()) for s in sums) / max(sum(s.numel() for s in sums), 1)
    return [(s / mean if mean > 0 else s).to(device) for s in sums]


def cached_fisher(
    model: Any, examples: list[Any], pad_id: int, targets: list[Any], key: str, cache: Path
) -> tuple[list[Any], dict[str, Any]]:
    """`diagonal_fisher`, read from `cache/<hash>.safetensors` when the same starting model
    (`key`), examples and target weights were seen before; written there (temporary file,
    then rename) otherwise. Returns the tensors and a record of the cost."""
    from safetensors.torch import load_file, save_file

    names = {id(p): n for n, p in model.named_parameters()}
    h = hashlib.sha256(key.encode())
    h.update(json.dumps([[names.get(id(t), "?"), list(t.shape)] for t in targets]).encode())
    h.update(json.dumps([e.input_ids for e in examples]).encode())
    path = cache / f"{h.hexdigest()[:20]}.safetensors"
    record: dict[str, Any] = {"file": str(path), "examples": len(examples)}
    if path.exists():
        loaded = load_file(str(path))
        fisher = [loaded[str(i)].to(targets[i].device) for i in range(len(targets))]
        return fisher, {**record, "cached": True, "seconds": 0.0}
    started = time.perf_counter()
    fisher = diagonal_fisher(model, examples, pad_id, targets)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({str(i): f.detach().cpu().contiguous() for i, f in enumerate(fisher)}, str(tmp))
    tmp.replace(path)
    return fisher, {**record, "cached": False, "seconds": round(time.perf_counter() - started, 1)}


def _add(param: Any, grad: Any) -> None:
    grad = grad.to(param.dtype)
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)
