"""DPO and its relatives: `dpo` (sigmoid, ipo, hinge, robust), `simpo`, `orpo` and `kto`.

Flow, top to bottom: recipe -> preference rows (read strictly, split, versioned) -> run
record -> tokenise (pairs that do not fit are dropped and counted, never truncated) -> model
with its trainable parameters -> the reference -> the shared loop with the method's objective
-> save -> record. Everything the loop gives SFT (exact resume, NaN guard, SIGTERM,
`--nproc`, early stopping on `eval_loss`) these methods get unchanged.

The reference model is never a second copy in memory:

- **LoRA**: the same model with the adapter switched off (peft's `disable_adapter()`), run
  under `no_grad` inside the objective's forward. With `model: run:ID` of an SFT LoRA run,
  that run is merged into the base and a new adapter trained on top, so the reference is the
  SFT model.
- **Full fine-tuning and `freeze`**: the initial model's answer log-probabilities, computed
  once before training and stored on the examples (`PairExample.ref_chosen/ref_rejected`).
  A resumed run recomputes them from the same initial weights before loading the checkpoint
  (deterministic: eval mode, no_grad, the same batches), so the run directory holds nothing
  extra and the resumed losses equal the uninterrupted ones.

One objective per method; the loss is picked once, from a small registry of named
functions, never by branching inside the forward pass. Pairwise objectives normalise by
pairs, KTO by examples (objectives.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tuneloop.config import Recipe
from tuneloop.errors import DataError, TrainingError
from tuneloop.training import common, losses
from tuneloop.training.objectives import Objective, collate, output_parts
from tuneloop.training.pairs import (
    PairExample,
    UnpairedExample,
    collate_pairs,
    collate_unpaired,
    pair_rows_to_unpaired,
    tokenize_pairs,
    tokenize_unpaired,
)
from tuneloop.training.tokenize import IGNORE, Example


def train_preference(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    resume: str | Path | bool = False,
    on_step: Any = None,
) -> common.TrainResult:
    """Run one `dpo`/`simpo`/`orpo`/`kto` job described by `recipe`.

    resume: True continues the latest checkpoint of the run in `run_dir`; a path names one
    checkpoint directory (as for SFT).
    """
    from tuneloop.models import load_tokenizer, resolve

    started = time.perf_counter()
    common.check_runtime(recipe)
    d, a = recipe.data, recipe.alignment
    main = common.is_main_process()
    unpaired = recipe.method == "kto"

    # --- data: read strictly; KTO takes pairs only when the recipe says to convert them
    kinds = ("preference",)
    if unpaired:
        kinds = ("kto", "preference") if a.pairs_to_unpaired else ("kto",)
    data = common.preference_data(recipe, main, kinds)
    train_rows, val_rows = data.train, data.validation
    if unpaired:
        train_rows, val_rows = _as_unpaired(train_rows), _as_unpaired(val_rows)

    # --- run record and directory
    resolved = resolve(recipe.model, loading=recipe.model_loading)
    run, run_path, meta = common.preference_run(
        recipe, data, resolved, run_dir, resume, main,
        system_prompt=d.system_prompt,
        prompt_format=common.prompt_format(recipe, data.format, None),
        alignment=a.model_dump(mode="json"),
    )  # fmt: skip
    timings = {"data_s": time.perf_counter() - started}
    with common.recording(run.id, main):
        t0 = time.perf_counter()
        tokenizer = load_tokenizer(resolved.base, resolved)
        tokenize = tokenize_unpaired if unpaired else tokenize_pairs
        train_tok = tokenize(tokenizer, train_rows, d.max_length, d.system_prompt)
        unit = "example" if unpaired else "pair"
        if not train_tok.examples:
            raise DataError(
                f"no training {unit} left after tokenisation: {dict(train_tok.dropped)} "
                f"(of {len(train_rows)}; raise data.max_length)"
            )
        val_tok = tokenize(tokenizer, val_rows, d.max_length, d.system_prompt, False)
        if val_rows and not val_tok.examples:
            raise DataError(
                f"no validation {unit} left after tokenisation: {dict(val_tok.dropped)} "
                f"(of {len(val_rows)}; raise data.max_length)"
            )
        meta["tokenization"] = {"train": train_tok.summary()}
        if val_rows:
            meta["tokenization"]["validation"] = val_tok.summary()
        train_examples, val_examples = train_tok.examples, val_tok.examples
        if unpaired:
            train_examples, val_examples = (
                with_kl_partners(train_examples),
                with_kl_partners(val_examples),
            )

        model, model_info = common.prepare_model(recipe, resolved)
        meta["model"] = model_info
        objective = objective_for(recipe)
        meta["reference"] = _reference_kind(objective, model)
        if meta["reference"] == "precomputed":
            t_ref = time.perf_counter()
            attach_reference(
                model,
                objective,
                [*train_examples, *val_examples],
                tokenizer.pad_token_id,
                recipe.training.batch_size * 2,
                common.use_bf16(recipe),
            )
            timings["reference_s"] = time.perf_counter() - t_ref
        lr = common.record_setup(recipe, run_path, meta, main)
        timings["setup_s"] = time.perf_counter() - t0

        result = common.fit(
            recipe,
            run,
            run_path,
            model,
            objective,
            train_examples,
            val_examples or None,
            tokenizer.pad_token_id,
            lr,
            resume,
            on_step,
            desc=recipe.method,
        )
        if main:
            common.save_final(model, tokenizer, run_path / "model", resolved.base)
    n_train = len(train_examples)
    extra = {f"train_{unit}s": n_train, f"dropped_{unit}s": sum(train_tok.dropped.values())}
    if result.train_s > 0:
        extra[f"train_{unit}s_per_s"] = n_train * result.epochs / result.train_s
    return common.complete(run, recipe, run_path, meta, result, timings, started, main, **extra)


def _as_unpaired(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO rows as they are; preference rows (allowed only with alignment.pairs_to_unpaired)
    split into a desirable chosen and an undesirable rejected example."""
    out: list[dict[str, Any]] = []
    for row in rows:
        out += pair_rows_to_unpaired([row]) if row.get("kind") == "preference" else [row]
    return out


