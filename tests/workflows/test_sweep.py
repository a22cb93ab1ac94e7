"""Sweeps: a grid times data fractions, each a real (tiny) run; table, plots, best run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tuneloop import registry
from tuneloop.cli import cli
from tuneloop.errors import RecipeError
from tuneloop.workflows.sweep import axis_order, parse_axis, resolve_key

from conftest import SUPPORT


def test_keys_resolve_to_recipe_fields() -> None:
    assert resolve_key("learning_rate") == "training.learning_rate"
    assert resolve_key("lora.r") == "adapter.r"
    assert parse_axis("lora.r=8,16") == ("adapter.r", [8, 16])
    with pytest.raises(RecipeError, match="no recipe field named 'learnig_rate'"):
        resolve_key("learnig_rate")
    with pytest.raises(RecipeError, match="ambiguous"):
        resolve_key("batch_size")  # training.batch_size and eval.batch_size


def test_sweep_grid_and_data_fractions(tiny_model: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "sw",
                "model": str(tiny_model),
                "data": {
                    "train": str(SUPPORT / "train.jsonl"),
                    "validation_split": 0.1,
                    "max_length": 96,
                },
                "adapter": {"r": 4, "alpha": 8},
                "training": {"max_steps": 2, "batch_size": 4, "logging_steps": 1},
            }
        )
    )
    out = tmp_path / "sweep"
    result = CliRunner().invoke(
        cli,
        [
            "sweep",
            str(recipe),
            "--grid",
            "learning_rate=1e-3,3e-2",
            "adapter.alpha=8,16",
            "--data-fractions",
            "0.5,1.0",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    runs = data["runs"]
    assert len(runs) == 8 and data["metric"] == "eval_loss"
    assert {
        (r["training.learning_rate"], r["adapter.alpha"], r["data.fraction"]) for r in runs
    } == {(lr, a, f) for lr in (1e-3, 3e-2) for a in (8, 16) for f in (0.5, 1.0)}
    # half the data really is about half the rows
    rows = {r["data.fraction"]: r["train_rows"] for r in runs}
    assert abs(rows[0.5] - rows[1.0] / 2) <= 20
    best = min(runs, key=lambda r: r["eval_loss"])
    assert data["best_run_id"] == best["run_id"]
    assert "**best**" in (out / "results.md").read_text()
    for name in ("learning_rate", "alpha", "data"):
        png = next(out.glob(f"eval_loss_vs_*{name}.png"))
        assert png.stat().st_size > 5000
    assert len(registry.list_runs()) == 8


def test_a_bad_value_fails_before_any_training(tiny_model: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump({"model": str(tiny_model), "data": {"train": str(SUPPORT / "train.jsonl")}})
    )
    result = CliRunner().invoke(cli, ["sweep", str(recipe), "learning_rate=1e-3,-1"])
    assert isinstance(result.exception, RecipeError)
    assert "training.learning_rate: Input should be greater than 0" in str(result.exception)
    assert registry.list_runs() == []
    result = CliRunner().invoke(cli, ["sweep", str(recipe), "learning_rate=1e-3,1e-2"])
    assert "needs validation data" in str(result.exception)  # said before training
    assert registry.list_runs() == []


def test_sweep_with_the_forgetting_check(tiny_model: Path, tmp_path: Path) -> None:
    """Every run gets the forgetting drop against the starting model's probe answers (the
    same numbers the check itself computes from the recorded answers), the table and plot
    carry it, and the best run is chosen among the unflagged ones."""
    from tuneloop.evaluation.suite import forgetting_summary

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "fg",
                "model": str(tiny_model),
                "data": {
                    "train": str(SUPPORT / "train.jsonl"),
                    "max_length": 96,
                    "validation_split": 0.2,
                },
                "adapter": {"r": 4, "alpha": 8},
                "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 5e-2},
            }
        )
    )
    out = tmp_path / "sweep"
    args = ["sweep", str(recipe), "training.l2_to_base=0,1.0", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--forgetting", "--probe-limit", "6"])
    assert result.exit_code == 0, result.output
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert len(runs) == 2 and "forgetting drop" in result.output
    for row in runs:
        # the two probe evaluations recorded for this row: the start's and the run's own
        start, tuned = row["forgetting_evals"]
        assert tuned in {e.id for e in registry.evals_for_run(row["run_id"])}
        found = forgetting_summary(
            [{"scores": x.scores} for x in registry.eval_examples(start)],
            [{"scores": x.scores} for x in registry.eval_examples(tuned)],
        )
        assert row["forgetting_drop"] == pytest.approx(found["drop"])
        assert row["forgetting_low"] <= row["forgetting_drop"] <= row["forgetting_high"]
        assert row["forgetting_flagged"] == found["flagged"]
    assert "forgetting_drop" in (out / "results.md").read_text()
    assert (out / "eval_loss_vs_training_l2_to_base.png").stat().st_size > 5000


def test_best_run_is_the_best_the_forgetting_check_does_not_flag() -> None:
    from tuneloop.workflows.sweep import _best

    rows = [
        {"run_id": 1, "rouge_l": 0.30, "forgetting_flagged": True},
        {"run_id": 2, "rouge_l": 0.25, "forgetting_flagged": False},
        {"run_id": 3, "rouge_l": 0.20, "forgetting_flagged": False},
    ]
    assert _best(rows, "rouge_l")["run_id"] == 2
    assert _best([{**r, "forgetting_flagged": True} for r in rows], "rouge_l")["run_id"] == 1
    assert _best([{k: v for k, v in r.items() if k != "forgetting_flagged"} for r in rows],
                 "rouge_l")["run_id"] == 1  # fmt: skip


def test_plots_order_swept_numbers_by_value() -> None:
    # `ratio=0,0.1,0.2` parses to an int and floats; ordered by type first, 0 came last and
    # the plotted line ran back from 0.2 to 0
    values = parse_axis("training.replay.ratio=0,0.15,0.1,0.2")[1]
    assert axis_order(values) == [0, 0.1, 0.15, 0.2]
    assert axis_order({"b", 2, "a", 1.5}) == [1.5, 2, "a", "b"]
