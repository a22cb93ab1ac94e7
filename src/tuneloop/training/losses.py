"""Alignment losses and estimators: small pure functions from tensors to tensors.

Each function computes one formula from one paper (named in its docstring), so a method
module (`reward`, `dpo`, `ppo`, `grpo`) reads as forward passes plus one call here, and every
formula is pinned by a hand-computed value in `tests/training/test_losses.py` (and, where
TRL implements the same loss, by value and gradient against TRL's own code).

Conventions: per-example losses are returned unreduced (the caller chooses the mean and the
accumulation); "rewards" returned for logging are detached; per-token tensors are
`(batch, time)` with a 0/1 `mask`. torch is imported inside the functions so that importing
this module stays cheap.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from tuneloop.training.tokenize import IGNORE

if TYPE_CHECKING:
    import torch

DPOLoss = Literal["sigmoid", "ipo", "hinge", "robust"]
DPO_LOSSES: tuple[str, ...] = ("sigmoid", "ipo", "hinge", "robust")


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    import torch

    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# --- log-probabilities and entropy -------------------------------------------------------


def token_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each label token, `log softmax(logits[:, t-1])[labels[:, t]]`.

    Shifted by one (position t-1 predicts token t), so both outputs are `(batch, time - 1)`:
    the log-probs (0 where the label is `ignore_index`) and the 0/1 float mask of real labels.
    Computed as `logit[label] - logsumexp(logits)` in float32 one row at a time: without
    autograd (reference passes) the extra memory is one row's float32 logits rather than a
    float32 copy of the whole batch; with autograd the rows are kept for the backward pass,
    as with any log-softmax.
    """
    import torch

    logits = logits[:, :-1]
    labels = labels[:, 1:]
    mask = labels != ignore_index
    index = labels.masked_fill(~mask, 0).unsqueeze(-1)
    rows = []
    for row_logits, row_index in zip(logits, index, strict=True):
        row = _at_least_float32(row_logits)
        rows.append(row.gather(-1, row_index).squeeze(-1) - torch.logsumexp(row, dim=-1))
    logps = torch.stack(rows) * mask
    return logps, mask.to(logps.dtype)


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE,
    average: bool = False,
) -> torch.Tensor:
    """Per-sequence `Σ_t log π(y_t | y_<t)` over the label tokens (or its mean, `average=True`).

    The sum is the sequence log-likelihood DPO, KTO and the reward margin use; the mean is the
    length-normalised score of SimPO, ORPO and IPO. A row with no label tokens gives 0.
    """
    logps, mask = token_logps(logits, labels, ignore_index)
    total = logps.sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution, `H = -Σ p log p`, p = softmax(z).

    A cheap collapse monitor for RL fine-tuning (entropy falling to 0 means the policy has
    become deterministic). Computed from `log_softmax` in float32, which is more accurate than
    `logsumexp(z) - Σ p z` (that form cancels two large terms). Shape `logits.shape[:-1]`.
    """
    import torch

    logp = torch.log_softmax(_at_least_float32(logits), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# --- reward models and the DPO family ------------------------------------------------------


def bradley_terry(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Reward-model pair loss `-log σ(r_c - r_r - margin)` (Bradley & Terry 1952).

    The negative log-likelihood that the chosen answer wins under a Bradley-Terry model, as in
    InstructGPT (Ouyang et al. 2022); `margin` (Llama 2, Touvron et al. 2023) asks for a larger
    gap on pairs the raters marked as clearly better. One loss per pair.
    """
    import torch.nn.functional as F

    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def dpo(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss: DPOLoss = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO-family pair losses on `h = (log π_c - log π_r) - (log ref_c - log ref_r)`.

    Returns `(losses, chosen_rewards, rejected_rewards)`, with the implicit rewards
    `β (log π - log ref)` detached for logging. The variants, as TRL defines them:

    - `sigmoid` (Rafailov et al. 2023): `-log σ(βh)`; with `label_smoothing` ε it is the
      conservative cDPO `-(1-ε) log σ(βh) - ε log σ(-βh)` (Mitchell 2023).
    - `ipo` (Azar et al. 2023, eq. 17): `(h - 1/(2β))²`. TRL (with the IPO authors) uses
      *length-averaged* log-probs here, so pass per-token means for IPO.
    - `hinge` (SLiC, Zhao et al. 2023): `relu(1 - βh)`.
    - `robust` (rDPO, Chowdhury et al. 2024): `(-(1-ε) log σ(βh) + ε log σ(-βh)) / (1-2ε)`,
      an unbiased loss when a fraction ε of the preference labels are flipped.
    """
    import torch
    import torch.nn.functional as F

    if loss not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss {loss!r}; expected one of {', '.join(DPO_LOSSES)}")
    if loss == "robust" and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    h = chosen_logratios - rejected_logratios
    eps = label_smoothing
    if loss == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (
            1 - 2 * eps
        )
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def simpo(
    policy_chosen_avg: torch.Tensor,
    policy_rejected_avg: torch.Tensor,
    beta: float,
    gamma_beta_ratio: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO pair loss `-log σ(β (avg log π_c - avg log π_r) - γ)`, γ = `gamma_beta_ratio`·β.

    Meng et al. 2024: the reward is the length-normalised log-likelihood itself, so no
    reference model is needed, and the target margin γ keeps winners clearly ahead.
    `gamma_beta_ratio` is the paper's γ/β (TRL's `simpo_gamma` is γ itself). Label smoothing
    ε gives `-(1-ε) log σ(z) - ε log σ(-z)`. Returns `(losses, chosen_rewards,
    rejected_rewards)`, rewards `β · avg log π` detached.
    """
    import torch.nn.functional as F

    z = beta * (policy_chosen_avg - policy_rejected_avg - gamma_beta_ratio)
    eps = label_smoothing
    losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    return losses, beta * policy_chosen_avg.detach(), beta * policy_rejected_avg.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """`log(1 - exp(x))` for x < 0, accurate near 0 and far below it (Mächler 2012)."""
    import torch

    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo(
    chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO odds-ratio term `-β log σ(log odds(p_c) - log odds(p_r))`, odds(p) = p / (1 - p).

    Hong et al. 2024: p are the length-averaged probabilities of each answer, and the term
    pushes the odds of the chosen answer above the rejected one without a reference model.
    This is only the preference part: the full ORPO loss is the SFT negative log-likelihood of
    the chosen answer *plus* the mean of these losses, and the caller adds the NLL (it already
    has it from the same forward pass). `β` is the paper's λ. Returns `(losses, log_odds)`;
    the log odds ratio is what to log. Computed in at least float32.
    """
    import torch.nn.functional as F

    c = _at_least_float32(chosen_avg_logps)
    r = _at_least_float32(rejected_avg_logps)
    log_odds = (c - r) - (_log1mexp(c) - _log1mexp(r))
    return -beta * F.logsigmoid(log_odds), log_odds.detach()


def kto(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_estimate: torch.Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO per-example losses from unpaired good/bad answers (Ethayarajh et al. 2024, eq. 7).

    With r = log π - log ref and the reference point z = max(KL estimate, 0):
    desirable `λ_D (1 - σ(β (r - z)))`, undesirable `λ_U (1 - σ(β (z - r)))`. The KL estimate
    (mean log-ratio on mismatched prompt/answer pairs, as in TRL) is detached: the paper does
    not backpropagate through z. `desirable` is a bool tensor. Returns `(losses, rewards)`,
    rewards `β r` detached; TRL's batch loss is the plain mean of these losses.
    """
    import torch

    z = torch.as_tensor(kl_estimate, dtype=policy_logps.dtype, device=policy_logps.device)
    z = z.detach().clamp(min=0)
    logratios = policy_logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (logratios - z)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z - logratios)))
    return torch.where(desirable.bool(), good, bad), beta * logratios.detach()