# --- answer log-probabilities ----------------------------------------------------------------


def answer_logps(model: Any, input_ids: Any, attention_mask: Any, labels: Any) -> tuple[Any, Any]:
    """(summed log-prob of each row's label tokens, number of label tokens), float32.

    Equal to `losses.sequence_logps` on the full logits, but the output layer runs only on
    positions with a label (the answer): with a 49k-token vocabulary the full logits of a
    pair batch are the largest tensor of the step, and most positions are prompt.
    """
    import torch

    parts = output_parts(model)
    if parts is None:  # post-processed logits: the plain path
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        logps, mask = losses.token_logps(out.logits, labels)
        return logps.sum(-1).float(), mask.sum(-1)
    decoder, head = parts
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    rows = torch.arange(keep.size(0), device=keep.device)[:, None].expand_as(keep)[keep]
    logits = head(hidden[:, :-1][keep]).float()
    picked = logits.gather(1, targets[keep][:, None]).squeeze(1)
    token = picked - torch.logsumexp(logits, dim=-1)
    sums = torch.zeros(keep.size(0), dtype=torch.float32, device=token.device)
    return sums.index_add(0, rows, token), keep.sum(-1).float()


def _disabled_adapter_logps(model: Any, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
    """The reference's (sums, counts): the same peft model with its adapter off, in eval mode
    (no dropout, so the reference is one fixed function) and without autograd."""
    import torch

    training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter():
            return answer_logps(model, input_ids, attention_mask, labels)
    finally:
        model.train(training)


def _scores(sums: Any, counts: Any, average: bool) -> Any:
    return sums / counts.clamp(min=1) if average else sums


def _reference_kind(objective: Any, model: Any) -> str | None:
    if not objective.reference:
        return None
    return "adapter disabled" if hasattr(model, "disable_adapter") else "precomputed"


def _missing_reference() -> TrainingError:
    return TrainingError(
        "the batch has no reference log-probs and the model has no adapter to disable; "
        "call attach_reference before training a full model"
    )


def attach_reference(
    model: Any,
    objective: Any,
    examples: list[Any],
    pad_id: int,
    batch_size: int,
    bf16: bool = False,
) -> None:
    """Store the model's current answer scores on `examples` as their reference.

    For full fine-tuning (and `freeze`): called once with the initial model, before the loop
    (and again on resume, before the checkpoint is loaded), so the reference costs one
    no-grad pass over the data and no memory during training. Eval mode, no autograd, the
    loop's precision; batches sorted by length, so every call computes the same values.
    """
    import os

    import torch

    from tuneloop.progress import Progress

    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    model.to(device)
    training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: objective.length(examples[i]))
    bar = Progress(len(examples), "reference log-probs", objective.unit.rstrip("s"))
    try:
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            for lo in range(0, len(order), batch_size):
                chunk = [examples[i] for i in order[lo : lo + batch_size]]
                first, second = zip(*(objective.sides(e) for e in chunk), strict=True)
                batch = collate([*first, *second], pad_id)
                sums, counts = answer_logps(
                    model,
                    batch["input_ids"].to(device),
                    batch["attention_mask"].to(device),
                    batch["labels"].to(device),
                )
                scores = _scores(sums, counts, objective.average).tolist()
                for k, example in enumerate(chunk):
                    objective.set_reference(example, scores[k], scores[len(chunk) + k])
                bar.update(len(chunk))
    finally:
        bar.close()
        model.train(training)


