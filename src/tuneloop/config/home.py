"""Where tuneloop keeps its state: model cache, registry database and default run directories.

`TUNELOOP_HOME` moves everything (default: the user's cache dir, e.g. ~/.cache/tuneloop);
`TUNELOOP_DB_URL` points the registry at any SQLAlchemy URL (PostgreSQL for a team).
"""

from __future__ import annotations

import os
from pathlib import Path


def tuneloop_home() -> Path:
    """The root of tuneloop's local state, created on first use."""
    env = os.environ.get("TUNELOOP_HOME")
    if env:
        root = Path(env).expanduser()
    else:
        from platformdirs import user_cache_dir

        root = Path(user_cache_dir("tuneloop"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    """The model cache: one directory per cached model, each a normal HF model directory."""
    path = tuneloop_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """Default parent of run directories when a recipe does not name one."""
    path = tuneloop_home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_url() -> str:
    """The registry's SQLAlchemy URL: `TUNELOOP_DB_URL`, else SQLite in `TUNELOOP_HOME`."""
    return os.environ.get("TUNELOOP_DB_URL") or f"sqlite:///{tuneloop_home() / 'tuneloop.db'}"
