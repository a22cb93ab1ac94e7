"""PPO end to end on a tiny model: it learns a programmatic reward under a KL bound, resumes
exactly (value head and adaptive KL coefficient included), stops on a NaN reward and refuses
bad recipes with one line."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tuneloop import registry
from tuneloop.config import recipe_from_dict
from tuneloop.errors import RecipeError, TrainingInterrupted
from tuneloop.training import train
from tuneloop.training.rl import NonFiniteReward

from conftest import write_jsonl

REWARDS = '''
import math

def short(prompt, answer):
    """Shorter answers are better: a reward a tiny model learns by raising end-of-turn."""
    return -len(answer) / 20.0

def poisoned(prompt, answer):
    return math.nan
'''


@pytest.fixture(scope="session")
def stopping_model(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The tiny random model, with its end-of-turn embedding aligned with the mean final
    hidden state so it ends about one answer in three early: answer lengths vary from the
    first rollout, so `short` gives a learning signal at once. (A random model's next-token
    distribution is nearly uniform over 49k tokens and would never stop by chance.)"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.models.generate import left_pad, sample

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    groups = sample(model, tokenizer, _prompts(16), n=2, max_new_tokens=8, seed=1)
    ids, mask = left_pad([s.prompt_ids + s.ids for g in groups for s in g], 0)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        mean = hidden.hidden_states[-1][:, -8:].reshape(-1, model.config.hidden_size).mean(0)
        model.get_output_embeddings().weight[tokenizer.eos_token_id] = mean / mean.norm() ** 2 * 8
    out = tmp_path_factory.mktemp("stopping") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"question {i} about topic {i * 7}"}] for i in range(n)]


def rl_recipe(model: Path, tmp_path: Path, method: str = "ppo", **rl: Any) -> dict[str, Any]:
    """A tiny RL recipe over 16 prompt-only rows, rewarded by `short` unless `rl` says."""
    rows = [{"prompt": p} for p in _prompts(16)]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    rewards = tmp_path / "rewards.py"
    rewards.write_text(REWARDS, encoding="utf-8")
    training = rl.pop("training", {})
    return {
        "name": method,
        "model": str(model),
        "method": method,
        "data": {"train": str(data), **rl.pop("data", {})},
        "adapter": {"type": "lora", "r": 8, "alpha": 16},
        "training": {
            "max_steps": 10,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            **training,
        },
        "rl": {"rewards": [{"function": f"{rewards}:short"}], "max_new_tokens": 8, **rl},
        "output_dir": str(tmp_path / "runs"),
    }


def steps(history: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {e["step"]: e for e in history if "loss" in e}


def test_ppo_raises_a_programmatic_reward_while_kl_stays_bounded(
    stopping_model: Path, tmp_path: Path
) -> None:
    result = train(recipe_from_dict(rl_recipe(stopping_model, tmp_path)))
    log = steps(result.history)
    assert sorted(log) == list(range(1, 11))
    first = sum(log[s]["reward"] for s in (1, 2, 3)) / 3
    last = sum(log[s]["reward"] for s in (8, 9, 10)) / 3
    assert last > first + 0.5, (first, last)  # answers got much shorter
    assert log[10]["answer_length"] < log[1]["answer_length"]
    assert all(0 <= log[s]["kl"] < 8.0 for s in (8, 9, 10)), [log[s]["kl"] for s in log]
    for key in ("entropy", "clip_fraction", "value_loss", "rollout_s", "learn_s"):
        assert all(math.isfinite(e[key]) for e in log.values()), key
    assert all(0 < e["rollout_share"] < 1 for e in log.values())
    assert (result.run_dir / "model" / "adapter_config.json").is_file()
    assert (result.run_dir / "value_head.pt").is_file()
    assert result.metrics["final_reward"] == log[10]["reward"]


def test_ppo_sigterm_saves_and_resume_gives_the_same_future_losses(
    stopping_model: Path, tmp_path: Path
) -> None:
    def recipe(where: Path) -> Any:
        raw = rl_recipe(
            stopping_model,
            where,
            kl_controller="adaptive",
            kl_target=0.5,
            kl_horizon=20.0,
            max_new_tokens=6,
            training={"max_steps": 4, "batch_size": 4, "save_steps": 100},
            data={"validation_split": 0.25},
        )
        return recipe_from_dict(raw)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = train(recipe(tmp_path / "a"))

    def interrupt(step: int, model: Any) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    run_dir = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted, match="SIGTERM received: saved checkpoint at step 2"):
        train(recipe(tmp_path / "b"), run_dir=run_dir, on_step=interrupt)
    ckpt = run_dir / "checkpoints" / "step-000002"
    state = json.loads((ckpt / "state.json").read_text())
    a = steps(full.history)
    # the adaptive controller moved β after steps 1 and 2; the checkpoint holds the moved one
    assert state["controller"]["beta"] == pytest.approx(a[3]["kl_coef"], abs=1e-9)
    assert state["controller"]["beta"] != pytest.approx(0.05)
    import torch

    weights = torch.load(ckpt / "weights.pt", weights_only=True)
    assert "value_head.weight" in weights and any("lora_A" in k for k in weights)
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert registry.get_run(run_id).status == "interrupted"

    resumed = train(recipe(tmp_path / "b"), run_dir=run_dir, resume=True)
    b = steps(resumed.history)
    assert sorted(b) == [1, 2, 3, 4]  # one clean curve in metrics.jsonl
    for step in (3, 4):
        for key in ("loss", "reward", "kl", "value_loss", "kl_coef"):
            assert b[step][key] == pytest.approx(a[step][key], abs=1e-4), (step, key)
    assert resumed.metrics["eval_reward"] == pytest.approx(full.metrics["eval_reward"], abs=1e-4)


def test_a_nan_reward_stops_the_run_and_saves_nothing(stopping_model: Path, tmp_path: Path) -> None:
    raw = rl_recipe(stopping_model, tmp_path, training={"max_steps": 3, "save_steps": 1})
    raw["rl"]["rewards"] = [{"function": f"{tmp_path / 'rewards.py'}:poisoned"}]
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteReward) as err:
        train(recipe_from_dict(raw), run_dir=run_dir)
    assert "reward became nan at step 1" in str(err.value) and "\n" not in str(err.value)
    assert not (run_dir / "model").exists() and not (run_dir / "checkpoints").exists()
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert registry.get_run(run_id).status == "failed"


def _rename_function(raw: dict[str, Any], name: str) -> None:
    term = raw["rl"]["rewards"][0]
    term["function"] = term["function"].rpartition(":")[0] + ":" + name


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda r: r["rl"].update(rewards=[]), "method ppo needs a reward"),
        (lambda r: r["rl"].update(kl_coef=0.0), "rl.kl_coef: Input should be greater than 0"),
        (lambda r: r["rl"].update(kl_coef=-0.1), "rl.kl_coef: Input should be greater than 0"),
        (lambda r: _rename_function(r, "shortx"), "defines no 'shortx'"),
        (
            lambda r: r["rl"]["rewards"][0].update(function="missing.py:short"),
            "no such file missing.py",
        ),
        (lambda r: r["adapter"].update(type="full"), "trains a LoRA policy"),
        (lambda r: r["rl"]["rewards"].append({"weight": 2.0}), "exactly one of `model`"),
    ],
)
def test_bad_recipes_fail_with_one_clear_line(
    stopping_model: Path, tmp_path: Path, change: Any, fragment: str
) -> None:
    raw = rl_recipe(stopping_model, tmp_path)
    change(raw)
    with pytest.raises(RecipeError) as err:
        train(recipe_from_dict(raw))
    message = str(err.value)
    assert fragment in message and "\n" not in message, message
    assert not (tmp_path / "runs").exists()  # refused before a run was started


def test_ppo_against_a_trained_reward_model(stopping_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("tuneloop.models.reward")
    pytest.importorskip("tuneloop.training.reward")
    pairs = [
        {"prompt": p[0]["content"], "chosen": "ok", "rejected": "a much longer answer " * 3}
        for p in _prompts(16)
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    rm = train(
        recipe_from_dict(
            {
                "name": "rm",
                "model": str(stopping_model),
                "method": "reward",
                "data": {"train": str(data)},
                "adapter": {"type": "lora", "r": 4, "alpha": 8},
                "training": {"max_steps": 3, "batch_size": 8, "learning_rate": 1e-2},
                "output_dir": str(tmp_path / "runs"),
            }
        )
    )
    raw = rl_recipe(stopping_model, tmp_path, training={"max_steps": 2, "batch_size": 4})
    raw["rl"]["rewards"] = [{"model": f"run:{rm.run_id}"}]
    result = train(recipe_from_dict(raw))
    log = steps(result.history)
    assert sorted(log) == [1, 2] and all(math.isfinite(e["reward"]) for e in log.values())
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["value_head_init"] == "reward model"