# --- the pairwise objectives: dpo, simpo, orpo ---------------------------------------------

# (policy chosen, policy rejected, ref chosen | None, ref rejected | None) ->
# (per-pair losses, chosen rewards, rejected rewards, {extra per-pair statistic})
PairLoss = Callable[[Any, Any, Any, Any], tuple[Any, Any, Any, dict[str, Any]]]


def _dpo_loss(
    chosen: Any, rejected: Any, ref_chosen: Any, ref_rejected: Any, **settings: Any
) -> tuple[Any, Any, Any, dict[str, Any]]:
    out, rc, rr = losses.dpo(chosen, rejected, ref_chosen, ref_rejected, **settings)
    return out, rc, rr, {}


def _simpo_loss(
    chosen: Any, rejected: Any, ref_chosen: Any, ref_rejected: Any, **settings: Any
) -> tuple[Any, Any, Any, dict[str, Any]]:
    out, rc, rr = losses.simpo(chosen, rejected, **settings)
    return out, rc, rr, {}


def _orpo_loss(
    chosen: Any, rejected: Any, ref_chosen: Any, ref_rejected: Any, beta: float
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """ORPO: the chosen answer's NLL plus the odds-ratio term, per pair.

    The NLL is the chosen answer's mean per-token negative log-likelihood, per pair (the
    scores are length-averaged), so every pair weighs the same and the loss is normalised by
    pairs like the other methods (batch 8 = batch 1 x 8 accumulation). TRL instead averages
    the NLL over all chosen tokens of a batch, which weighs long answers more.
    """
    odds, log_odds = losses.orpo(chosen, rejected, beta)
    nll = -chosen
    stats = {"nll": nll.detach(), "log_odds_ratio": log_odds}
    return nll + odds, beta * chosen.detach(), beta * rejected.detach(), stats


class PairObjective(Objective):
    """A pairwise preference objective: one forward over 2B rows (chosen, then rejected),
    the answer scores (summed, or length-averaged), the reference's when the method has one,
    and one named loss. Normalised by pairs."""

    unit = "pairs"

    def __init__(self, name: str, loss: PairLoss, average: bool, reference: bool) -> None:
        self.name, self.loss, self.average, self.reference = name, loss, average, reference

    def collate(self, examples: list[PairExample], pad_id: int) -> dict[str, Any]:
        return collate_pairs(examples, pad_id)

    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["input_ids"].size(0)) // 2

    def module(self, model: Any) -> Any:
        return PairLossModule(model, self)

    def sides(self, example: PairExample) -> tuple[Example, Example]:
        return example.chosen, example.rejected

    def set_reference(self, example: PairExample, first: float, second: float) -> None:
        example.ref_chosen, example.ref_rejected = first, second


