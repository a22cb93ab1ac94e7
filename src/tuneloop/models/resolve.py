"""Resolve a model reference and load it with its tokenizer.

A reference is one of: a bundled name (`smollm2-135m-instruct`, pulled on first use), a
run (`run:12`, its final model), a local directory (a full model or a PEFT adapter whose
config names its base), or a Hugging Face hub id (`org/name`, the standard
`from_pretrained` call; needs network).

Loading reads safetensors only and runs no code a model ships, unless the recipe's
`model_loading` opts in (`allow_pickle_weights`, `trust_remote_code` with a pinned
`revision`): a pickled `pytorch_model.bin` or a hub repository's Python files run with the
user's permissions, so a downloaded or shared model must not get that by default.
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
    # the recipe's model_loading opt-ins (a run's apply to loading that run's model)
    allow_pickle_weights: bool = False
    trust_remote_code: bool = False
    revision: str | None = None

    def pretrained_kwargs(self) -> dict[str, Any]:
        """The `from_pretrained` keywords these opt-ins allow: safetensors only unless
        pickles are allowed; shipped code only when trusted (at a pinned revision)."""
        kwargs: dict[str, Any] = {"use_safetensors": None if self.allow_pickle_weights else True}
        if self.trust_remote_code:
            kwargs["trust_remote_code"] = True
        if self.revision:
            kwargs["revision"] = self.revision
        return kwargs


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_OPT_IN = "model_loading.allow_pickle_weights: true"


def _apply_loading(resolved: ResolvedModel, loading: Any) -> ResolvedModel:
    resolved.allow_pickle_weights = bool(getattr(loading, "allow_pickle_weights", False))
    resolved.trust_remote_code = bool(getattr(loading, "trust_remote_code", False))
    resolved.revision = getattr(loading, "revision", None)
    return resolved


def resolve(ref: str, pull_missing: bool = True, loading: Any = None) -> ResolvedModel:
    """Turn a user's model reference into concrete paths, or raise a one-line ModelError.

    loading: the recipe's `model_loading` section (config.recipe.ModelLoadingConfig); None
    keeps the safe defaults, or, for `run:ID`, the opt-ins that run's recipe made."""
    resolved = _resolve(ref, pull_missing)
    if loading is not None:
        _apply_loading(resolved, loading)
    return resolved


def _resolve(ref: str, pull_missing: bool) -> ResolvedModel:
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
    finals = [m for m in models_for_run(run_id) if m.kind in ("adapter", "full", "reward")]
    if not finals:
        raise ModelError(f"run {run_id} ({run.status}) has no saved model")
    resolved = _resolve_dir(ref, Path(finals[-1].path))
    resolved.run_id = run_id
    resolved.recipe = run.recipe
    loading = (run.recipe or {}).get("model_loading") or {}
    resolved.allow_pickle_weights = bool(loading.get("allow_pickle_weights", False))
    resolved.trust_remote_code = bool(loading.get("trust_remote_code", False))
    resolved.revision = loading.get("revision")
    meta = Path(run.run_dir or "") / "run.json"
    if run.run_dir and meta.is_file():
        resolved.prompt_format = json.loads(meta.read_text(encoding="utf-8")).get("prompt_format")
    return resolved


def load_tokenizer(path: str, resolved: ResolvedModel | None = None) -> Any:
    """The tokenizer at `path`; `resolved` carries the opt-ins (shipped code, revision)."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {}
    if resolved is not None:
        kwargs = {k: v for k, v in resolved.pretrained_kwargs().items() if k != "use_safetensors"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
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

    from tuneloop.models.reward import is_reward_dir

    dtype = dtype or torch.float32
    if not resolved.adapter and is_reward_dir(resolved.base):
        raise ModelError(
            f"{resolved.ref} is a reward model (a score head, no language-model head): it "
            "scores answers (tuneloop eval --data PAIRS, compare --judge) but cannot generate"
        )
    check_weights_format(resolved)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved.base, dtype=dtype, **resolved.pretrained_kwargs()
        )
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = ""
        if not resolved.allow_pickle_weights and "safetensors" in first:
            hint = f" (tuneloop loads safetensors only; set {_OPT_IN} in the recipe to allow "
            hint += "pickled weights from a source you trust)"
        raise ModelError(f"cannot load model {resolved.ref!r}: {first}{hint}") from None
    if resolved.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolved.adapter)
        if merge:
            model = model.merge_and_unload()
    model.eval()
    return model


def check_weights_format(resolved: ResolvedModel) -> None:
    """Refuse a local model or adapter folder whose weights are only pickles (they can run
    code when loaded) unless the recipe allows them; a hub id is checked by transformers."""
    if resolved.allow_pickle_weights:
        return
    for folder in (resolved.base, resolved.adapter):
        path = Path(folder) if folder else None
        if path is None or not path.is_dir() or any(path.glob("*.safetensors")):
            continue
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise ModelError(
                f"{path} holds only pickled weights ({pickles[0]}), which can run code when "
                f"loaded; convert them to safetensors, or set {_OPT_IN} in the recipe if you "
                "trust their source"
            )


def load(ref: str, dtype: Any = None) -> tuple[Any, Any, ResolvedModel]:
    """Resolve and load a model and its tokenizer for inference."""
    resolved = resolve(ref)
    tokenizer_path = (
        resolved.adapter
        if resolved.adapter and _has_tokenizer(resolved.adapter)
        else (resolved.base)
    )
    tokenizer = load_tokenizer(tokenizer_path, resolved)
    return load_model(resolved, dtype=dtype), tokenizer, resolved


def _has_tokenizer(path: str) -> bool:
    return (Path(path) / "tokenizer_config.json").is_file()