# --- PPO -----------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the entries where `mask` is 1 (all of them, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Masked whitening `(x - mean) / sqrt(var + eps)` over the entries where `mask` is 1.

    PPO normalises advantages per batch so the step size does not depend on the reward scale
    (the variance is the unbiased one, as in TRL and OpenRLHF). `shift_mean=False` rescales but
    keeps the mean (used for rewards, whose sign carries meaning). Masked entries come back 0.
    """
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = (((x - mean) ** 2) * mask).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * (var + eps).rsqrt()
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation `A_t = δ_t + γλ A_{t+1}`, `δ_t = r_t + γ V_{t+1} - V_t`.

    Schulman et al. 2016. Per-token `(batch, time)` tensors, one contiguous answer span per
    row (mask 1 on answer tokens, any prompt before it and padding after it 0); the value past
    the last answer token is 0, since the episode ends there. Returns `(advantages, returns)`,
    `returns = A + V` (the value-function target), both 0 off the mask and detached.
    """
    import torch

    mask = mask.to(values.dtype)
    values = values.detach() * mask
    rewards = rewards.detach() * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
        next_value = values[:, t]
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def ppo_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate `-min(ρA, clip(ρ, 1-ε, 1+ε) A)`, ρ = π/π_old, masked mean.

    Schulman et al. 2017: the clip removes the incentive to move the ratio beyond 1±ε in the
    direction the advantage rewards. Returns `(loss, clip_fraction, approx_kl)`: the share of
    tokens where the clipped term is the active one, and the k3 estimate of KL(π_old || π),
    `mean((ρ - 1) - log ρ)`, both detached, for early stopping and logging.
    """
    import torch

    log_ratio = logps - old_logps.detach()
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(ratio.dtype), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, clip_fraction, approx_kl


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss `0.5 · max((V - R)², (V_old + clip(V - V_old, ±ε) - R)²)`, masked mean.

    As in the PPO baselines and InstructGPT-style RLHF code (TRL, OpenRLHF): the value head may
    not move more than ε from its rollout-time prediction in one update. `clip` is in reward
    units. Returns `(loss, clip_fraction)`, the share of tokens where the clipped error is the
    larger one (detached).
    """
    import torch

    old_values = old_values.detach()
    returns = returns.detach()
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_err > unclipped_err).to(values.dtype), mask)
    return loss, clip_fraction


