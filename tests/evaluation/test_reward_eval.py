"""A reward run as a scorer through the real CLI: `eval --data PAIRS` stores pair accuracy;
`compare --data PROMPTS --judge run:RM` gives the win rate the reward model's scores imply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop import registry
from tuneloop.training import train

from conftest import marker_pairs, reward_recipe, run_cli, write_jsonl


def _reward_run(tiny_model: Path, tmp_path: Path, steps: int = 15) -> int:
    recipe = reward_recipe(tiny_model, tmp_path, training={"max_steps": steps})
    return train(recipe).run_id


def test_eval_of_a_reward_run_on_pairs_stores_pair_accuracy(
    tiny_model: Path, tmp_path: Path
) -> None:
    run_id = _reward_run(tiny_model, tmp_path)
    pairs = write_jsonl(tmp_path / "held.jsonl", marker_pairs(12, seed=5))
    out = tmp_path / "eval.json"
    proc = run_cli("eval", "--model", f"run:{run_id}", "--data", str(pairs), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "pair accuracy" in proc.stdout and "95% bootstrap" in proc.stdout
    result = json.loads(out.read_text())
    m = result["metrics"]
    assert m["pair_accuracy"] >= 0.75  # the marker was learnt; chance is 0.5
    assert m["pair_accuracy_low"] <= m["pair_accuracy"] <= m["pair_accuracy_high"]
    assert m["reward_gap_q05"] <= m["reward_gap_q50"] <= m["reward_gap_q95"]
    assert len(result["examples"]) == 12
    correct = [e["scores"]["correct"] for e in result["examples"]]
    assert sum(correct) / 12 == pytest.approx(m["pair_accuracy"])
    stored = registry.evals_for_run(run_id)
    assert [e.metrics["pair_accuracy"] for e in stored] == [m["pair_accuracy"]]
    assert len(registry.eval_examples(stored[0].id)) == 12


def test_compare_with_a_reward_judge_gives_a_known_win_rate(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop import api
    from tuneloop.evaluation import reward as reward_eval

    run_id = _reward_run(tiny_model, tmp_path, steps=20)
    judge = f"run:{run_id}"
    rows = marker_pairs(6, seed=9)
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)  # a preference file's prompts

    # through the real CLI, the same model on both sides: every prompt a tie, exactly 0.5
    same = tmp_path / "same.json"
    proc = run_cli(
        "compare", str(tiny_model), str(tiny_model), "--data", str(data), "--judge", judge,
        "--max-new-tokens", "4", "--json", str(same),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "win rate" in proc.stdout
    tie = json.loads(same.read_text())
    assert (tie["ties"], tie["win_rate"], tie["judge_kind"]) == (6, 0.5, "reward model")

    # a constructed case: the tuned model says the marker answer on prompts 0-3 where the
    # base does not, and both say the same thing on 4-5: 4 wins, 2 ties, win rate 5/6
    answers = {
        "base": [r["rejected"] for r in rows[:4]] + [r["chosen"] for r in rows[4:]],
        "tuned": [r["chosen"] for r in rows],
    }
    monkeypatch.setattr(reward_eval, "_answers", lambda ref, prompts, *a: answers[ref])
    won = api.compare("base", "tuned", data=str(data), judge=judge)
    assert (won.wins, won.ties, won.losses) == (4, 2, 0)
    assert won.win_rate == pytest.approx(5 / 6)
    assert won.win_rate_ci["low"] <= won.win_rate <= won.win_rate_ci["high"]
    swapped = api.compare("tuned", "base", data=str(data), judge=judge)
    assert (swapped.wins, swapped.ties, swapped.losses) == (0, 2, 4)
    assert swapped.win_rate == pytest.approx(1 / 6)


def test_compare_needs_a_suite_or_data_with_a_judge(tiny_model: Path, tmp_path: Path) -> None:
    for args, fragment in (
        ([], "give --suite FILE, or --data PROMPTS"),
        (["--suite", "s.yaml", "--data", "p.jsonl"], "not both"),
        (["--data", "p.jsonl"], "--data needs --judge"),
    ):
        proc = run_cli("compare", "a", "b", *args)
        assert proc.returncode != 0 and fragment in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_best_of_n_answers_the_sample_the_picker_scores_highest(
    tiny_model: Path, tmp_path: Path
) -> None:
    from tuneloop.evaluation.reward import _answers
    from tuneloop.models import load
    from tuneloop.models.generate import sample
    from tuneloop.models.reward import load_reward_model

    judge = f"run:{_reward_run(tiny_model, tmp_path, steps=4)}"
    rm = load_reward_model(judge)
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in marker_pairs(5, seed=3)]
    best = _answers(str(tiny_model), prompts, 6, 4, best_of=4, picker=rm, seed=1)
    # every sample, drawn again with the same seeds, scored by the same reward model
    model, tokenizer, _ = load(str(tiny_model))
    groups = []
    for lo in range(0, len(prompts), 4):
        groups += sample(
            model, tokenizer, prompts[lo : lo + 4], n=4, max_new_tokens=6, seed=1 + lo,
            batch_size=4,
        )  # fmt: skip
    for prompt, group, picked in zip(prompts, groups, best, strict=True):
        scores = rm.score([[*prompt, {"role": "assistant", "content": s.text}] for s in group])
        assert picked == group[max(range(4), key=scores.__getitem__)].text

    # through the CLI: recorded in the JSON, named in the line; an LLM judge needs a picker
    data = write_jsonl(tmp_path / "prompts.jsonl", marker_pairs(3, seed=4))
    out = tmp_path / "bon.json"
    proc = run_cli(
        "compare", str(tiny_model), str(tiny_model), "--data", str(data), "--judge", judge,
        "--best-of", "2", "--max-new-tokens", "4", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "(best of 2)" in proc.stdout
    won = json.loads(out.read_text())
    assert won["details"]["best_of"] == 2 and won["details"]["picker"] == judge
    assert won["prompts"] == 3
    proc = run_cli(
        "compare", "a", "b", "--data", str(data), "--judge", str(tiny_model), "--best-of", "2"
    )
    assert proc.returncode != 0 and "best-of-n needs a reward model" in proc.stderr
    assert "Traceback" not in proc.stderr
