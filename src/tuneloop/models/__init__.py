"""Model references (bundled, run, local dir, hub id), loading, and tiny test models."""

from tuneloop.models.bundled import BUNDLED, is_cached, list_cached, pull
from tuneloop.models.resolve import ResolvedModel, load, load_model, load_tokenizer, resolve

__all__ = [
    "BUNDLED",
    "ResolvedModel",
    "is_cached",
    "list_cached",
    "load",
    "load_model",
    "load_tokenizer",
    "pull",
    "resolve",
]
