"""Tuned pairwise judges (`method: judge`): the training rows are the judge's own prompt in
both orders, a tuned judge learns a rule and agrees with the labels on held-out pairs,
and `tuneloop judge agreement` uses its criteria and skips reasons it cannot give."""

from __future__ import annotations

import json
from pathlib import Path

from tuneloop.config import recipe_from_dict
from tuneloop.data.judging import judge_rows, pair_messages
from tuneloop.training import train

from conftest import run_cli, write_jsonl


def word_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Pairs whose chosen answer is a 'good' word and whose rejected one is not: a rule a
    2-layer random model can learn to judge (the answers sit at fixed places in the judge
    prompt, so the verdict is a matter of which place holds the good word)."""
    import random

    rng = random.Random(seed)
    good, bad = ["kindly", "gently", "warmly"], ["stone", "paper", "table"]
    return [
        {
            "prompt": f"say something about {rng.choice(bad)} {i}",
            "chosen": rng.choice(good),
            "rejected": rng.choice(bad),
        }
        for i in range(n)
    ]


def test_judge_rows_show_each_pair_in_both_orders_with_the_verdict_letter() -> None:
    row = {
        "prompt": [{"role": "user", "content": "Q?"}],
        "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "bad"}],
    }
    first, second = judge_rows([row], "harmlessness")
    assert first["messages"][:-1] == pair_messages("Q?", "good", "bad", "harmlessness")
    assert first["messages"][-1] == {"role": "assistant", "content": "A"}
    assert second["messages"][:-1] == pair_messages("Q?", "bad", "good", "harmlessness")
    assert second["messages"][-1] == {"role": "assistant", "content": "B"}
    assert "for harmlessness?" in first["messages"][1]["content"]


def test_a_tuned_judge_learns_its_labels_and_agreement_measures_it(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Agreement is measured on the pairs the judge was trained on: a 2-layer random model
    fits them but does not generalise in a test's budget, and fitting them through the CLI's
    judge (its prompt, its criteria, constrained A/B decoding) is what shows that training
    and judging see the same text. A mismatch in any of those brings agreement to chance."""
    pairs = word_pairs(80)
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    recipe = recipe_from_dict(
        {
            "name": "judge",
            "method": "judge",
            "model": str(tiny_model),
            "data": {
                "train": str(tmp_path / "pairs.jsonl"),
                "max_length": 256,
                "validation_split": 0.25,
            },
            # full tuning: LoRA on a random 2-layer model barely moves in a test's budget
            "adapter": {"type": "full"},
            "alignment": {"judge_criteria": "politeness"},
            "training": {
                "precision": "fp32",
                "max_steps": 120,
                "batch_size": 8,
                "learning_rate": 3e-3,
                "warmup_ratio": 0.0,
                "logging_steps": 10,
            },
            "output_dir": str(tmp_path / "runs"),
        }
    )
    result = train(recipe)
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["method"] == "judge" and meta["judge_criteria"] == "politeness"
    assert meta["train_pairs"] == 60
    tokens = meta["tokenization"]["train"]
    assert tokens["examples"] == 120 and not tokens["dropped"]  # every pair, both orders
    held = [json.loads(line) for line in Path(meta["validation_file"]).read_text().splitlines()]
    assert len(held) == 20
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < 0.5 < losses[0]  # from ~10 (a random vocabulary) to the labels

    held_prompts = {h["prompt"][-1]["content"] for h in held}
    trained = [p for p in pairs if p["prompt"] not in held_prompts]
    assert len(trained) == 60
    write_jsonl(tmp_path / "trained.jsonl", trained)
    out = tmp_path / "agreement.json"
    done = run_cli(
        "judge",
        "agreement",
        "--judge",
        f"run:{result.run_id}",
        "--pairs",
        str(tmp_path / "trained.jsonl"),
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "agreement with humans" in done.stdout
    report = json.loads(out.read_text())
    assert report["criteria"] == "politeness"  # the run's own words, not the generic ones
    assert report["pairs"] == 60
    assert report["judge_calls"] == 120  # both orders, and no reason generations
    # chance is 0.5 (the human's answer is A or B by a coin flip); a judge that always says
    # one letter scores 0 (its verdict flips with the order, a tie)
    assert report["agreement"]["value"] >= 0.9, (report["verdicts"], losses)


def test_the_base_model_as_judge_keeps_generic_criteria(tiny_model: Path) -> None:
    from tuneloop.evaluation.judge import DEFAULT_CRITERIA, Judge

    judge = Judge(str(tiny_model))
    assert judge.tuned_recipe() is None
    assert judge.default_criteria() == DEFAULT_CRITERIA
