"""Training methods, one module each (`sft`, `pretrain`, `reward`, `dpo`, `ppo`, `grpo`),
sharing the loop in `loop.py` (with its objectives and parallel layouts; the RL methods share
the rollout loop in `rl.py`) and small helpers in `common.py`.
`train` picks the module from the recipe's `method`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from tuneloop.errors import RecipeError

# method -> (module, function); `simpo`, `orpo` and `kto` are DPO's relatives in dpo.py,
# `rloo` is GRPO's sibling in grpo.py; `ppo` and `grpo` share the rollout loop in rl.py
METHODS = {
    "sft": ("sft", "sft"),
    "pretrain": ("pretrain", "pretrain"),
    "reward": ("reward", "train_reward"),
    "judge": ("judge", "train_judge"),
    "dpo": ("dpo", "train_preference"),
    "simpo": ("dpo", "train_preference"),
    "orpo": ("dpo", "train_preference"),
    "kto": ("dpo", "train_preference"),
    "ppo": ("ppo", "ppo"),
    "grpo": ("grpo", "grpo"),
    "rloo": ("grpo", "grpo"),
}


def train(
    recipe: Any,
    run_dir: str | Path | None = None,
    resume: str | Path | bool = False,
    on_step: Any = None,
) -> Any:
    """Run the training method the recipe names; returns a `common.TrainResult`."""
    module_name, function = METHODS[recipe.method]
    try:
        module = importlib.import_module(f"tuneloop.training.{module_name}")
    except ModuleNotFoundError as err:
        if err.name != f"tuneloop.training.{module_name}":
            raise
        raise RecipeError(f"method {recipe.method} is not available in this build") from None
    return getattr(module, function)(recipe, run_dir=run_dir, resume=resume, on_step=on_step)
