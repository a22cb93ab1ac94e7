"""Several LoRA adapters over one base model, chosen per request, swapped while serving.

`tuneloop serve BASE --adapter support=run:7 --adapter billing=run:9` loads the base once
and each run's LoRA adapter beside it (peft's multi-adapter model). A request's `model`
picks the adapter (the base itself is served under `--name`); rows of different adapters
share one decoding batch, since peft applies each row's own adapter (`adapter_names`), so
adding a tenant costs its adapter's memory, not another model.

Each adapter keeps its run's prompting (system prompt, label hints), exactly as the run is
served alone. A traffic split sends a share of one name's requests to a candidate adapter
(a canary or beta test) and the traffic log records which adapter answered.

Adapters are added, replaced and removed on the worker thread once the rows decoding at
that moment have finished (`ModelWorker.call`; new requests wait meanwhile), so a swap
never races a forward pass and no answer mixes two adapters' weights. Each load gets its
own peft name (`support@2`): a replacement is loaded beside the old weights, the served
name is pointed at it, and only then are the old weights deleted.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

from tuneloop.errors import TuneloopError

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class Adapter:
    name: str
    ref: str
    prompting: Any  # tuneloop.data.prompting.Prompting
    peft_name: str  # the name of its weights inside the peft model


@dataclass
class Split:
    """`share` of the requests for `model` go to `candidate`."""

    model: str
    candidate: str
    share: float


@dataclass
class AdapterSet:
    """The served names: the base (`base_name`) and its adapters, plus traffic splits."""

    base_name: str
    base_ref: str
    base_path: str  # the resolved base weights every adapter must share
    base_prompting: Any
    adapters: dict[str, Adapter] = field(default_factory=dict)
    splits: dict[str, Split] = field(default_factory=dict)
    loads: int = 0  # peft names are NAME@LOADS
    _rng: random.Random = field(default_factory=random.Random)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def names(self) -> list[str]:
        return [self.base_name, *sorted(self.adapters)]

    def route(self, model: str) -> str | None:
        """The name that answers a request for `model` (after the split), None if unknown."""
        with self._lock:
            if model != self.base_name and model not in self.adapters:
                return None
            split = self.splits.get(model)
            if split and split.candidate in self.adapters and self._rng.random() < split.share:
                return split.candidate
            return model

    def prompting(self, name: str) -> Any:
        return self.base_prompting if name == self.base_name else self.adapters[name].prompting

    def adapter_name(self, name: str) -> str | None:
        """peft's name for the rows of served name `name` (None: the base model)."""
        return None if name == self.base_name else self.adapters[name].peft_name

    def ref_of(self, name: str) -> str:
        return self.base_ref if name == self.base_name else self.adapters[name].ref

    def set_split(self, model: str, candidate: str, share: float) -> None:
        if not 0 <= share <= 1:
            raise TuneloopError(f"a split's share must be between 0 and 1, got {share}")
        if model != self.base_name and model not in self.adapters:
            raise TuneloopError(f"no served model {model!r} to split")
        if candidate not in self.adapters:
            raise TuneloopError(f"no adapter {candidate!r} to send a share to")
        with self._lock:
            if share == 0:
                self.splits.pop(model, None)
            else:
                self.splits[model] = Split(model, candidate, share)


def install(worker: Any, adapters: AdapterSet, name: str, ref: str) -> Adapter:
    """Load run `ref`'s adapter as served name `name` (adding, or replacing the weights it
    had) on `worker`'s model. Call on the worker thread (`worker.call`) once it decodes."""
    from tuneloop.data.prompting import Prompting

    if name == adapters.base_name:
        raise TuneloopError(f"{name!r} is the base model's name; choose another adapter name")
    resolved, folder = resolve_adapter(ref, adapters.base_path)
    prompting = Prompting.of(resolved)
    adapters.loads += 1
    peft_name = f"{name}@{adapters.loads}"
    worker.model = attach(worker.model, peft_name, folder)
    old = adapters.adapters.get(name)
    adapters.adapters[name] = Adapter(name, ref, prompting, peft_name)
    if old is not None:
        detach(worker.model, old.peft_name)
    return adapters.adapters[name]


def uninstall(worker: Any, adapters: AdapterSet, name: str) -> Adapter:
    """Stop serving adapter `name` and free its weights (on the worker thread)."""
    if name not in adapters.adapters:
        raise TuneloopError(f"no adapter {name!r} is served")
    old = adapters.adapters.pop(name)
    adapters.splits = {
        k: v for k, v in adapters.splits.items() if name not in (v.model, v.candidate)
    }
    detach(worker.model, old.peft_name)
    return old


def resolve_adapter(ref: str, base_path: str) -> tuple[Any, str]:
    """(resolved model, adapter folder) of a LoRA run on the served base; a clear error for
    a full fine-tune or a run on another base."""
    from pathlib import Path

    from tuneloop.models import resolve

    resolved = resolve(ref)
    if not resolved.adapter:
        raise TuneloopError(
            f"{ref} has no LoRA adapter (a full fine-tune or a base model): serve it on its own "
            "with `tuneloop serve`"
        )
    if Path(resolved.base).resolve() != Path(base_path).resolve() and resolved.base != base_path:
        raise TuneloopError(
            f"{ref} was trained on {resolved.base}, not on the served base {base_path}"
        )
    return resolved, resolved.adapter


def attach(model: Any, name: str, adapter_dir: str) -> Any:
    """Load `adapter_dir` into `model` under `name` (wrapping a plain model on first use);
    returns the (peft) model."""
    from peft import PeftModel

    if name == BASE:
        raise TuneloopError(f"{BASE!r} is reserved")
    if isinstance(model, PeftModel):
        model.load_adapter(adapter_dir, adapter_name=name, is_trainable=False)
        return model
    wrapped = PeftModel.from_pretrained(model, adapter_dir, adapter_name=name, is_trainable=False)
    wrapped.eval()
    return wrapped


def detach(model: Any, name: str) -> None:
    from peft import PeftModel

    if isinstance(model, PeftModel) and name in model.peft_config:
        if len(model.peft_config) == 1:
            # peft keeps one adapter at least; an unused one stays loaded but unreachable
            return
        if model.active_adapter == name:
            model.set_adapter(next(n for n in model.peft_config if n != name))
        model.delete_adapter(name)
