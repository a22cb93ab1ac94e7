"""Reward models: a scalar score for (conversation, answer), in transformers' standard
sequence-classification format with one label.

A reward run saves `AutoModelForSequenceClassification` weights (the decoder of the causal
model it started from, plus a `score` head of one output), so any tool that reads that
format (TRL, OpenRLHF, vLLM's reward pooling) loads it as it is. The score of a sequence is
the head's output at its last token that is not the padding token (transformers' own
pooling, which finds it from `pad_token_id` and so works for left and right padding alike).

`score` renders prompt + answer exactly as training did (`training/pairs.py`): the prompt
up to the answer's generation prompt and the answer are tokenised separately and joined,
so a reward model scores at evaluation, best-of-n or PPO time the token ids it was trained
on (a test checks the ids are the same).

`pair_summary` is what a reward model's scores on preference pairs say: pair accuracy with
its bootstrap interval and the distribution of the reward gap. Training (validation) and
evaluation (`tuneloop eval --data PAIRS`) both report it, hence its place in this layer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import ModelError

Message = dict[str, str]

GAP_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def is_reward_dir(path: str | Path) -> bool:
    """Whether the model folder at `path` holds a sequence-classification (reward) model."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except ValueError:
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


def reward_model_from_causal(causal: Any, pad_token_id: int) -> Any:
    """A one-output sequence-classification model with `causal`'s decoder weights.

    The config is the causal model's with `num_labels=1` and `pad_token_id` set (pooling
    needs it); the decoder weights are copied from `causal` (a merged SFT run works like a
    base model); the new `score` head starts small (std 1/sqrt(hidden + 1), as InstructGPT-
    style reward models and OpenRLHF initialise it), so initial rewards are near 0.
    """
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal.config)
    config.num_labels = 1
    config.pad_token_id = pad_token_id
    config.architectures = None
    config.use_cache = False
    try:
        model = AutoModelForSequenceClassification.from_config(config, dtype=causal.dtype)
    except ValueError as err:
        raise ModelError(f"no sequence-classification head for this model: {err}") from None
    decoder = getattr(causal, causal.base_model_prefix)
    getattr(model, model.base_model_prefix).load_state_dict(decoder.state_dict())
    head = model.score
    with torch.no_grad():
        head.weight.normal_(0.0, 1.0 / math.sqrt(config.get_text_config().hidden_size + 1))
        if head.bias is not None:
            head.bias.zero_()
    return model


def score_ids(
    tokenizer: Any, conversation: Sequence[Message], system_prompt: str | None = None
) -> list[int]:
    """Token ids of prompt + answer as reward training builds them; the answer is the
    conversation's trailing assistant messages."""
    messages = list(conversation)
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    start = len(messages)
    while start > 0 and messages[start - 1]["role"] == "assistant":
        start -= 1
    if start == len(messages) or start == 0:
        raise ModelError("a conversation to score needs a prompt and an assistant answer")
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(
        messages[:start], tokenize=False, add_generation_prompt=True
    )
    if not text.startswith(prompt):
        raise ModelError(
            "the chat template does not render the answer as a continuation of the prompt; "
            "the answer's tokens cannot be located"
        )
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [*encode(prompt), *encode(text[len(prompt) :])]


def score(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    batch_size: int = 16,
    system_prompt: str | None = None,
    progress: Any = None,
) -> list[float]:
    """The reward of each conversation's final answer (trailing assistant messages).

    Batches of similar lengths, right-padded as in training; results in the caller's order.
    """
    import torch

    encoded = [score_ids(tokenizer, c, system_prompt) for c in conversations]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = [0.0] * len(encoded)
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(idx):
                out[i] = float(logits[row, 0].float())
            if progress:
                progress(len(idx))
    model.train(was_training)
    return out


@dataclass
class RewardModel:
    """A loaded reward model with the prompting of the run that trained it."""

    ref: str
    model: Any
    tokenizer: Any
    system_prompt: str | None = None
    run_id: int | None = None
    max_length: int | None = None

    def score(
        self, conversations: Sequence[Sequence[Message]], batch_size: int = 16, progress: Any = None
    ) -> list[float]:
        """The reward of each conversation's final answer; see `score`."""
        return score(
            self.model, self.tokenizer, conversations, batch_size, self.system_prompt, progress
        )


def load_reward_model(ref: str, dtype: Any = None) -> RewardModel:
    """Resolve and load a reward model (`run:ID` of a `reward` run, or its model folder)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tuneloop.models.resolve import check_weights_format, load_tokenizer, resolve

    resolved = resolve(ref)
    if resolved.adapter or not is_reward_dir(resolved.base):
        raise ModelError(
            f"{ref} is not a reward model (no sequence-classification head); train one with "
            "method: reward"
        )
    check_weights_format(resolved)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolved.base, dtype=dtype or torch.float32, **resolved.pretrained_kwargs()
        )
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load reward model {ref!r}: {first}") from None
    model.eval()
    tokenizer = load_tokenizer(resolved.base, resolved)
    data = (resolved.recipe or {}).get("data") or {}
    return RewardModel(
        ref=ref,
        model=model,
        tokenizer=tokenizer,
        system_prompt=data.get("system_prompt"),
        run_id=resolved.run_id,
        max_length=data.get("max_length"),
    )


def pair_summary(gaps: Sequence[float], seed: int = 0, resamples: int = 1000) -> dict[str, Any]:
    """Pair accuracy (the share of pairs with r_chosen > r_rejected; a tie is a miss) with
    its 95% percentile-bootstrap interval over pairs, and the reward gap's mean and
    quantiles (`GAP_QUANTILES`)."""
    import numpy as np

    from tuneloop.intervals import bootstrap

    arr = np.asarray(gaps, dtype=float)
    if arr.size == 0:
        raise ModelError("no pairs to summarise")
    wins = (arr > 0).astype(float)
    interval = bootstrap(
        len(wins), lambda idx: float(wins[list(idx)].mean()), resamples=resamples, seed=seed
    )
    return {
        "pairs": int(arr.size),
        "pair_accuracy": interval.value,
        "pair_accuracy_ci": interval.as_dict(),
        "ties": int((arr == 0).sum()),
        "reward_gap_mean": float(arr.mean()),
        "reward_gap_quantiles": {
            f"q{round(q * 100):02d}": float(v)
            for q, v in zip(GAP_QUANTILES, np.quantile(arr, GAP_QUANTILES), strict=True)
        },
    }