class KTOExample(UnpairedExample):
    """A KTO example with its mismatched sequence: this prompt and another example's
    completion (`with_kl_partners`), on which KTO estimates its KL reference point."""

    def __init__(self, base: UnpairedExample, kl: Example) -> None:
        super().__init__(base.example, base.desirable, base.prompt_length, base.ref_logp)
        self.kl = kl
        self.ref_kl: float | None = None


def with_kl_partners(examples: list[UnpairedExample]) -> list[KTOExample]:
    """Each example with a fixed mismatched partner: its prompt with the completion of the
    next example (cyclically) that has a different prompt.

    KTO's reference point z is the policy's KL from the reference, estimated as the mean
    log-ratio on prompt/completion pairs that do not belong together (Ethayarajh et al.
    2024; TRL shifts completions by one within a batch). The pairing is fixed once, here,
    rather than per training batch, so a full-fine-tuning reference can be precomputed for
    it and a resumed run sees the same pairs. With `pairs_to_unpaired` the two halves of a
    pair share a prompt, hence "different prompt"; the mismatched sequence may run past
    `max_length` (it is never trained, only scored).
    """
    n = len(examples)
    prompts = [e.example.input_ids[: e.prompt_length] for e in examples]
    out = []
    for i, e in enumerate(examples):
        ahead = range(i + 1, i + min(n, 64))
        j = next((k % n for k in ahead if prompts[k % n] != prompts[i]), (i + 1) % n)
        partner, start = examples[j].example, examples[j].prompt_length
        kl = Example(
            [*prompts[i], *partner.input_ids[start:]],
            [IGNORE] * len(prompts[i]) + partner.labels[start:],
        )
        out.append(KTOExample(e, kl))
    return out


class KTOObjective(Objective):
    """KTO on unpaired examples (desirable or not), normalised by examples.

    z, the KL estimate, is the detached mean log-ratio over the micro-batch's mismatched
    sequences, clamped at 0 (as in the paper and TRL). With gradient accumulation it is a
    per-micro-batch estimate, so KTO's batch 8 is close to, not equal to, batch 1 x 8.
    """

    name = "kto"
    unit = "examples"
    average = False
    reference = True

    def __init__(self, beta: float, desirable_weight: float, undesirable_weight: float) -> None:
        self.beta = beta
        self.weights = (desirable_weight, undesirable_weight)

    def collate(self, examples: list[KTOExample], pad_id: int) -> dict[str, Any]:
        import torch

        batch = collate_unpaired(examples, pad_id)
        kl = collate([e.kl for e in examples], pad_id)
        batch.update({f"kl_{k}": v for k, v in kl.items()})
        if all(e.ref_kl is not None for e in examples) and "ref_logp" in batch:
            batch["ref_kl"] = torch.tensor([e.ref_kl for e in examples], dtype=torch.float32)
        return batch

    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["desirable"].numel())

    def module(self, model: Any) -> Any:
        return KTOLossModule(model, self)

    def sides(self, example: KTOExample) -> tuple[Example, Example]:
        return example.example, example.kl

    def set_reference(self, example: KTOExample, first: float, second: float) -> None:
        example.ref_logp, example.ref_kl = first, second


# --- the registry: method -> objective, built once from the recipe's alignment section ------


def _dpo(a: Any) -> Objective:
    loss = functools.partial(_dpo_loss, beta=a.beta, loss=a.loss, label_smoothing=a.label_smoothing)
    # IPO is defined on length-averaged log-probs (TRL, the IPO authors); the others on sums
    return PairObjective("dpo", loss, average=a.loss == "ipo", reference=True)


def _simpo(a: Any) -> Objective:
    loss = functools.partial(
        _simpo_loss,
        beta=a.beta,
        gamma_beta_ratio=a.gamma_beta_ratio,
        label_smoothing=a.label_smoothing,
    )
    return PairObjective("simpo", loss, average=True, reference=False)


