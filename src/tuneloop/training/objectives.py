"""What the training loop minimises: an objective is a batch -> (loss sum, statistics).

The loop in loop.py owns everything that does not depend on the method (data order,
accumulation, the parallel layouts, checkpoints, guards, validation, early stopping). An
objective owns what does:

- `collate(examples, pad_id)`: one micro-batch of tensors from the method's examples;
- `count(batch)`: the normaliser the batch contributes: target tokens for next-token
  objectives, pairs for preference objectives. The loss of a step is the sum of its
  micro-batches' loss sums over every process, divided by the summed counts, so batch 8
  equals batch 1 with 8 accumulation steps whatever the objective;
- `module(model)`: a `torch.nn.Module` holding the model as `.model` (so DDP, FSDP and
  ZeRO wrap the whole forward) whose `forward(**batch)` returns the loss sum, or
  `(loss sum, {name: summed statistic})`; statistics are divided by the same count and
  logged beside the loss (`reward_accuracy`, `reward_margin`, ...);
- `length(example)` (for length-grouped batching) and `tokens(example)` (throughput);
- `eval_entry(loss, stats)`: the validation metrics from the mean loss and statistics;
  `eval_loss` is the one early stopping and best-checkpoint selection use;
- `state_dict()`/`load_state_dict()`: plain JSON state that must survive a resume (a KL
  controller's coefficient), stored in the checkpoint's `state.json`.

Next-token objectives (`sft`, `pretrain`) share `TokenObjective`: the cross-entropy over
target tokens, with the output layer run only where there is a target (see CausalLMLoss).
"""

from __future__ import annotations

import math
from typing import Any

from tuneloop.training.tokenize import IGNORE, Example

CE_CHUNK = 4096  # target positions per output-layer chunk (see CausalLMLoss)


class Objective:
    """The method-specific part of a training run; see the module docstring."""

    name = "objective"
    unit = "tokens"  # what `count` counts (for messages and logs)

    def collate(self, examples: list[Any], pad_id: int) -> dict[str, Any]:
        raise NotImplementedError

    def count(self, batch: dict[str, Any]) -> int:
        raise NotImplementedError

    def module(self, model: Any) -> Any:
        raise NotImplementedError

    def length(self, example: Any) -> int:
        """For length-grouped batching: every example type has `length` (the longest
        sequence it puts in a batch) and `tokens` (all it puts in)."""
        return example.length

    def tokens(self, example: Any) -> int:
        return example.tokens

    def eval_entry(self, loss: float, stats: dict[str, float]) -> dict[str, float]:
        return {"eval_loss": loss, **{f"eval_{k}": v for k, v in stats.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class TokenObjective(Objective):
    """Summed next-token cross-entropy over target tokens (labels != IGNORE), normalised
    by the number of target tokens. SFT masks the prompt; pretraining targets every token."""

    unit = "tokens"

    def __init__(self, name: str) -> None:
        self.name = name

    def collate(self, examples: list[Example], pad_id: int) -> dict[str, Any]:
        return collate(examples, pad_id)

    def count(self, batch: dict[str, Any]) -> int:
        return _targets(batch)

    def module(self, model: Any) -> Any:
        return loss_module(model)

    def eval_entry(self, loss: float, stats: dict[str, float]) -> dict[str, float]:
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}


SFT = TokenObjective("sft")
PRETRAIN = TokenObjective("pretrain")


def collate(examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels (IGNORE on padding).

    Packed rows (examples with `positions`, from `pack_examples`) get position_ids and no
    attention mask instead: from the restarting positions transformers builds a
    block-diagonal causal mask, so no token attends across the examples of a row. Padding
    then continues the positions as a segment of its own.
    """
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    packed = any(e.positions is not None for e in examples)
    positions = torch.arange(width, dtype=torch.long).repeat(len(examples), 1)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
        if packed:
            if e.positions is not None:
                positions[row, :n] = torch.tensor(e.positions)
            positions[row, n:] = torch.arange(width - n)
    if packed:
        return {"input_ids": ids, "position_ids": positions, "labels": labels}
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_loss_sum(model: Any, batch: dict[str, Any]) -> Any:
    """Summed next-token cross-entropy over the batch's target tokens (the plain way: full
    logits for every position). The loop uses `CausalLMLoss`, which must agree with this."""
    import torch.nn.functional as F

    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    logits = out.logits[:, :-1, :].float()
    targets = batch["labels"][:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def output_parts(model: Any) -> tuple[Any, Any] | None:
    """(decoder, output layer) of a causal LM (through a peft wrapper), so a loss can run
    the output layer only on the positions it needs; None for models whose logits are
    post-processed (soft-capping, scaling), which must take the plain `model(...)` path."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    special = getattr(config, "final_logit_softcapping", None) or getattr(
        config, "logit_scale", None
    )
    decoder = getattr(base, "get_decoder", lambda: None)()
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return None if special or decoder is None or head is None else (decoder, head)


