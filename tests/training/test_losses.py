"""Alignment losses, pinned by value: hand-computed numbers, then parity with TRL's own code.

Hand values are worked out in each test with `math`, never by calling the function again.

TRL parity (TRL 1.16.0, the installed dependency): values and gradients with respect to the
policy log-prob inputs, on identical random inputs, to 1e-6. What is compared:

- DPO sigmoid / ipo / hinge / robust: `trl.trainer.dpo_trainer.DPOTrainer._compute_loss`.
  In this TRL the loss is not a separate function: it sits inside `_compute_loss` after the
  model's forward pass. It is called unbound on a `SimpleNamespace` holding only the
  attributes it reads, with a stub model that returns our per-token log-probs (as TRL's fused
  LM head does) and precomputed reference log-probs.
- KTO: `trl.trainer.kto_trainer.KTOTrainer._compute_loss`, called the same way, with TRL's
  own `KTOTrainer._compute_kl_logps` bound to the stub; the stub model answers the KL pass
  (mismatched pairs) and the main pass; reference log-probs precomputed.
- SimPO: `trl.experimental.cpo.CPOTrainer.cpo_loss` with `loss_type="simpo"`, `alpha=0`.
- ORPO: `trl.experimental.orpo.ORPOTrainer.odds_ratio_loss` (TRL returns `β log σ(...)`
  and subtracts it from the NLL; ours is the loss term, so the sign is flipped).
- Bradley-Terry: `trl.trainer.reward_trainer.RewardTrainer.compute_loss`, with and without
  a margin, stub model returning the rewards as logits.
- `sequence_logps`: the static `ORPOTrainer.get_batch_logps`; `token_entropy`:
  `trl.trainer.utils.entropy_from_logits`.

Not in TRL 1.16.0, so pinned by hand values only: PPO (no PPO trainer in this version), GAE,
whitening, the KL controllers and estimators, and the GRPO/RLOO baselines (inline in
`GRPOTrainer` / `RLOOTrainer._generate_and_score_completions`, which needs generation).
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import warnings
from collections import defaultdict
from types import MethodType, SimpleNamespace

import pytest
import torch

from tuneloop.training.losses import (
    AdaptiveKL,
    FixedKL,
    bradley_terry,
    dpo,
    gae,
    group_advantages,
    kl_penalty,
    kto,
    orpo,
    ppo_policy_loss,
    ppo_value_loss,
    sequence_logps,
    simpo,
    token_entropy,
    whiten,
)

TOL = 1e-6


def softplus(x: float) -> float:
    """-log σ(-x) = log(1 + e^x), written out for the hand values."""
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def close(actual: torch.Tensor, expected: list[float] | float, tol: float = 1e-9) -> None:
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected_t.shape, (actual.shape, expected_t.shape)
    diff = (actual.double() - expected_t).abs().max().item()
    assert diff < tol, f"{actual.tolist()} != {expected_t.tolist()} (max diff {diff})"


# --- hand values ----------------------------------------------------------------------------


def test_importing_losses_does_not_import_torch() -> None:
    code = "import sys, tuneloop.training.losses; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dpo_is_ln2_when_policy_equals_reference() -> None:
    logps = torch.randn(5, dtype=torch.float64) * 10
    other = torch.randn(5, dtype=torch.float64) * 10
    losses, chosen, rejected = dpo(logps, other, logps, other, beta=0.1)
    close(losses, [math.log(2)] * 5)
    close(chosen, [0.0] * 5)
    close(rejected, [0.0] * 5)


# policy chosen -1, rejected -3; reference -2 and -2: log-ratios +1 and -1, h = 2, β = 0.1
DPO_ARGS = (t(-1.0), t(-3.0), t(-2.0), t(-2.0))


def test_dpo_variants_at_known_log_ratios() -> None:
    beta, h, eps = 0.1, 2.0, 0.1
    losses, chosen, rejected = dpo(*DPO_ARGS, beta=beta)
    close(losses, [softplus(-beta * h)])
    close(chosen, [0.1])
    close(rejected, [-0.1])
    cdpo = (1 - eps) * softplus(-beta * h) + eps * softplus(beta * h)
    close(dpo(*DPO_ARGS, beta=beta, label_smoothing=eps)[0], [cdpo])
    close(dpo(*DPO_ARGS, beta=beta, loss="ipo")[0], [(2.0 - 5.0) ** 2])
    close(dpo(*DPO_ARGS, beta=beta, loss="hinge")[0], [0.8])
    robust = ((1 - eps) * softplus(-beta * h) - eps * softplus(beta * h)) / (1 - 2 * eps)
    close(dpo(*DPO_ARGS, beta=beta, loss="robust", label_smoothing=eps)[0], [robust])
    # the hinge is flat once the margin βh passes 1: h = 20
    close(dpo(t(10.0), t(-10.0), t(0.0), t(0.0), beta=0.1, loss="hinge")[0], [0.0])


def test_dpo_rejects_unknown_loss_and_bad_smoothing() -> None:
    with pytest.raises(ValueError, match="sigmoid, ipo, hinge, robust"):
        dpo(*DPO_ARGS, beta=0.1, loss="sppo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo(*DPO_ARGS, beta=0.1, loss="robust", label_smoothing=0.5)


def test_bradley_terry_with_and_without_margin() -> None:
    chosen, rejected = t(2.0, 0.0), t(0.5, 1.0)
    close(bradley_terry(chosen, rejected), [softplus(-1.5), softplus(1.0)])
    close(bradley_terry(chosen, rejected, margin=t(1.0, 0.5)), [softplus(-0.5), softplus(1.5)])
    close(bradley_terry(chosen, rejected, margin=1.0), [softplus(-0.5), softplus(2.0)])


def test_simpo() -> None:
    # β (c - r - γ/β) = 2 (1 - 0.25) = 1.5
    losses, chosen, rejected = simpo(t(-0.5), t(-1.5), beta=2.0, gamma_beta_ratio=0.25)
    close(losses, [softplus(-1.5)])
    close(chosen, [-1.0])
    close(rejected, [-3.0])
    smoothed = simpo(t(-0.5), t(-1.5), beta=2.0, gamma_beta_ratio=0.25, label_smoothing=0.2)[0]
    close(smoothed, [0.8 * softplus(-1.5) + 0.2 * softplus(1.5)])


def test_orpo_odds_ratio_term() -> None:
    # p_c = 1/2 (odds 1), p_r = 1/4 (odds 1/3): log odds ratio = log 3, loss = β log(1 + 1/3)
    losses, log_odds = orpo(t(math.log(0.5)), t(math.log(0.25)), beta=0.1)
    close(log_odds, [math.log(3)])
    close(losses, [0.1 * math.log(4 / 3)])
    # near p = 1 (avg log-prob -1e-6, in float32 as in training) a naive log(1 - exp(x))
    # loses most digits; the stable form keeps the log odds right
    x = -1e-6
    chosen = torch.tensor([x], dtype=torch.float32)
    _, log_odds = orpo(chosen, torch.tensor([math.log(0.5)]), beta=1.0)
    close(log_odds, [x - math.log(-math.expm1(x))], tol=1e-4)


def test_kto_desirable_and_undesirable() -> None:
    # log-ratios +1 (desirable) and -0.5 (undesirable), z = 0.3, β = 0.5, weights 2 and 3
    policy, ref, desirable = t(-1.0, -1.0), t(-2.0, -0.5), torch.tensor([True, False])
    losses, rewards = kto(policy, ref, desirable, t(0.3), 0.5, 2.0, 3.0)
    close(losses, [2 * (1 - sigmoid(0.5 * 0.7)), 3 * (1 - sigmoid(0.5 * 0.8))])
    close(rewards, [0.5, -0.25])
    # a negative KL estimate is clamped to 0, and no gradient flows into it
    kl = t(-1.0).requires_grad_()
    policy = policy.clone().requires_grad_()
    losses, _ = kto(policy, ref, desirable, kl, beta=0.5)
    close(losses, [1 - sigmoid(0.5), 1 - sigmoid(0.25)])
    losses.sum().backward()
    assert kl.grad is None and policy.grad is not None and policy.grad.abs().min() > 0


def test_gae_against_hand_unrolled_recurrence() -> None:
    gamma, lam = 1.0, 0.9
    r, v = [0.0, 0.0, 1.0], [0.5, 0.6, 0.7]
    d2 = r[2] + gamma * 0.0 - v[2]  # the value after the last token is 0: the episode ends
    d1 = r[1] + gamma * v[2] - v[1]
    d0 = r[0] + gamma * v[1] - v[0]
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    expected_adv = [a0, a1, a2]  # 0.433, 0.37, 0.3
    expected_ret = [a + b for a, b in zip(expected_adv, v, strict=True)]
    # row 0: the answer alone; row 1: one prompt token before it and one padding token after,
    # with junk in the masked positions that must not leak in
    rewards = torch.tensor([[*r, 0.0, 0.0], [9.0, *r, 9.0]], dtype=torch.float64)
    values = torch.tensor([[*v, 0.0, 0.0], [9.0, *v, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    close(adv, [[*expected_adv, 0, 0], [0, *expected_adv, 0]])
    close(ret, [[*expected_ret, 0, 0], [0, *expected_ret, 0]])
    # λ = 1 with γ = 1: the return is the Monte-Carlo reward-to-go, whatever the values
    _, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(ret, [[1, 1, 1, 0, 0], [0, 1, 1, 1, 0]])


def test_ppo_clipped_surrogate_and_clip_fraction() -> None:
    # ratios 1.1 (inside), 1.5 with A = +1 (clipped at 1.2), 0.5 with A = -1 (clipped at 0.8),
    # and a fourth, masked-out token with junk values
    ratios = [1.1, 1.5, 0.5, 7.0]
    old = t(-1.0, -2.0, -0.5, -1.0)
    logps = (old + torch.log(t(*ratios))).requires_grad_()
    advantages, mask = t(1.0, 1.0, -1.0, 5.0), t(1, 1, 1, 0)
    loss, clip_fraction, approx_kl = ppo_policy_loss(logps, old, advantages, mask, clip=0.2)
    close(loss, -(1.1 * 1 + 1.2 * 1 + 0.8 * -1) / 3)
    close(clip_fraction, 2 / 3)
    close(approx_kl, sum((x - 1) - math.log(x) for x in ratios[:3]) / 3)
    # only the unclipped token moves the policy: d(-ρA)/d log π = -ρA
    loss.backward()
    close(logps.grad, [-1.1 / 3, 0.0, 0.0, 0.0])


def test_ppo_does_not_clip_the_pessimistic_side() -> None:
    # ratio 1.5 with a negative advantage: the unclipped term is the smaller objective
    old = t(0.0)
    loss, clip_fraction, _ = ppo_policy_loss(old + math.log(1.5), old, t(-1.0), t(1))
    close(loss, 1.5)
    close(clip_fraction, 0.0)


def test_ppo_value_loss_is_clipped() -> None:
    # token 0: no move, error 0.25 either way; token 1: V moved 1 -> 2, clipped to 1.2, and
    # the clipped error (1.8² = 3.24) is the larger; token 2: clipped error 0.09 < 0.25
    values, old = t(1.0, 2.0, 2.0, 0.0), t(1.0, 1.0, 1.0, 5.0)
    returns, mask = t(1.5, 3.0, 1.5, 0.0), t(1, 1, 1, 0)
    loss, clip_fraction = ppo_value_loss(values, old, returns, mask, clip=0.2)
    close(loss, 0.5 * (0.25 + 3.24 + 0.25) / 3)
    close(clip_fraction, 1 / 3)


def test_whiten_gives_mean_0_std_1_on_masked_entries() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3 + 5
    mask = (torch.rand(4, 6, generator=g) > 0.3).double()
    x = x + (1 - mask) * 1e6  # masked-out junk must not shift the statistics
    out = whiten(x, mask)
    kept = out[mask.bool()]
    close(kept.mean(), 0.0, tol=1e-9)
    close(kept.std(), 1.0, tol=1e-6)
    assert out[~mask.bool()].abs().max() == 0
    kept = whiten(x, mask, shift_mean=False)[mask.bool()]
    close(kept.mean(), x[mask.bool()].mean().item(), tol=1e-9)
    close(kept.std(), 1.0, tol=1e-6)


def test_kl_estimators() -> None:
    # π = 1/2, ref = 1/4: log r = log(ref/π) = -log 2
    k1, k2, k3 = (
        kl_penalty(t(math.log(0.5)), t(math.log(0.25)), kind=k) for k in ("k1", "k2", "k3")
    )
    close(k1, [math.log(2)])
    close(k2, [0.5 * math.log(2) ** 2])
    close(k3, [(0.5 - 1) + math.log(2)])
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_penalty(t(0.0), t(0.0), kind="k4")  # type: ignore[arg-type]


def test_adaptive_kl_moves_towards_target_and_fixed_kl_never_moves() -> None:
    ctl = AdaptiveKL(init_beta=0.1, target=6.0, horizon=10_000)
    assert ctl.update(kl=12.0, n_steps=256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000))
    ctl = AdaptiveKL(init_beta=0.1, target=6.0, horizon=10_000)
    assert ctl.update(kl=6.6, n_steps=256) == pytest.approx(0.1 * (1 + 0.1 * 256 / 10_000))
    ctl = AdaptiveKL(init_beta=0.1, target=6.0, horizon=10_000)
    assert ctl.update(kl=3.0, n_steps=256) == pytest.approx(0.1 * (1 - 0.2 * 256 / 10_000))
    assert ctl.beta < 0.1
    fixed = FixedKL(0.05)
    for kl in (0.0, 100.0, -3.0):
        assert fixed.update(kl, n_steps=256) == 0.05
    assert fixed.beta == 0.05


def test_kl_controller_state_is_plain_floats() -> None:
    ctl = AdaptiveKL(init_beta=0.1, target=6.0, horizon=10_000)
    ctl.update(kl=12.0, n_steps=256)
    buf = io.BytesIO()
    torch.save(ctl.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    restored = AdaptiveKL(init_beta=1.0, target=1.0, horizon=1.0)
    restored.load_state_dict(json.loads(json.dumps(state)))
    assert restored.state_dict() == ctl.state_dict()
    assert all(type(v) is float for v in state.values())
    fixed = FixedKL(1.0)
    fixed.load_state_dict(json.loads(json.dumps(FixedKL(0.3).state_dict())))
    assert fixed.beta == 0.3


def test_group_advantages_grpo_and_rloo() -> None:
    rewards = t(1.0, 2.0, 6.0, 0.0, 0.0, 0.0)  # two prompts, three samples each
    std = math.sqrt((4 + 1 + 9) / 2)  # unbiased std of (1, 2, 6) around its mean 3
    grpo = group_advantages(rewards, group_size=3)
    close(grpo, [-2 / (std + 1e-4), -1 / (std + 1e-4), 3 / (std + 1e-4), 0, 0, 0])
    close(group_advantages(rewards, 3, scale=False), [-2, -1, 3, 0, 0, 0])
    # leave-one-out: 1 - (2+6)/2, 2 - (1+6)/2, 6 - (1+2)/2
    close(group_advantages(rewards, 3, kind="rloo"), [-3, -1.5, 4.5, 0, 0, 0])
    scaled = group_advantages(rewards, 3, kind="rloo", scale=True)[:3]
    close(scaled, [-3 / (std + 1e-4), -1.5 / (std + 1e-4), 4.5 / (std + 1e-4)])
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(rewards, group_size=4)


def _slow_sequence_logps(logits, labels, average):
    out = []
    for b in range(logits.shape[0]):
        total, n = 0.0, 0
        for i in range(1, logits.shape[1]):
            if labels[b, i] == -100:
                continue
            row = logits[b, i - 1].double().tolist()
            top = max(row)
            log_z = top + math.log(sum(math.exp(z - top) for z in row))
            total += row[int(labels[b, i])] - log_z
            n += 1
        out.append(total / max(n, 1) if average else total)
    return out


def test_sequence_logps_matches_a_slow_per_token_loop() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 11, generator=g) * 4
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, :3] = -100  # a prompt
    labels[1, 5:] = -100  # padding
    labels[2, 1:] = -100  # no label tokens at all: 0
    for average in (False, True):
        got = sequence_logps(logits, labels, average=average)
        assert got.dtype == torch.float32
        close(got, _slow_sequence_logps(logits, labels, average), tol=1e-5)
    # bf16 logits are scored in float32
    assert sequence_logps(logits.bfloat16(), labels).dtype == torch.float32


def test_token_entropy() -> None:
    close(token_entropy(torch.zeros(1, 8)), [math.log(8)], tol=1e-6)  # uniform over 8
    two = torch.tensor([[0.0, math.log(3)], [0.0, 50.0]])
    close(token_entropy(two), [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), 0.0], tol=1e-6)


# --- TRL parity -----------------------------------------------------------------------------


def _trl(module: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRLExperimentalWarning on trl.experimental imports
        return pytest.importorskip(module)


def _accelerator():
    identity = lambda x: x  # noqa: E731 - one process: gathers are the identity
    return SimpleNamespace(device=torch.device("cpu"), gather=identity, gather_for_metrics=identity)


def _trainer_stub(**attrs):
    """Only the attributes TRL's loss code reads; anything else it touches raises."""
    return SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=_accelerator(),
        aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
        **attrs,
    )


