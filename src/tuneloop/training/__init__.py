"""Training methods, one module each (`sft`, `pretrain`), sharing the loop in `loop.py` and
small helpers in `common.py`. `train` picks the module from the recipe's `method`."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def train(
    recipe: Any,
    run_dir: str | Path | None = None,
    resume: str | Path | bool = False,
    on_step: Any = None,
) -> Any:
    """Run the training method the recipe names; returns a `common.TrainResult`."""
    if recipe.method == "pretrain":
        from tuneloop.training.pretrain import pretrain

        return pretrain(recipe, run_dir=run_dir, resume=resume, on_step=on_step)
    from tuneloop.training.sft import sft

    return sft(recipe, run_dir=run_dir, resume=resume, on_step=on_step)