def _orpo(a: Any) -> Objective:
    return PairObjective(
        "orpo", functools.partial(_orpo_loss, beta=a.beta), average=True, reference=False
    )


def _kto(a: Any) -> Objective:
    return KTOObjective(a.beta, a.desirable_weight, a.undesirable_weight)


OBJECTIVES: dict[str, Callable[[Any], Objective]] = {
    "dpo": _dpo,
    "simpo": _simpo,
    "orpo": _orpo,
    "kto": _kto,
}


def objective_for(recipe: Recipe) -> Objective:
    """The objective of the recipe's method, with its `alignment` settings bound."""
    return OBJECTIVES[recipe.method](recipe.alignment)


# --- the modules the loop runs (the model plus its loss, so DDP/FSDP wrap the whole forward)


class PairLossModule(torch.nn.Module):
    """forward(**pair batch) -> (loss summed over pairs, {statistic summed over pairs})."""

    def __init__(self, model: Any, objective: PairObjective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(
        self,
        input_ids: Any,
        attention_mask: Any,
        labels: Any,
        ref_chosen: Any = None,
        ref_rejected: Any = None,
    ) -> tuple[Any, dict[str, Any]]:
        objective = self.objective
        sums, counts = answer_logps(self.model, input_ids, attention_mask, labels)
        scores = _scores(sums, counts, objective.average)
        b = scores.size(0) // 2
        if objective.reference and ref_chosen is None:
            if not hasattr(self.model, "disable_adapter"):
                raise _missing_reference()
            ref = _scores(
                *_disabled_adapter_logps(self.model, input_ids, attention_mask, labels),
                objective.average,
            )
            ref_chosen, ref_rejected = ref[:b], ref[b:]
        out, rc, rr, extra = objective.loss(scores[:b], scores[b:], ref_chosen, ref_rejected)
        stats = {
            "reward_accuracy": (rc > rr).sum(),
            "reward_margin": (rc - rr).sum(),
            "rewards_chosen": rc.sum(),
            "rewards_rejected": rr.sum(),
            **{k: v.sum() for k, v in extra.items()},
        }
        return out.sum(), stats


class KTOLossModule(torch.nn.Module):
    """forward(**KTO batch) -> (loss summed over examples, {statistic summed over examples}).

    `reward_accuracy` is the share of examples on the right side of the reference point
    (implicit reward above β·z for desirable, below for undesirable: what the loss asks);
    `reward_margin` the mean of that signed distance; `kl` the reference point z."""

    def __init__(self, model: Any, objective: KTOObjective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(
        self,
        input_ids: Any,
        attention_mask: Any,
        labels: Any,
        desirable: Any,
        kl_input_ids: Any,
        kl_attention_mask: Any,
        kl_labels: Any,
        ref_logp: Any = None,
        ref_kl: Any = None,
    ) -> tuple[Any, dict[str, Any]]:
        objective, model = self.objective, self.model
        policy, _ = answer_logps(model, input_ids, attention_mask, labels)
        with torch.no_grad():
            policy_kl, _ = answer_logps(model, kl_input_ids, kl_attention_mask, kl_labels)
        if ref_logp is None or ref_kl is None:
            if not hasattr(model, "disable_adapter"):
                raise _missing_reference()
            ref_logp, _ = _disabled_adapter_logps(model, input_ids, attention_mask, labels)
            ref_kl, _ = _disabled_adapter_logps(model, kl_input_ids, kl_attention_mask, kl_labels)
        z = (policy_kl - ref_kl).mean().clamp(min=0)
        beta = objective.beta
        out, rewards = losses.kto(policy, ref_logp, desirable, z, beta, *objective.weights)
        # judged against the reference point, as the loss judges: r > z is 'desirable'
        signed = torch.where(desirable, rewards - beta * z, beta * z - rewards)
        stats = {
            "reward_accuracy": (signed > 0).sum(),
            "reward_margin": signed.sum(),
            "kl": z * desirable.numel(),
        }
        return out.sum(), stats
