"""Replay against forgetting: general examples mixed into a fine-tuning run's rows.

Fine-tuning on a narrow task moves a model away from how it answered everything else (the
forgetting check measures it). Replay keeps a share of every epoch on ordinary requests:
`training.replay.ratio` of the training rows come from a file of general examples, or,
with `source: self`, are **self-distilled**: the starting model's own answers to a set of
general prompts. Those pull the model back toward what it said where the task does not
care, and need no labelled general data.

Self-distilled answers are generated once per (starting model, prompts, length) and
cached under `$TUNELOOP_HOME/cache/replay/`, so a sweep or a resumed run reuses them
(resume stays exact), and each set is a registered dataset version (source
`replay:<key>`) linked to the run as its `replay` dataset.

The built-in prompts (`builtin:replay`, `training/replay_prompts.jsonl`, written by
`scripts/build_replay_prompts.py`) follow the forgetting probes' categories but hold no
probe, so the check still measures forgetting, not memory.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any

from tuneloop.errors import RecipeError

BUILTIN = "builtin:replay"
BUILTIN_PATH = Path(__file__).with_name("replay_prompts.jsonl")

Conversation = list[dict[str, str]]


def replay_prompts(ref: str) -> list[Conversation]:
    """The prompts to self-distil: the built-in set, or a file's prompt rows (chat rows
    lose their last answer)."""
    if ref == BUILTIN:
        return [
            json.loads(line)["messages"]
            for line in BUILTIN_PATH.read_text(encoding="utf-8").splitlines()
        ]
    from tuneloop.data.readers import read_rows

    rows = read_rows(ref, strict=True).rows
    prompts = []
    for row in rows:
        if row.get("kind") == "prompt":
            prompts.append(list(row["prompt"]))
        elif row.get("messages"):
            messages = list(row["messages"])
            while messages and messages[-1]["role"] == "assistant":
                messages.pop()
            if messages:
                prompts.append(messages)
    if not prompts:
        raise RecipeError(f"training.replay.prompts {ref}: no prompts in the file")
    return prompts


def model_key(resolved: Any, prompts: list[Conversation], max_new_tokens: int) -> str:
    """A key for what is computed from the starting model on a prompt set (the replay
    answers, EWC's Fisher): its folders' configs and weight files by size and time, the
    prompts and a length (answer tokens, or the Fisher's truncation)."""
    h = hashlib.sha256()
    for folder in filter(None, (resolved.base, resolved.adapter)):
        for path in sorted(Path(folder).glob("*")):
            if path.suffix in (".json", ".jinja"):
                h.update(path.name.encode() + path.read_bytes())
            elif path.suffix in (".safetensors", ".bin"):
                stat = path.stat()
                h.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    h.update(json.dumps(prompts, sort_keys=True).encode())
    h.update(str(max_new_tokens).encode())
    return h.hexdigest()[:20]


def self_distilled(
    resolved: Any, prompts_ref: str, max_new_tokens: int, main: bool = True
) -> tuple[list[Conversation], dict[str, Any]]:
    """The starting model's answers to the replay prompts, as chat rows, and their record
    (cache key, file, whether it was reused, seconds)."""
    from tuneloop.config.home import tuneloop_home
    from tuneloop.files import atomic_write_text

    prompts = replay_prompts(prompts_ref)
    key = model_key(resolved, prompts, max_new_tokens)
    path = tuneloop_home() / "cache" / "replay" / f"{key}.jsonl"
    record: dict[str, Any] = {"key": key, "file": str(path), "prompts": prompts_ref}
    if path.is_file():
        rows = [json.loads(line)["messages"] for line in path.read_text("utf-8").splitlines()]
        return rows, {**record, "cached": True, "seconds": 0.0}
    import torch

    from tuneloop.models.generate import generate
    from tuneloop.models.resolve import load_model, load_tokenizer
    from tuneloop.progress import Progress

    started = time.perf_counter()
    model = load_model(resolved, dtype=torch.float32, merge=True).eval()
    tokenizer = load_tokenizer(resolved.adapter or resolved.base, resolved)
    bar = Progress(len(prompts), "replay: the starting model's answers", "prompt")
    answers, _ = generate(
        model, tokenizer, prompts, max_new_tokens, batch_size=32, progress=bar.update
    )
    bar.close()
    del model
    rows = [
        [*p, {"role": "assistant", "content": a.text.strip()}]
        for p, a in zip(prompts, answers, strict=True)
        if a.text.strip()
    ]
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps({"messages": r}) + "\n" for r in rows))
    return rows, {**record, "cached": False, "seconds": round(time.perf_counter() - started, 1)}


def replay_count(task_rows: int, ratio: float) -> int:
    """Replay rows that make `ratio` of the mixed set: ratio / (1 - ratio) per task row."""
    return round(task_rows * ratio / (1.0 - ratio)) if ratio > 0 else 0


def mix(
    task: list[Conversation], replay: list[Conversation], ratio: float, seed: int
) -> list[Conversation]:
    """The task rows followed by `replay_count` replay rows, drawn without repeats until
    every replay row is used once (seeded); the training loop shuffles them together."""
    if not replay:
        raise RecipeError("training.replay: the replay source gave no rows")
    want = replay_count(len(task), ratio)
    rng = random.Random(seed)
    drawn: list[Conversation] = []
    while len(drawn) < want:
        order = list(range(len(replay)))
        rng.shuffle(order)
        drawn += [replay[i] for i in order[: want - len(drawn)]]
    return [*task, *drawn]


def replay_rows(recipe: Any, resolved: Any, main: bool) -> tuple[list[Conversation], dict]:
    """The replay source's rows and what to record about them (before mixing)."""
    cfg = recipe.training.replay
    if cfg.source == "self":
        return self_distilled(resolved, cfg.prompts, cfg.max_new_tokens, main)
    from tuneloop.data.readers import read_conversations

    rows = read_conversations(cfg.source).conversations
    return rows, {"file": cfg.source, "cached": False, "seconds": 0.0}
