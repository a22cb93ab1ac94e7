"""PPO from rewards (method `ppo`): the InstructGPT-style recipe the maintained
implementations share (Ziegler et al. 2019, Ouyang et al. 2022; TRL's former PPOTrainer,
OpenRLHF), on a LoRA policy.

Per rollout batch (`rl.py` samples, scores and runs the updates):

- the reward of each answer token is `-β (log π_old - log π_ref)` (the k1 KL penalty, β from
  the fixed or adaptive controller), and the last answer token also gets the answer's score
  (the weighted sum of the reward models and functions);
- the value head (a linear map on the policy's last hidden state, started from the reward
  model's score head when there is one) predicts the return; GAE (`rl.gamma`, `rl.lam`)
  turns rewards and values into advantages, whitened over the batch;
- each minibatch minimises the clipped surrogate plus `rl.value_coef` times the clipped
  value loss (`losses.ppo_policy_loss`, `losses.ppo_value_loss`).

The reference is the same model with its adapter disabled (`peft`'s `disable_adapter()`),
so PPO holds one model in memory; full fine-tuning is refused for that reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneloop.config import Recipe
from tuneloop.training import common
from tuneloop.training.rl import Forward, Rollout, train_rl


class PPO:
    """PPO's part of an RL step: KL-shaped token rewards, GAE, clipped losses."""

    name = "ppo"
    uses_values = True

    def __init__(self, rl: Any) -> None:
        self.rl = rl

    def group_size(self) -> int:
        return self.rl.samples_per_prompt or 1

    def prepare(
        self, batch: Rollout, old: Forward, ref_logps: Any, beta: float
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """Token rewards (score at the last answer token minus the KL penalty), then GAE
        advantages (whitened) and returns from the rollout-time values."""
        import torch

        from tuneloop.training.losses import gae, kl_penalty, masked_mean, whiten

        mask = old.mask
        rewards = -beta * kl_penalty(old.logps, ref_logps, "k1") * mask
        last = (mask.sum(-1).long() - 1).clamp(min=0)
        rows = torch.arange(mask.shape[0], device=mask.device)
        rewards[rows, last] += batch.scores.to(mask.device, mask.dtype)
        advantages, returns = gae(rewards, old.values, mask, self.rl.gamma, self.rl.lam)
        targets = {
            "old_logps": old.logps,
            "old_values": old.values,
            "advantages": whiten(advantages, mask),
            "returns": returns,
            "mask": mask,
        }
        return targets, {"value_mean": float(masked_mean(old.values, mask))}

    def loss(self, new: Forward, t: dict[str, Any], beta: float) -> tuple[Any, dict[str, Any]]:
        """Clipped surrogate + value_coef x clipped value loss."""
        from tuneloop.training.losses import ppo_policy_loss, ppo_value_loss

        policy_loss, clip_fraction, approx_kl = ppo_policy_loss(
            new.logps, t["old_logps"], t["advantages"], t["mask"], self.rl.clip
        )
        value_loss, value_clipped = ppo_value_loss(
            new.values, t["old_values"], t["returns"], t["mask"], self.rl.value_clip
        )
        stats = {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "clip_fraction": clip_fraction,
            "value_clip_fraction": value_clipped,
            "approx_kl": approx_kl,
        }
        return policy_loss + self.rl.value_coef * value_loss, stats


def ppo(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    resume: str | Path | bool = False,
    on_step: Any = None,
) -> common.TrainResult:
    """Run one PPO job described by `recipe` (its `rl` section); see the module docstring."""
    return train_rl(recipe, PPO(recipe.rl), run_dir, resume, on_step)
