"""`tuneloop export`: user files in the output are never lost, and the export names its base
so another machine can load it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneloop.files import MARKER, OutputExists
from tuneloop.training import train
from tuneloop.training.export import export_run

from conftest import SUPPORT

TINY_HUB_ID = "tuneloop-tests/tiny-llama"


def _train(model: str | Path, tmp_path: Path, steps: int = 1) -> int:
    from tuneloop.config import recipe_from_dict

    recipe = recipe_from_dict(
        {
            "name": "tiny",
            "model": str(model),
            "data": {"train": str(SUPPORT / "train.jsonl"), "max_length": 64},
            "adapter": {"type": "lora", "r": 4, "alpha": 8},
            "training": {"max_steps": steps, "batch_size": 2, "learning_rate": 1e-2},
            "output_dir": str(tmp_path / "runs"),
        }
    )
    return train(recipe).run_id


def _front_matter(card: Path) -> dict[str, Any]:
    text = card.read_text(encoding="utf-8")
    assert text.startswith("---\n"), "a model card starts with its metadata header"
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_export_keeps_the_users_files(tiny_model: Path, tmp_path: Path) -> None:
    run = f"run:{_train(tiny_model, tmp_path)}"
    out = tmp_path / "d"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "keep.txt").write_text("x")

    # refused before anything is written, naming the way out
    with pytest.raises(OutputExists, match=r"d/adapter is not empty .* --force"):
        export_run(run, out, merged=False)
    assert [p.name for p in (out / "adapter").iterdir()] == ["keep.txt"]

    # with force the export goes in beside the user's file, which stays as it was
    written = export_run(run, out, merged=False, force=True)
    adapter = written["adapter"]
    assert (adapter / "keep.txt").read_text() == "x"
    assert (adapter / "adapter_model.safetensors").is_file()
    marker = json.loads((adapter / MARKER).read_text())
    assert marker["kind"] == "export" and "keep.txt" not in marker["files"]
    assert "adapter_config.json" in marker["files"] and "README.md" in marker["files"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary left"


def test_reexport_over_an_earlier_export(tiny_model: Path, tmp_path: Path) -> None:
    run = f"run:{_train(tiny_model, tmp_path)}"
    out = tmp_path / "exported"
    first = export_run(run, out, merged=False)["adapter"]
    assert set(json.loads((first / MARKER).read_text())["files"]) == {
        p.name for p in first.iterdir() if p.name != MARKER
    }
    # files the user adds to an export survive the next one; what the earlier export wrote
    # (by its marker's list) is replaced, even a file this export no longer writes
    (first / "notes.txt").write_text("mine")
    marker = json.loads((first / MARKER).read_text())
    (first / "stale.bin").write_text("old")
    marker["files"].append("stale.bin")
    (first / MARKER).write_text(json.dumps(marker))

    again = export_run(run, out, merged=False)["adapter"]  # no force needed
    assert (again / "notes.txt").read_text() == "mine"
    assert not (again / "stale.bin").exists()
    assert (again / "adapter_model.safetensors").is_file()

    # a folder exported whole and not touched since is simply renamed over
    fresh = export_run(run, tmp_path / "clean", merged=False)["adapter"]
    export_run(run, tmp_path / "clean", merged=False)
    listed = json.loads((fresh / MARKER).read_text())["files"]
    assert sorted(p.name for p in fresh.iterdir()) == sorted([*listed, MARKER])
    assert "notes.txt" not in json.loads((again / MARKER).read_text())["files"]


def test_full_folder_of_unknown_files_keeps_them_under_force(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Without a marker's list, force replaces only the names an export writes."""
    run = f"run:{_train(tiny_model, tmp_path)}"
    target = tmp_path / "out" / "adapter"
    target.mkdir(parents=True)
    (target / "adapter_model.safetensors").write_text("not weights")
    (target / "model-00001-of-00002.safetensors").write_text("an old shard")
    (target / "train.py").write_text("print('mine')")
    export_run(run, tmp_path / "out", merged=False, force=True)
    assert (target / "train.py").read_text() == "print('mine')"
    assert not (target / "model-00001-of-00002.safetensors").exists()
    from safetensors.torch import load_file

    assert any("lora_A" in k for k in load_file(target / "adapter_model.safetensors"))


