"""Batched generation with left padding and the KV cache, for every layer that prompts a
model: evaluation, serving, and the alignment methods' rollouts.

Prompts are sorted by length before batching so each batch pads little; results come back in
the caller's order. Greedy decoding is deterministic, so base-vs-tuned comparisons are fair.

With `choices` (a classifier's label set) decoding is constrained by a token trie: at each
step only tokens that continue some label are allowed, and a label must end with the
end-of-turn token, so every answer is exactly one of the labels. The trie is built from the
chat template's own rendering of each label as an answer, so the tokens are those the model
was trained to emit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Conversation = list[dict[str, str]]  # chat messages (data.formats.Conversation)


@dataclass
class Generation:
    text: str
    new_tokens: int
    stopped: bool  # ended with the end-of-turn token rather than the length budget


def encode_prompt(tokenizer: Any, messages: Conversation) -> list[int]:
    """Token ids of `messages` rendered by the chat template, ready for the answer."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def answer_tokens(tokenizer: Any, prompt: Conversation, answer: str) -> list[int]:
    """Tokens the template puts after `prompt` for assistant answer `answer`, up to and
    including the end-of-turn token."""
    eos = tokenizer.eos_token_id
    head = encode_prompt(tokenizer, prompt)
    full = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": answer}], tokenize=True
    )
    if hasattr(full, "keys"):
        full = full["input_ids"]
    full = list(full)
    if full[: len(head)] == head and eos in full[len(head) :]:
        tail = full[len(head) :]
        return tail[: tail.index(eos) + 1]
    # a template that re-renders the prompt: fall back to the plain answer tokens
    return [*tokenizer(answer, add_special_tokens=False)["input_ids"], eos]


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) with every sequence right-aligned: generation and
    candidate scoring both continue from the last column."""
    import torch

    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def choice_trie(
    tokenizer: Any, prompt: Conversation, choices: list[str]
) -> tuple[dict[int, Any], int]:
    """Token trie of every choice rendered as the answer to `prompt` (nested dicts), and the
    length in tokens of the longest choice."""
    if not choices:
        raise ValueError("constrained decoding needs at least one choice")
    root: dict[int, Any] = {}
    longest = 0
    for choice in choices:
        tokens = answer_tokens(tokenizer, prompt, choice)
        longest = max(longest, len(tokens))
        node = root
        for tok in tokens:
            node = node.setdefault(tok, {})
    return root, longest


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[Conversation],
    max_new_tokens: int = 128,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    choices: list[str] | None = None,
) -> tuple[list[Generation], dict[str, float]]:
    """Greedy answers for every prompt, plus throughput stats (tokens/s, seconds).

    choices: constrain every answer to one of these strings (see the module docstring);
    max_new_tokens is raised to the longest choice so none is cut off.
    """
    import torch

    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    trie = None
    if choices is not None and prompts:
        trie, longest = choice_trie(tokenizer, prompts[0], choices)
        max_new_tokens = max(max_new_tokens, longest)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(encoded)
    pad_id = tokenizer.pad_token_id
    eos_id = tokenizer.eos_token_id
    device = next(model.parameters()).device
    start = time.perf_counter()
    total_new = 0
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        input_ids, attention = left_pad([encoded[i] for i in idx], pad_id)
        width = input_ids.shape[1]
        constrain = None
        if trie is not None:
            constrain = _trie_constraint(trie, width, eos_id)
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
                prefix_allowed_tokens_fn=constrain,
            )
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            stopped = eos_id in new
            if stopped:
                new = new[: new.index(eos_id)]
            total_new += len(new) + int(stopped)
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            results[i] = Generation(text=text, new_tokens=len(new), stopped=stopped)
        if progress:
            progress(len(idx))
    seconds = time.perf_counter() - start
    stats = {
        "seconds": seconds,
        "new_tokens": total_new,
        "tokens_per_s": total_new / max(seconds, 1e-9),
    }
    return [r for r in results if r is not None], stats


@dataclass
class Sample:
    """One sampled answer: its tokens (for log-probabilities in RL) and its text."""

    prompt_ids: list[int]
    ids: list[int]  # generated tokens, ending with the end-of-turn token when `stopped`
    text: str
    stopped: bool


def sample(
    model: Any,
    tokenizer: Any,
    prompts: list[Conversation],
    n: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
) -> list[list[Sample]]:
    """`n` answers per prompt, sampled at `temperature` with nucleus `top_p` (temperature 0:
    greedy), stopping at the end-of-turn token: the rollout engine of PPO, GRPO, RLAIF and
    best-of-n.

    Seeded per batch of prompts (the seed and the batch's first prompt index), so the same
    call gives the same samples; prompts are batched in the caller's order so the seeds do
    not depend on the other prompts' lengths.
    """
    import torch

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    device = next(model.parameters()).device
    greedy = temperature <= 0
    out: list[list[Sample]] = []
    for b in range(0, len(encoded), batch_size):
        batch = encoded[b : b + batch_size]
        input_ids, attention = left_pad(batch, pad_id)
        width = input_ids.shape[1]
        torch.manual_seed(seed * 1_000_003 + b)
        # greedy answers are all the same: decode once, repeat
        options: dict[str, Any] = {"do_sample": False, "num_return_sequences": 1}
        if not greedy:
            options = {"do_sample": True, "temperature": temperature, "top_p": top_p}
            options.update(top_k=0, num_return_sequences=n)
        per = options["num_return_sequences"]
        with torch.inference_mode():
            ids = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
                **options,
            )
        for row, prompt_ids in enumerate(batch):
            answers = []
            for j in range(n):
                new = ids[row * per + j % per, width:].tolist()
                stopped = eos_id in new
                if stopped:  # what follows the end is padding
                    new = new[: new.index(eos_id) + 1]
                text = tokenizer.decode(new, skip_special_tokens=True).strip()
                answers.append(Sample(list(prompt_ids), new, text, stopped))
            out.append(answers)
    return out


def _trie_constraint(trie: dict[int, Any], width: int, eos_id: int) -> Callable[..., list[int]]:
    """prefix_allowed_tokens_fn for one batch whose prompts are left-padded to `width`."""

    def allowed(_row: int, ids: Any) -> list[int]:
        node = trie
        for tok in ids[width:].tolist():
            if tok not in node:
                return [eos_id]  # finished row (padding after its end-of-turn)
            node = node[tok]
        return list(node) or [eos_id]

    return allowed


def score_candidates(
    model: Any,
    tokenizer: Any,
    prompts: list[Conversation],
    candidates: list[list[str]],
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Log-likelihood of each candidate answer (its tokens and the end-of-turn token) given
    its prompt: the model's probability of writing exactly that answer.

    Each prompt is encoded once; its KV cache is repeated for its candidates, so K
    candidates cost one prompt pass plus K short continuations instead of K full passes.
    Every prompt must have the same number of candidates.
    """
    import torch

    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    if not prompts:
        return []
    k = len(candidates[0])
    if k == 0 or any(len(c) != k for c in candidates):
        raise ValueError("every prompt needs the same, non-zero number of candidates")
    tails: dict[str, list[int]] = {}  # answer tokens per label, rendered after the prompt
    for labels in candidates:
        for label in labels:
            if label not in tails:
                tails[label] = answer_tokens(tokenizer, prompts[0], label)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out: list[list[float]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        ids, mask = left_pad([encoded[i] for i in idx], pad_id)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        seqs = [tails[label] for i in idx for label in candidates[i]]
        longest = max(len(t) for t in seqs)
        cand = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
        cand_mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for r, t in enumerate(seqs):
            cand[r, : len(t)] = torch.tensor(t)
            cand_mask[r, : len(t)] = 1
        lengths = mask.sum(-1).repeat_interleave(k)
        with torch.inference_mode():
            first = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=True,
            )
            cache = first.past_key_values
            cache.batch_repeat_interleave(k)
            rest = model(
                input_ids=cand.to(device),
                attention_mask=torch.cat([mask.repeat_interleave(k, 0), cand_mask], 1).to(device),
                position_ids=(lengths[:, None] + torch.arange(longest)[None, :]).to(device),
                past_key_values=cache,
                use_cache=True,
            )
            # token 0 is predicted by the prompt's last position, token j by candidate j - 1;
            # log p = logit of the token - logsumexp of its row, without a softmax copy of the
            # (candidates x tokens x vocabulary) logits
            target = cand.to(device)
            head = first.logits[:, -1].float()
            head_lp = head.gather(-1, target[:, :1].view(len(idx), k)) - torch.logsumexp(
                head, -1, keepdim=True
            )
            tail = rest.logits[:, :-1]
            tail_lp = tail.gather(-1, target[:, 1:, None])[..., 0].float() - torch.logsumexp(
                tail.float(), -1
            )
            logp = torch.cat([head_lp.reshape(-1, 1), tail_lp], 1)
            totals = (logp * cand_mask.to(device)).sum(-1).tolist()
        for row, i in enumerate(idx):
            out[i] = totals[row * k : (row + 1) * k]
        if progress:
            progress(len(idx))
    return out


def answer_nll(
    model: Any,
    tokenizer: Any,
    conversations: list[Conversation],
    batch_size: int = 16,
) -> list[tuple[float, int]]:
    """Per conversation: (summed NLL of the final answer tokens given the prompt, token count).

    The answer tokens include the end-of-turn marker, as a chat model must produce it.
    """
    import torch

    pairs = []
    for conv in conversations:
        prompt = encode_prompt(tokenizer, conv[:-1])
        full = tokenizer.apply_chat_template(conv, tokenize=True)
        if hasattr(full, "keys"):
            full = full["input_ids"]
        full = list(full)
        if full[: len(prompt)] != prompt:  # template re-renders the prompt differently
            answer = tokenizer(conv[-1]["content"], add_special_tokens=False)["input_ids"]
            full = prompt + answer + [tokenizer.eos_token_id]
        pairs.append((full, len(prompt)))
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    for b in range(0, len(pairs), batch_size):
        batch = pairs[b : b + batch_size]
        width = max(len(f) for f, _ in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (full, plen) in enumerate(batch):
            ids[row, : len(full)] = torch.tensor(full)
            labels[row, plen : len(full)] = torch.tensor(full[plen:])
            attention[row, : len(full)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
        logits = logits[:, :-1].float()
        target = labels[:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            target.reshape(-1),
            reduction="none",
            ignore_index=-100,
        ).view(target.shape)
        mask = target != -100
        for row in range(len(batch)):
            out.append((float(nll[row][mask[row]].sum()), int(mask[row].sum())))
    return out
