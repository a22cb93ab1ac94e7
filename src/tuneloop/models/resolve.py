"""Resolve a model reference and load it with its tokenizer.

A reference is one of: a bundled name (`smollm2-135m-instruct`, pulled on first use), a
run (`run:12`, its final model), a local directory (a full model or a PEFT adapter whose
config names its base), or a Hugging Face hub id (`org/name`, the standard
`from_pretrained` call; needs network).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import ModelError
from tuneloop.models import bundled

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ResolvedModel:
    """Where a reference points: a base model path or id, plus an optional adapter dir."""

    ref: str
    base: str
    adapter: str | None = None
    run_id: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    prompt_format: dict[str, Any] | None = None  # how the run turned rows into prompts


def resolve(ref: str, pull_missing: bool = True) -> ResolvedModel:
    """Turn a user's model reference into concrete paths, or raise a one-line ModelError."""
    ref = ref.strip()
    if not ref:
        raise ModelError("empty model reference")
    if ref in bundled.BUNDLED:
        path = bundled.pull(ref) if pull_missing else bundled.cached_path(ref)
        return ResolvedModel(ref=ref, base=str(path))
    if ref.startswith("run:"):
        return _resolve_run(ref)
    path = Path(ref).expanduser()
    if path.exists():
        return _resolve_dir(ref, path)
    cached = bundled.cached_path(ref) if "/" not in ref else None
    if cached is not None and cached.is_dir():
        return _resolve_dir(ref, cached)
    if _HUB_ID.match(ref) and not ref.startswith((".", "/")):
        return ResolvedModel(ref=ref, base=ref)
    known = ", ".join(bundled.BUNDLED)
    raise ModelError(
        f"unknown model reference {ref!r}: not a bundled model ({known}), a run (run:ID), "
        "an existing directory, or a hub id (org/name)"
    )


def _resolve_dir(ref: str, path: Path) -> ResolvedModel:
    if not path.is_dir():
        raise ModelError(f"model reference {ref!r} is a file, not a model directory")
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.is_file():
        base = json.loads(adapter_cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise ModelError(f"{adapter_cfg} does not name its base model")
        return ResolvedModel(ref=ref, base=resolve(base).base, adapter=str(path))
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a model directory (no config.json or adapter_config.json)")
    return ResolvedModel(ref=ref, base=str(path))


def _resolve_run(ref: str) -> ResolvedModel:
    from tuneloop.registry import get_run, models_for_run

    try:
        run_id = int(ref.removeprefix("run:"))
    except ValueError:
        raise ModelError(f"bad run reference {ref!r}; expected run:<id>") from None
    run = get_run(run_id)
    finals = [m for m in models_for_run(run_id) if m.kind in ("adapter", "full")]
    if not finals:
        raise ModelError(f"run {run_id} ({run.status}) has no saved model")
    resolved = _resolve_dir(ref, Path(finals[-1].path))
    resolved.run_id = run_id
    resolved.recipe = run.recipe
    meta = Path(run.run_dir or "") / "run.json"
    if run.run_dir and meta.is_file():
        resolved.prompt_format = json.loads(meta.read_text(encoding="utf-8")).get("prompt_format")
    return resolved


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise ModelError(
            f"cannot load tokenizer from {path!r}: {str(err).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ModelError(f"tokenizer at {path!r} has no chat template; chat models only for now")
    return tokenizer


def load_model(resolved: ResolvedModel, dtype: Any = None, merge: bool = True) -> Any:
    """Load the model (base + adapter, merged for fast inference unless merge=False)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.base, dtype=dtype)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load model {resolved.ref!r}: {first}") from None
    if resolved.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolved.adapter)
        if merge:
            model = model.merge_and_unload()
    model.eval()
    return model


def load(ref: str, dtype: Any = None) -> tuple[Any, Any, ResolvedModel]:
    """Resolve and load a model and its tokenizer for inference."""
    resolved = resolve(ref)
    tokenizer_path = (
        resolved.adapter
        if resolved.adapter and _has_tokenizer(resolved.adapter)
        else (resolved.base)
    )
    tokenizer = load_tokenizer(tokenizer_path)
    return load_model(resolved, dtype=dtype), tokenizer, resolved


def _has_tokenizer(path: str) -> bool:
    return (Path(path) / "tokenizer_config.json").is_file()