def _fused_head_outputs(per_token_logps):
    """What TRL's `fused_lm_head=True` forward returns, with our log-probs."""
    zeros = torch.zeros_like(per_token_logps.detach())
    return SimpleNamespace(
        log_probs=per_token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
    )


def _completion_batch(rows: int, width: int, seed: int):
    """Random per-token log-probs over a completion mask: 2 prompt tokens, then 1..n answer."""
    g = torch.Generator().manual_seed(seed)
    completion_mask = torch.zeros(rows, width, dtype=torch.long)
    for i in range(rows):
        completion_mask[i, 2 : 2 + int(torch.randint(1, width - 2, (1,), generator=g))] = 1
    shift_mask = completion_mask[:, 1:].double()
    base = (-3 * torch.rand(rows, width - 1, generator=g, dtype=torch.float64)).requires_grad_()
    return completion_mask, shift_mask, base, g


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def dpo_parity(loss_type: str, label_smoothing: float, seed: int = 0) -> tuple[float, float]:
    """Max |value| and |gradient| differences between `dpo` and DPOTrainer._compute_loss."""
    DPOTrainer = _trl("trl.trainer.dpo_trainer").DPOTrainer
    pairs, width, beta = 4, 9, 0.3
    completion_mask, shift_mask, base, g = _completion_batch(2 * pairs, width, seed)
    ref_chosen = -6 * torch.rand(pairs, generator=g, dtype=torch.float64)
    ref_rejected = -6 * torch.rand(pairs, generator=g, dtype=torch.float64)
    stub = _trainer_stub(
        precompute_ref_logps=True,
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        args=SimpleNamespace(),
    )
    inputs = {
        "input_ids": torch.randint(0, 50, (2 * pairs, width), generator=g),
        "attention_mask": torch.ones(2 * pairs, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }

    def model(**kwargs):
        return _fused_head_outputs(base * shift_mask)

    theirs = DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)
    (their_grad,) = torch.autograd.grad(theirs, base)

    logps = (base * shift_mask).sum(-1)
    if loss_type == "ipo":  # IPO scores length-averaged log-probs (see `dpo`)
        logps = logps / shift_mask.sum(-1)
        ref_chosen = ref_chosen / shift_mask[:pairs].sum(-1)
        ref_rejected = ref_rejected / shift_mask[pairs:].sum(-1)
    chosen, rejected = logps.chunk(2)
    losses, chosen_rewards, rejected_rewards = dpo(
        chosen, rejected, ref_chosen, ref_rejected, beta, loss_type, label_smoothing
    )  # type: ignore[arg-type]
    ours = losses.mean()
    (our_grad,) = torch.autograd.grad(ours, base)
    if loss_type != "ipo":  # TRL logs the unaveraged rewards, also for IPO
        metrics = stub._metrics["train"]
        assert metrics["rewards/chosen"][0] == pytest.approx(chosen_rewards.mean().item(), abs=TOL)
        assert metrics["rewards/rejected"][0] == pytest.approx(
            rejected_rewards.mean().item(), abs=TOL
        )
    assert their_grad.abs().max() > 0
    return _max_abs(ours, theirs), _max_abs(our_grad, their_grad)


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing"),
    [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.0), ("robust", 0.2)],
)
def test_dpo_matches_trl(loss_type: str, label_smoothing: float) -> None:
    """`dpo` vs `DPOTrainer._compute_loss` (TRL's batch mean), value and d/d(policy logps)."""
    value_diff, grad_diff = dpo_parity(loss_type, label_smoothing)
    assert value_diff < TOL and grad_diff < TOL