def test_portable_base_reference(bundled_model_dir: Path, tmp_path: Path) -> None:
    from tuneloop.training.export import portable_base

    hub = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_base("smollm2-135m-instruct", str(bundled_model_dir)) == hub
    # a run records the bundled model by its cached folder; a copy of it is still known
    assert portable_base(str(bundled_model_dir), str(bundled_model_dir)) == hub
    copy = tmp_path / "elsewhere"
    shutil.copytree(bundled_model_dir, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    assert portable_base(str(copy), str(copy)) == hub
    assert portable_base("org/model", "org/model") == "org/model"
    assert portable_base("run:3", "/data/base") == "/data/base"
    assert portable_base("../models/base", "/abs/models/base") == "../models/base"
    assert portable_base("smollm2-135m-instruct", "/x", override="me/base") == "me/base"


def _hub_cache(cache: Path, hub_id: str, model_dir: Path) -> None:
    """Lay `model_dir` out as the Hugging Face cache holds a downloaded `hub_id`."""
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, repo / "snapshots" / commit)


_LOAD = """
import json, sys, torch
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
with torch.no_grad():
    logits = model(torch.tensor([[1, 20, 300, 4000, 5]])).logits
print(json.dumps({"base": model.peft_config["default"].base_model_name_or_path,
                  "logits": logits[0, -1, :8].tolist()}))
"""


def _load_elsewhere(adapter: Path, cache: Path, home: Path) -> dict[str, Any]:
    """Load a copied adapter by its own config in a fresh process that sees only `cache`."""
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "TUNELOOP_HOME": str(home),
    }
    env.pop("HF_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD, str(adapter)],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_export_loads_on_a_machine_without_the_exporting_cache(
    tiny_model: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    run = f"run:{_train(tiny_model, tmp_path, steps=2)}"
    written = export_run(run, tmp_path / "export", base_model=TINY_HUB_ID)
    machine = tmp_path / "other-machine"
    copied = shutil.copytree(written["adapter"], machine / "adapter")
    shutil.rmtree(tmp_path / "export")

    config = json.loads((copied / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY_HUB_ID
    text = (copied / "adapter_config.json").read_text()
    assert str(tmp_path) not in text and str(Path.home()) not in text

    card = _front_matter(copied / "README.md")
    assert card["base_model"] == TINY_HUB_ID and card["library_name"] == "peft"
    assert card["tags"] == ["tuneloop", "sft", "lora"] and "license" not in card

    # the other machine has the base in its hub cache under its reference, nothing else
    (machine / "home").mkdir()
    _hub_cache(machine / "hf", TINY_HUB_ID, tiny_model)
    loaded = _load_elsewhere(copied, machine / "hf", machine / "home")
    assert loaded["base"] == TINY_HUB_ID

    # and it computes what the run's own adapter does here
    from peft import PeftModel

    from tuneloop.models.resolve import resolve

    here = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
        resolve(run).adapter,
    ).eval()
    with torch.no_grad():
        expected = here(torch.tensor([[1, 20, 300, 4000, 5]])).logits[0, -1, :8]
    assert torch.allclose(torch.tensor(loaded["logits"]), expected, atol=1e-5)


def test_merged_card_and_default_reference(tiny_model: Path, tmp_path: Path) -> None:
    run = f"run:{_train(tiny_model, tmp_path)}"
    written = export_run(run, tmp_path / "export")
    # a local base is named as the user wrote it in the recipe (here, an absolute path)
    config = json.loads((written["adapter"] / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model)
    merged = _front_matter(written["merged"] / "README.md")
    assert merged["library_name"] == "transformers"
    assert "base_model" not in merged, "a hub header names only hub ids as the base"
    assert (written["merged"] / MARKER).is_file()


@pytest.mark.slow
def test_bundled_model_export_names_its_hub_id(bundled_model_dir: Path, tmp_path: Path) -> None:
    hub = "HuggingFaceTB/SmolLM2-135M-Instruct"
    run = f"run:{_train('smollm2-135m-instruct', tmp_path)}"
    written = export_run(run, tmp_path / "export", merged=False)
    machine = tmp_path / "other-machine"
    copied = shutil.copytree(written["adapter"], machine / "adapter")
    config = json.loads((copied / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == hub
    card = _front_matter(copied / "README.md")
    assert card["base_model"] == hub and card["license"] == "apache-2.0"
    (machine / "home").mkdir()
    _hub_cache(machine / "hf", hub, bundled_model_dir)
    assert _load_elsewhere(copied, machine / "hf", machine / "home")["base"] == hub
