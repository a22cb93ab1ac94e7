"""The public Python API: typed results, the same checks as the CLI, a run's model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import tuneloop

from conftest import SUPPORT, chat, ticket_run_recipe, write_jsonl


def test_inspect_returns_a_typed_card_naming_malformed_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [chat("hi", "hello"), chat("bye", "goodbye")])
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"messages": [}\n')
    card = tuneloop.inspect(path)
    assert (card.format, card.rows, card.malformed) == ("messages", 2, 1)
    assert card.malformed_examples[0]["where"] == "line 3"
    assert card.card["input"]["rows_read"] == 2
    assert "<html" in card.to_html().lower()
    again = json.loads(card.to_json())
    assert again["rows"] == 2 and again["card"]["input"]["malformed"] == 1


def test_train_evaluate_and_a_runs_model_from_python(tiny_model: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    spec = ticket_run_recipe(tiny_model, tmp_path, "api", ["hardware", "accounts"])
    spec["training"]["logging_steps"] = 1
    recipe.write_text(yaml.safe_dump(spec), encoding="utf-8")
    run = tuneloop.train(recipe, "training.max_steps=3")
    assert run.status == "completed" and run.ref == f"run:{run.id}"
    assert run.model_dir is not None and (run.model_dir / "adapter_config.json").is_file()
    assert [e["step"] for e in run.history() if "loss" in e] == [1, 2, 3]
    assert tuneloop.get_run(run.id).datasets, "the training data is linked to the run"

    validation = run.run_dir / "validation.jsonl"
    result = tuneloop.evaluate(run.ref, validation, ["exact_match"], max_new_tokens=8)
    table = result.table()
    assert list(table.columns[:3]) == ["question", "reference", "prediction"]
    assert len(table) == len(result.examples) and "exact_match" in table.columns
    assert result.classification is not None  # labelled rows: accuracy and macro-F1 too
    stored = json.loads(result.to_json(tmp_path / "eval.json"))
    assert stored == json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    assert stored["metrics"] == result.metrics

    # the run's model answers new questions prompted as in training: its system prompt
    from tuneloop.models import load
    from tuneloop.models.generate import generate

    model, tokenizer, _ = load(run.ref)
    question = [{"role": "user", "content": "printer 7 is jammed again"}]
    prompted = [{"role": "system", "content": "Route the ticket."}, *question]
    (expected,), _ = generate(model, tokenizer, [prompted], 8, 1)
    assert run.model().generate(question, max_new_tokens=8) == expected.text
    assert tuneloop.Model(run.ref).generate(["printer 7 is jammed again"], max_new_tokens=8) == [
        expected.text
    ]


def test_the_api_refuses_what_the_cli_refuses(tmp_path: Path) -> None:
    with pytest.raises(tuneloop.TuneloopError, match="expected run:ID"):
        tuneloop.train("", resume="run:x")
    with pytest.raises(tuneloop.TuneloopError, match="not a run directory"):
        tuneloop.run_directory(tmp_path)
    with pytest.raises(tuneloop.TuneloopError, match="nothing to sweep"):
        tuneloop.sweep(SUPPORT / "recipe.yaml")
    with pytest.raises(tuneloop.TuneloopError, match="unknown key"):
        tuneloop.load_recipe(SUPPORT / "recipe.yaml", ["training.learnin_rate=1"])
