"""GRPO and RLOO end to end on a tiny model: each raises a programmatic reward under a KL
bound with the group baseline and no value head; a group of one is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_ppo import rl_recipe, steps, stopping_model  # noqa: F401 (a fixture)

from tuneloop.config import recipe_from_dict
from tuneloop.errors import RecipeError
from tuneloop.training import train


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_group_methods_raise_a_programmatic_reward_while_kl_stays_bounded(
    stopping_model: Path,  # noqa: F811
    tmp_path: Path,
    method: str,
) -> None:
    raw = rl_recipe(stopping_model, tmp_path, method, training={"max_steps": 8, "batch_size": 4})
    result = train(recipe_from_dict(raw))
    log = steps(result.history)
    assert sorted(log) == list(range(1, 9))
    assert all(e["answer_length"] > 0 for e in log.values())
    first = sum(log[s]["reward"] for s in (1, 2, 3)) / 3
    last = sum(log[s]["reward"] for s in (6, 7, 8)) / 3
    assert last > first + 0.5, (first, last)
    assert all(log[s]["kl"] < 8.0 for s in (6, 7, 8)), [log[s]["kl"] for s in log]
    assert all(0 <= e["kl_loss"] < 8.0 for e in log.values())  # k3 is never negative
    assert "value_loss" not in log[1] and not (result.run_dir / "value_head.pt").exists()
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["group_size"] == 4 and "value_head_init" not in meta


def test_a_group_of_one_is_refused(stopping_model: Path, tmp_path: Path) -> None:  # noqa: F811
    raw = rl_recipe(stopping_model, tmp_path, "grpo", samples_per_prompt=1)
    with pytest.raises(RecipeError, match=r"rl\.samples_per_prompt must be at least 2"):
        recipe_from_dict(raw)
