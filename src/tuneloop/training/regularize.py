"""An L2 pull toward the starting model, against forgetting (`training.l2_to_base`).

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
"""

from __future__ import annotations

from typing import Any


class L2ToBase:
    """R and its gradient for a model's trainable weights; see the module docstring."""

    def __init__(self, model: Any, weight: float) -> None:
        import torch

        self.weight = float(weight)
        self.lora: list[tuple[Any, Any, float]] = []  # (A weight, B weight, scaling)
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


def _add(param: Any, grad: Any) -> None:
    grad = grad.to(param.dtype)
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)