def _loss_module() -> Any:
    import torch
    import torch.nn.functional as F

    class CausalLMLoss(torch.nn.Module):
        """The model plus its loss, as one module (so DDP/FSDP wrap the whole forward).

        The output layer runs only on positions that have a target: in SFT most positions
        are prompt tokens, and with a 49k-token vocabulary the full logits are the largest
        tensor of the step. Beyond `ce_chunk` target positions (pretraining blocks), the
        output layer and the loss run fused, chunk by chunk (`fused_linear_cross_entropy`),
        so those logits are never held whole. Models whose logits are post-processed
        (soft-capping, scaling) take the plain path.
        """

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model
            self._parts = output_parts(model)
            head = self._parts[1] if self._parts else None
            self.ce_chunk = CE_CHUNK
            self._fusable = isinstance(head, torch.nn.Linear) and head.bias is None

        def forward(
            self,
            input_ids: Any,
            labels: Any,
            attention_mask: Any = None,
            position_ids: Any = None,
        ) -> Any:
            # packed rows (see collate) carry position ids and no attention mask;
            # transformers builds the per-example mask from them only without a KV cache
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
            if position_ids is not None:
                inputs["position_ids"] = position_ids
            if self._parts is None:
                return token_loss_sum(self.model, {**inputs, "labels": labels})
            decoder, head = self._parts
            hidden = decoder(**inputs)[0]
            targets = labels[:, 1:]
            keep = targets != IGNORE
            hidden, targets = hidden[:, :-1][keep], targets[keep]
            if hidden.size(0) > self.ce_chunk and self._fusable:
                # many targets (pretraining): never hold the (targets x vocabulary) logits
                return fused_linear_cross_entropy(hidden, head.weight, targets, self.ce_chunk)
            return F.cross_entropy(head(hidden).float(), targets, reduction="sum")

    return CausalLMLoss


def fused_linear_cross_entropy(hidden: Any, weight: Any, targets: Any, chunk: int) -> Any:
    """sum(cross_entropy(hidden @ weight.T, targets)), with the logits one chunk of rows at
    a time: peak memory holds one (chunk x vocabulary) block instead of all the logits.

    The gradients are computed chunk by chunk in the forward pass (softmax minus one-hot,
    times the weight / the hidden states) and only scaled in the backward pass, so nothing
    is recomputed: the same three matrix products as the plain path. Under autocast the
    products run in the autocast dtype and the softmax in fp32, as the plain path does.
    """
    return _fused_ce()(hidden, weight, targets, chunk)


_FUSED_CE: Any = None


def _fused_ce() -> Any:
    global _FUSED_CE
    if _FUSED_CE is not None:
        return _FUSED_CE.apply
    import torch

    class FusedLinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, chunk: int) -> Any:
            device = hidden.device.type
            ctx.weight_dtype = weight.dtype
            dtype = (
                torch.get_autocast_dtype(device)
                if torch.is_autocast_enabled(device)
                else weight.dtype
            )
            with torch.autocast(device, enabled=False):
                w = weight.to(dtype)
                total = torch.zeros((), dtype=torch.float32, device=hidden.device)
                grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
                grad_weight = (
                    torch.zeros_like(weight, dtype=torch.float32)
                    if ctx.needs_input_grad[1]
                    else None
                )
                for lo in range(0, hidden.size(0), chunk):
                    h = hidden[lo : lo + chunk].to(dtype)
                    t = targets[lo : lo + chunk]
                    logits = (h @ w.t()).float()
                    lse = torch.logsumexp(logits, dim=-1)
                    total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                    if grad_hidden is None and grad_weight is None:
                        continue
                    probs = torch.exp(logits - lse[:, None])  # d loss / d logits ...
                    probs[torch.arange(t.size(0), device=t.device), t] -= 1.0  # ... - one-hot
                    g = probs.to(dtype)
                    if grad_hidden is not None:
                        grad_hidden[lo : lo + chunk] = (g @ w).to(hidden.dtype)
                    if grad_weight is not None:
                        grad_weight += (g.t() @ h).float()
            ctx.save_for_backward(
                *(x if x is not None else torch.empty(0) for x in (grad_hidden, grad_weight))
            )
            return total

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            grad_hidden, grad_weight = ctx.saved_tensors
            gh = grad_hidden * grad_out if ctx.needs_input_grad[0] else None
            gw = (grad_weight * grad_out).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
            return gh, gw, None, None

    _FUSED_CE = FusedLinearCrossEntropy
    return _FUSED_CE.apply


def loss_module(model: Any) -> Any:
    """Wrap `model` in the loss module the loop trains (see CausalLMLoss)."""
    return _loss_module()(model)


def _targets(batch: dict[str, Any]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())
