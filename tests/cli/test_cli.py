"""The real `tuneloop` command in a subprocess: help speed, and bad input as one clean line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SUPPORT, assert_one_line_error, chat, run_cli, write_jsonl


def test_help_does_not_import_torch() -> None:
    code = "import sys, tuneloop.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
    proc = run_cli("--help")
    assert proc.returncode == 0 and "quickstart" in proc.stdout


def test_recipe_typo(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump({"data": {"train": str(SUPPORT / "train.jsonl")}, "training": {"epocs": 2}})
    )
    assert_one_line_error(run_cli("train", str(recipe)), "did you mean 'training.epochs'")


def test_missing_data_file(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"train": "missing.jsonl"}}))
    assert_one_line_error(run_cli("train", str(recipe)), "data file not found")


def test_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(chat("q", "a")) + "\n" + '{"messages": [\n', encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"train": str(data)}}))
    assert_one_line_error(run_cli("train", str(recipe)), "line 2: invalid JSON")
    assert_one_line_error(run_cli("eval", "--model", "x", "--data", str(data)), "line 2")


def test_unknown_model_reference(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [chat("q", "a")])
    proc = run_cli("eval", "--model", "no-such-model", "--data", str(data))
    assert_one_line_error(proc, "unknown model reference 'no-such-model'")


def test_bad_override_and_metric(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [chat("q", "a")])
    proc = run_cli("recipe", "validate", str(SUPPORT / "recipe.yaml"), "adapter.r=0")
    assert_one_line_error(proc, "adapter.r: Input should be greater than 0")
    proc = run_cli("eval", "--model", "x", "--data", str(data), "--metric", "bluer")
    assert_one_line_error(proc, "unknown metric(s) bluer")


def test_recipe_schema_and_validate() -> None:
    proc = run_cli("recipe", "schema")
    assert proc.returncode == 0
    assert proc.stdout == (REPO / "docs" / "recipes.md").read_text(encoding="utf-8")
    proc = run_cli("recipe", "validate", str(SUPPORT / "recipe.yaml"), "training.epochs=2")
    assert proc.returncode == 0
    assert yaml.safe_load(proc.stdout)["training"]["epochs"] == 2


@pytest.mark.parametrize("args", [("runs", "list"), ("models", "list")])
def test_listing_commands(args: tuple[str, ...]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr


def test_train_eval_and_runs_show_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "train",
        str(SUPPORT / "recipe.yaml"),
        f"model={tiny_model}",
        "training.max_steps=2",
        "training.batch_size=2",
        f"output_dir={tmp_path / 'runs'}",
        "name=cli-tiny",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("run 1 completed")
    proc = run_cli("runs", "show", "1")
    shown = json.loads(proc.stdout)
    assert shown["status"] == "completed" and shown["models"][0]["kind"] == "adapter"
    assert shown["recipe"]["training"]["max_steps"] == 2
    out_json = tmp_path / "eval.json"
    proc = run_cli(
        "eval",
        "--model",
        "run:1",
        "--data",
        str(SUPPORT / "eval.jsonl"),
        "--limit",
        "3",
        "--max-new-tokens",
        "4",
        "--json",
        str(out_json),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out_json.read_text())
    assert len(result["examples"]) == 3 and "rouge_l" in result["metrics"]
    assert_one_line_error(run_cli("runs", "show", "99"), "no run with id 99")


def test_curate_into_a_foreign_folder_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"the user's own file")
    data = str(SUPPORT / "train.jsonl")
    proc = run_cli("data", "curate", data, "--out", str(out))
    assert_one_line_error(proc, "pass --force to replace it")
    assert [p.name for p in out.iterdir()] == ["train.parquet"]
    proc = run_cli("data", "curate", data, "--out", str(out), "--force")
    assert proc.returncode == 0, proc.stderr
    assert (out / ".tuneloop-output.json").is_file() and (out / "card.html").is_file()
