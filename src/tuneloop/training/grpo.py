"""GRPO and RLOO (methods `grpo`, `rloo`): policy gradients with the other answers to the
same prompt as the baseline, so no value model is trained.

Per rollout batch (`rl.py` samples `rl.samples_per_prompt` answers per prompt, scores them
and runs the updates), each answer's advantage is its reward against its group
(`losses.group_advantages`): GRPO (Shao et al. 2024) `(r - mean) / std`, RLOO (Ahmadian et
al. 2024) `r - mean(others)`; every token of the answer carries it. Each minibatch
minimises the clipped surrogate (with one pass and one minibatch the ratio is 1 and this is
the plain policy gradient) plus `β` times the k3 estimate of KL(π || π_ref), the reference
being the model with its adapter disabled. Token losses are averaged over all answer tokens
of the minibatch (as DAPO and TRL's default do), so long answers are not under-weighted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.config import Recipe
from tuneloop.training import common
from tuneloop.training.rl import Forward, Rollout, train_rl

DEFAULT_GROUP = 4


class GroupRL:
    """GRPO's or RLOO's part of an RL step (`kind` picks the baseline in group_advantages)."""

    uses_values = False

    def __init__(self, kind: str, rl: Any) -> None:
        self.name = kind
        self.rl = rl

    def group_size(self) -> int:
        return self.rl.samples_per_prompt or DEFAULT_GROUP

    def prepare(
        self, batch: Rollout, old: Forward, ref_logps: Any, beta: float
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """Group advantages, spread over each answer's tokens."""
        from tuneloop.training.losses import group_advantages

        scores = batch.scores.to(old.mask.device, old.mask.dtype)
        advantages = group_advantages(
            scores, self.group_size(), self.name, self.rl.scale_advantages
        )
        groups = scores.reshape(-1, self.group_size())
        solved = float((groups.std(dim=1) == 0).float().mean())  # no signal in these groups
        targets = {
            "old_logps": old.logps,
            "ref_logps": ref_logps,
            "advantages": advantages[:, None] * old.mask,
            "mask": old.mask,
        }
        return targets, {"zero_std_groups": solved}

    def loss(self, new: Forward, t: dict[str, Any], beta: float) -> tuple[Any, dict[str, Any]]:
        """Clipped surrogate + β x k3 KL to the reference."""
        from tuneloop.training.losses import kl_penalty, masked_mean, ppo_policy_loss

        policy_loss, clip_fraction, approx_kl = ppo_policy_loss(
            new.logps, t["old_logps"], t["advantages"], t["mask"], self.rl.clip
        )
        kl = masked_mean(kl_penalty(new.logps, t["ref_logps"], "k3"), t["mask"])
        stats = {
            "policy_loss": policy_loss.detach(),
            "kl_loss": kl.detach(),
            "clip_fraction": clip_fraction,
            "approx_kl": approx_kl,
        }
        return policy_loss + beta * kl, stats


def grpo(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    resume: str | Path | bool = False,
    on_step: Any = None,
) -> common.TrainResult:
    """Run one GRPO or RLOO job (`recipe.method`); see the module docstring."""
    return train_rl(recipe, GroupRL(recipe.method, recipe.rl), run_dir, resume, on_step)
