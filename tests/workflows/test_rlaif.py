"""RLAIF (`tuneloop rlaif`): the policy's answers labelled by a judge become a versioned pairs
dataset with lineage, DPO trains on it, the judge's win rate is measured on held-out prompts;
what gives no pair is counted; bad recipes fail with one clear line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneloop import registry
from tuneloop.config import recipe_from_dict
from tuneloop.errors import RecipeError
from tuneloop.training import train
from tuneloop.workflows.rlaif import check_recipe, label_pairs

from conftest import assert_one_line_error, reward_recipe, run_cli, write_jsonl


def _prompts(n: int) -> list[dict[str, Any]]:
    return [{"prompt": f"say something about item {i}", "response": "ok"} for i in range(n)]


def _rlaif_recipe(tiny_model: Path, tmp_path: Path, **rlaif: Any) -> dict[str, Any]:
    return {
        "name": "rlaif",
        "method": "dpo",
        "model": str(tiny_model),
        "data": {"train": str(tmp_path / "prompts.jsonl"), "max_length": 96},
        "adapter": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "rlaif": {"samples_per_prompt": 3, "max_new_tokens": 8, "heldout": 0.25, **rlaif},
        "training": {
            "precision": "fp32",
            "max_steps": 2,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "warmup_ratio": 0.0,
        },
        "output_dir": str(tmp_path / "runs"),
    }


def test_rlaif_with_a_reward_model_judge_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    from tuneloop.models.reward import load_reward_model

    rm_run = train(reward_recipe(tiny_model, tmp_path, training={"max_steps": 4}))
    judge = f"run:{rm_run.run_id}"
    write_jsonl(tmp_path / "prompts.jsonl", _prompts(16))
    recipe_file = tmp_path / "rlaif.yaml"
    recipe_file.write_text(yaml.safe_dump(_rlaif_recipe(tiny_model, tmp_path)))
    out = tmp_path / "round"
    done = run_cli("rlaif", str(recipe_file), f"rlaif.judge={judge}", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "pairs from" in done.stdout and "win rate over the policy" in done.stdout

    report = json.loads((out / "rlaif.json").read_text())
    counts = report["counts"]
    assert report["prompts"] == {"train": 12, "heldout": 4}
    assert counts["prompts"] == 12 and counts["answers"] == 36
    # a reward model judges each prompt once: best vs worst, unless they cannot be told apart
    assert counts["pairs"] + counts["equal_scores"] + counts["identical_answers"] == 12
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == counts["pairs"] > 0
    held = {json.dumps(r["prompt"]) for r in map(json.loads, (out / "heldout.jsonl").open())}
    assert len(held) == 4 and not held & {json.dumps(p["prompt"]) for p in pairs}
    # every pair's chosen answer is the one the judge scored higher, by the recorded margin
    rm = load_reward_model(judge)
    for p in pairs:
        chosen, rejected = rm.score(
            [
                [*p["prompt"], {"role": "assistant", "content": p["chosen"]}],
                [*p["prompt"], {"role": "assistant", "content": p["rejected"]}],
            ]
        )
        assert chosen > rejected
        assert math.isclose(chosen - rejected, p["score_margin"], rel_tol=1e-3, abs_tol=1e-4)
    # the pairs are a dataset version whose parent is the prompts and whose lineage names
    # the policy and the judge; the DPO run trained on that version
    ds = registry.get_dataset(report["pairs_dataset_id"])
    assert ds.parent_id == report["prompts_dataset_id"]
    assert ds.meta["policy"] == str(tiny_model) and ds.meta["judge"] == judge
    assert ds.meta["counts"]["pairs"] == counts["pairs"]
    run = registry.get_run(report["run_id"])
    assert run.kind == "dpo" and run.status == "completed"
    assert report["pairs_dataset_id"] in [link.dataset_id for link in run.datasets]
    win = report["win_rate"]
    assert win["prompts"] == 4 and win["wins"] + win["ties"] + win["losses"] == 4
    assert win["judge_kind"] == "reward model"


def test_llm_judge_labels_only_order_independent_verdicts(tiny_model: Path) -> None:
    from tuneloop.evaluation.judge import Judge

    prompts = [[{"role": "user", "content": f"name a colour, case {i}"}] for i in range(4)]
    answers = [["red", "blue", "red"], ["green", "a tree", "yellow"]] * 2
    rows, counts = label_pairs(str(tiny_model), prompts, answers)
    # 3 answers give 3 comparisons a prompt; identical answers are not compared
    assert counts["identical_answers"] == 2 and counts["comparisons"] == 10
    decisive = counts["comparisons"] - counts["order_dependent"] - counts["ties"]
    assert len(rows) == decisive
    # each pair is what the judge says in both orders (its verdicts are cached: same answer)
    judge = Judge(str(tiny_model), reason_tokens=0)
    for row in rows:
        (verdict,) = judge.compare(
            [row["prompt"][0]["content"]], [row["chosen"]], [row["rejected"]]
        )
        assert verdict.consistent and verdict.winner == "a"


def test_bad_rlaif_recipes_fail_with_one_clear_line(tiny_model: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "prompts.jsonl", _prompts(4))
    base = _rlaif_recipe(tiny_model, tmp_path, judge=str(tiny_model))
    with pytest.raises(RecipeError, match="pairwise preference method"):
        check_recipe(recipe_from_dict({**base, "method": "kto"}))
    no_judge = _rlaif_recipe(tiny_model, tmp_path)
    with pytest.raises(RecipeError, match="needs a judge"):
        check_recipe(recipe_from_dict(no_judge))
    recipe_file = tmp_path / "bad.yaml"
    recipe_file.write_text(yaml.safe_dump(no_judge))
    assert_one_line_error(run_cli("rlaif", str(recipe_file)), "rlaif needs a judge")
    assert_one_line_error(
        run_cli("rlaif", str(recipe_file), "rlaif.samples_per_prompt=1"), "samples_per_prompt"
    )
