"""compare-approaches on a tiny model: every approach on the same held-out rows, few-shot
examples chosen by similarity, a tuned run beside them, intervals, cost and the line that
says which to use."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tuneloop import api, registry
from tuneloop.baselines import FewShot, render_prompt
from tuneloop.errors import TuneloopError
from tuneloop.workflows.approaches import recommend

TEXTS = {
    "card_arrival": "my card has not arrived yet, order {}",
    "exchange_rate": "what exchange rate do you use for euros, case {}",
    "lost_card": "I lost my card on the bus, ticket {}",
}


def _csv(tmp_path: Path) -> Path:
    path = tmp_path / "intents.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "category"])
        w.writeheader()
        for label, text in TEXTS.items():
            w.writerows({"text": text.format(i), "category": label} for i in range(8))
    return path


def test_library_prompts_and_their_variables() -> None:
    assert "a, b" in render_prompt("classifier", labels="a, b")
    assert "Acme" in render_prompt("on_topic", topic="Acme")
    assert render_prompt("Route {labels}", labels="x") == "Route x"
    with pytest.raises(TuneloopError, match="needs product"):
        render_prompt("About {product}", labels="x")


def test_few_shot_picks_the_most_similar_examples_nearest_last() -> None:
    pool = [
        [{"role": "user", "content": t}, {"role": "assistant", "content": lab}]
        for lab, t in (
            ("cat", "my cat sleeps all day"),
            ("bank", "transfer money to my bank"),
            ("cat", "kittens and cats purr"),
        )
    ]
    shots = FewShot.build(pool)
    query = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "send money to a bank"},
        {"role": "assistant", "content": "bank"},
    ]
    (prompt,) = shots.prompts([query], k=2)
    assert prompt[0]["role"] == "system" and prompt[-2:] == query[1:]
    assert prompt[3]["content"] == "transfer money to my bank"  # nearest, right before it
    assert len(prompt) == 1 + 4 + 2
    (fixed,) = shots.prompts([query], k=1, fixed=True)
    assert fixed[1]["content"] == "my cat sleeps all day"


def test_every_approach_on_the_same_rows_with_a_tuned_run(tmp_path: Path, tiny_model: Path) -> None:
    data = _csv(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "intents",
                "model": str(tiny_model),
                "data": {"train": str(data), "max_length": 64, "validation_split": 0.25},
                "adapter": {"type": "lora", "r": 4, "alpha": 8},
                "training": {"max_steps": 2, "batch_size": 4},
                "output_dir": str(tmp_path / "runs"),
            }
        )
    )
    run = api.train(recipe)
    validation = Path(run.run_dir) / "validation.jsonl"
    report = api.compare_approaches(
        data,
        str(tiny_model),
        tuned=f"run:{run.id}",
        eval_data=validation,
        shots=(2,),
        max_new_tokens=8,
        out=tmp_path / "report",
    )
    names = [r["approach"] for r in report.rows]
    assert names == ["zero-shot", "system prompt", "few-shot k=2", "fine-tuned"]
    assert report.metric == "accuracy" and report.eval_rows == 6
    tokens = {r["approach"]: r["prompt_tokens"] for r in report.rows}
    assert tokens["zero-shot"] < tokens["system prompt"] < tokens["few-shot k=2"]
    for r in report.rows:
        assert 0 <= r["low"] <= r["value"] <= r["high"] <= 1
        examples = registry.eval_examples(r["eval_id"])
        assert len(examples) == 6 and {e.prediction for e in examples} <= set(TEXTS)
    assert report.rows[-1]["training_s"] > 0
    assert report.recommendation.startswith("best: ")
    assert Path(report.plot).stat().st_size > 5_000
    assert "| fine-tuned |" in report.table()
    json.loads(report.to_json())


def test_the_recommendation_follows_the_numbers() -> None:
    def row(name, value, low, high, tokens):
        return {"approach": name, "value": value, "low": low, "high": high, "prompt_tokens": tokens}

    tuned_ahead = [row("system prompt", 0.5, 0.4, 0.6, 300), row("fine-tuned", 0.9, 0.85, 0.95, 40)]
    assert "fine-tuning is worth it" in recommend(tuned_ahead, "accuracy")
    close = [
        row("few-shot k=5", 0.86, 0.8, 0.9, 500),
        row("fine-tuned", 0.88, 0.84, 0.92, 40),
        row("system prompt", 0.84, 0.79, 0.89, 300),
    ]
    line = recommend(close, "accuracy")
    dearer = [
        row("few-shot k=5", 0.85, 0.78, 0.92, 848),
        row("few-shot k=10", 0.82, 0.74, 0.90, 1073),
    ]
    assert recommend(dearer, "accuracy").endswith("no cheaper approach is within its interval")
    assert line.startswith("best: fine-tuned") and "few-shot k=5 (0.860) is within" in line
    assert "no clear gain from fine-tuning" in line
    cheap = [row("few-shot k=10", 0.86, 0.8, 0.92, 1000), row("few-shot k=5", 0.85, 0.79, 0.9, 800)]
    assert "few-shot k=5 (0.850) is within its interval at 800" in recommend(cheap, "accuracy")


def test_held_out_requests_never_enter_the_few_shot_pool(tmp_path: Path, tiny_model: Path) -> None:
    data = _csv(tmp_path)
    rows = list(csv.DictReader(data.open()))
    held = tmp_path / "held.csv"
    with held.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "category"])
        w.writeheader()
        w.writerows(rows[:3])  # rows that are also in the pool file
    report = api.compare_approaches(
        data, str(tiny_model), eval_data=held, shots=(1,), max_new_tokens=4
    )
    assert report.eval_rows == 3 and report.pool_rows == len(rows) - 3


def test_held_out_requests_in_another_template_never_enter_the_pool(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A run's validation.jsonl holds the raw request; the CSV pool wraps it in the
    classification template. Both are the same request, so neither may be a few-shot example."""
    data = _csv(tmp_path)
    rows = list(csv.DictReader(data.open()))
    held = tmp_path / "validation.jsonl"
    held.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": "Intent classifier."},
                        {"role": "user", "content": r["text"]},
                        {"role": "assistant", "content": r["category"]},
                    ]
                }
            )
            + "\n"
            for r in rows[:4]
        )
    )
    report = api.compare_approaches(
        data, str(tiny_model), eval_data=held, shots=(1,), max_new_tokens=4
    )
    assert report.eval_rows == 4 and report.pool_rows == len(rows) - 4