def kto_parity(kl_sign: float, seed: int = 0) -> tuple[float, float]:
    """Max |value| and |gradient| differences between `kto` and KTOTrainer._compute_loss."""
    KTOTrainer = _trl("trl.trainer.kto_trainer").KTOTrainer
    rows, width, beta = 6, 8, 0.2
    completion_mask, shift_mask, base, g = _completion_batch(rows, width, seed)
    kl_mask, kl_shift, kl_base, _ = _completion_batch(rows, width + 1, seed + 1)
    kl_base = kl_base.detach()
    desirable = torch.tensor([True, False, True, True, False, False])
    ref_logps = -6 * torch.rand(rows, generator=g, dtype=torch.float64)
    kl_logps = (kl_base * kl_shift).sum(-1)
    ref_kl_logps = kl_logps - kl_sign * torch.rand(rows, generator=g, dtype=torch.float64)
    stub = _trainer_stub(
        calculate_KL=True,
        precompute_ref_logps=True,
        loss_type="kto",
        beta=beta,
        desirable_weight=1.5,
        undesirable_weight=0.7,
    )
    stub._compute_kl_logps = MethodType(KTOTrainer._compute_kl_logps, stub)  # TRL's own KL pass
    inputs = {
        "input_ids": torch.randint(0, 50, (rows, width), generator=g),
        "attention_mask": torch.ones(rows, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "label": desirable,
        "KL_input_ids": torch.randint(0, 50, (rows, width + 1), generator=g),
        "KL_attention_mask": torch.ones(rows, width + 1, dtype=torch.long),
        "KL_completion_mask": kl_mask,
        "ref_logps": ref_logps,
        "ref_KL_logps": ref_kl_logps,
    }

    def model(input_ids, **kwargs):  # the KL pass has the wider mismatched-pair batch
        if input_ids.shape[1] == width + 1:
            return _fused_head_outputs(kl_base * kl_shift)
        return _fused_head_outputs(base * shift_mask)

    theirs = KTOTrainer._compute_loss(stub, model, inputs, return_outputs=False)
    (their_grad,) = torch.autograd.grad(theirs, base)

    kl_estimate = (kl_logps - ref_kl_logps).mean()
    losses, _ = kto((base * shift_mask).sum(-1), ref_logps, desirable, kl_estimate, beta, 1.5, 0.7)
    ours = losses.mean()
    (our_grad,) = torch.autograd.grad(ours, base)
    assert stub._metrics["train"]["kl"][0] == pytest.approx(max(kl_estimate.item(), 0.0))
    assert their_grad.abs().max() > 0
    return _max_abs(ours, theirs), _max_abs(our_grad, their_grad)


@pytest.mark.parametrize("kl_sign", [1.0, -1.0], ids=["kl>0", "kl<0 clamped"])
def test_kto_matches_trl(kl_sign: float) -> None:
    """`kto` vs `KTOTrainer._compute_loss` (loss_type="kto"), value and d/d(policy logps)."""
    value_diff, grad_diff = kto_parity(kl_sign)
    assert value_diff < TOL and grad_diff < TOL


def _pair_logps(seed: int, dtype=torch.float64, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    chosen = (-3 * torch.rand(n, generator=g, dtype=dtype) - 1e-2).requires_grad_()
    rejected = (-3 * torch.rand(n, generator=g, dtype=dtype) - 1e-2).requires_grad_()
    return chosen, rejected


def _grads(loss: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    return torch.cat(torch.autograd.grad(loss, inputs))


def simpo_parity(label_smoothing: float, seed: int = 0) -> tuple[float, float]:
    """Max |value| and |gradient| differences between `simpo` and CPOTrainer.cpo_loss."""
    CPOTrainer = _trl("trl.experimental.cpo").CPOTrainer
    beta, gamma_beta_ratio = 2.0, 0.4
    chosen, rejected = _pair_logps(seed)
    stub = SimpleNamespace(
        alpha=0.0,
        accelerator=_accelerator(),
        loss_type="simpo",
        simpo_gamma=gamma_beta_ratio * beta,  # TRL's gamma is γ, the paper's γ/β times β
        beta=beta,
        label_smoothing=label_smoothing,
    )
    theirs, their_chosen, their_rejected = CPOTrainer.cpo_loss(stub, chosen, rejected)
    ours, our_chosen, our_rejected = simpo(
        chosen, rejected, beta, gamma_beta_ratio, label_smoothing
    )
    assert _max_abs(our_chosen, their_chosen) < TOL and _max_abs(our_rejected, their_rejected) < TOL
    value = _max_abs(ours, theirs)
    grad = _max_abs(_grads(ours.mean(), chosen, rejected), _grads(theirs.mean(), chosen, rejected))
    return value, grad


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl(label_smoothing: float) -> None:
    """`simpo` vs `trl.experimental.cpo.CPOTrainer.cpo_loss` (loss_type="simpo")."""
    value_diff, grad_diff = simpo_parity(label_smoothing)
    assert value_diff < TOL and grad_diff < TOL


def orpo_parity(seed: int = 0) -> tuple[float, float]:
    """Max |value| and |gradient| differences between `orpo` and odds_ratio_loss (float32)."""
    ORPOTrainer = _trl("trl.experimental.orpo").ORPOTrainer
    chosen, rejected = _pair_logps(seed, dtype=torch.float32)
    stub = SimpleNamespace(beta=0.25, accelerator=_accelerator())
    their_terms, _, _, _, their_log_odds = ORPOTrainer.odds_ratio_loss(stub, chosen, rejected)
    theirs = -their_terms  # TRL: loss = nll - mean(β log σ(log odds))
    ours, log_odds = orpo(chosen, rejected, beta=0.25)
    assert abs(log_odds.mean().item() - their_log_odds.item()) < TOL
    value = _max_abs(ours, theirs)
    grad = _max_abs(_grads(ours.mean(), chosen, rejected), _grads(theirs.mean(), chosen, rejected))
    return value, grad


def test_orpo_matches_trl() -> None:
    """`orpo` vs `trl.experimental.orpo.ORPOTrainer.odds_ratio_loss`, sign flipped."""
    value_diff, grad_diff = orpo_parity()
    assert value_diff < TOL and grad_diff < TOL


def bradley_terry_parity(with_margin: bool, seed: int = 0) -> tuple[float, float]:
    """Max |value| and |gradient| differences vs RewardTrainer.compute_loss."""
    RewardTrainer = _trl("trl.trainer.reward_trainer").RewardTrainer
    chosen, rejected = _pair_logps(seed)
    margin = torch.rand(chosen.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    stub = _trainer_stub(args=SimpleNamespace(center_rewards_coefficient=None))
    inputs = {"input_ids": torch.zeros(16, 3, dtype=torch.long)}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if with_margin:
        inputs["margin"] = margin.double()

    def model(**kwargs):
        return SimpleNamespace(logits=torch.cat([chosen, rejected]).unsqueeze(-1))

    theirs = RewardTrainer.compute_loss(stub, model, inputs)
    ours = bradley_terry(chosen, rejected, margin.double() if with_margin else None).mean()
    grad = _max_abs(_grads(ours, chosen, rejected), _grads(theirs, chosen, rejected))
    return _max_abs(ours, theirs), grad


@pytest.mark.parametrize("with_margin", [False, True], ids=["no margin", "margin"])
def test_bradley_terry_matches_trl(with_margin: bool) -> None:
    """`bradley_terry` vs `RewardTrainer.compute_loss` (TRL's mean over pairs)."""
    value_diff, grad_diff = bradley_terry_parity(with_margin)
    assert value_diff < TOL and grad_diff < TOL


def logps_parity(seed: int = 0) -> float:
    ORPOTrainer = _trl("trl.experimental.orpo").ORPOTrainer
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 10, 32, generator=g) * 3
    labels = torch.randint(0, 32, (4, 10), generator=g)
    labels[:, :3] = -100
    labels[1, 6:] = -100
    return max(
        _max_abs(
            sequence_logps(logits, labels, average=average),
            ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=average),
        )
        for average in (False, True)
    )


def test_sequence_logps_and_entropy_match_trl() -> None:
    """`sequence_logps` vs `ORPOTrainer.get_batch_logps`; `token_entropy` vs TRL's."""
    assert logps_parity() < TOL
    entropy_from_logits = _trl("trl.trainer.utils").entropy_from_logits
    logits = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(2)) * 5
    assert _max_abs(token_entropy(logits), entropy_from_logits(logits)) < TOL