def kl_penalty(
    logps: torch.Tensor, ref_logps: torch.Tensor, kind: Literal["k1", "k2", "k3"] = "k1"
) -> torch.Tensor:
    """Per-token estimate of KL(π || ref) from tokens sampled from π (Schulman 2020, "k1-k3").

    With `log r = log ref - log π`: `k1 = -log r` (unbiased, can be negative; the classic RLHF
    reward penalty), `k2 = (log r)² / 2` (low variance, biased), `k3 = (r - 1) - log r`
    (unbiased and never negative; GRPO's KL term).
    """
    import torch

    log_r = ref_logps - logps
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {kind!r}; expected k1, k2 or k3")


class FixedKL:
    """A KL coefficient that never changes: the baseline to compare `AdaptiveKL` against."""

    def __init__(self, beta: float) -> None:
        self.beta = float(beta)

    def update(self, kl: float, n_steps: int) -> float:
        """Returns β unchanged (the signature matches `AdaptiveKL.update`)."""
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = float(state["beta"])


class AdaptiveKL:
    """Adaptive KL coefficient of Ziegler et al. 2019: steer the measured KL towards `target`.

    After each batch, `e = clip(KL / target - 1, -0.2, 0.2)` and `β ← β (1 + e · n / horizon)`,
    n the number of samples in the batch: a proportional controller whose clip bounds how fast
    β moves when the KL is far off. State is plain floats, so it saves with
    `torch.load(weights_only=True)` and JSON.
    """

    def __init__(self, init_beta: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError("AdaptiveKL needs a positive target and horizon")
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, kl: float, n_steps: int) -> float:
        """Adjusts β from the KL measured on the last batch of `n_steps` samples; returns it."""
        error = min(max(float(kl) / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = float(state["beta"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])


# --- group baselines (GRPO, RLOO) --------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    kind: Literal["grpo", "rloo"] = "grpo",
    scale: bool | None = None,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Per-sample advantages against the other samples for the same prompt, no value model.

    `rewards` is flat, `group_size` consecutive samples per prompt.
    - `grpo` (Shao et al. 2024): `(r - mean(group)) / (std(group) + eps)`.
    - `rloo` (Ahmadian et al. 2024): `r - mean(others)`, the leave-one-out baseline, which
      keeps the estimate unbiased; equal to `k/(k-1) · (r - mean(group))`.
    `scale` divides by the group's (unbiased) std; `None` follows each paper: GRPO scales,
    RLOO does not. `scale=False` with GRPO is Dr. GRPO's fix (Liu et al. 2025), since the
    std term over-weights prompts that are nearly always right or wrong. `eps` is TRL's 1e-4.
    """
    if group_size < 2:
        raise ValueError("group advantages need at least 2 samples per prompt")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if kind not in ("grpo", "rloo"):
        raise ValueError(f"unknown group baseline {kind!r}; expected grpo or rloo")
    groups = rewards.reshape(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    if kind == "grpo":
        advantages = groups - mean
    else:
        advantages = groups - (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    if scale if scale is not None else kind == "grpo":
        advantages = advantages / (groups.std(dim=1, keepdim=True) + eps)
    return advantages.reshape(rewards.shape)
