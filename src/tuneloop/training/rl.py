"""The rollout loop PPO, GRPO and RLOO share: sample answers, score them, learn from them.

Why a loop of its own rather than `loop.run_loop`: an RL step makes its own data (answers
sampled from the current policy and scored by the rewards) and then takes several optimizer
steps over it (`rl.ppo_epochs` passes of `rl.minibatches`), so the SFT loop's fixed data
order and one-update-per-batch accounting do not fit. What it keeps from that loop, by using
the same pieces: checkpoints (`checkpoint.py`: manifest-verified, tensors loaded
weights-only, every non-tensor state JSON), exact resume, the NaN guard, SIGTERM
(`loop._StopSignal`), `metrics.jsonl` and the shared run epilogue (`common.recording`,
`common.complete`).

One step, top to bottom: the step's prompts (a pure function of the seed and the step, so
resume is exact) -> `models.generate.sample` (the rollout engine) -> rewards (Python
functions and reward models, weighted) -> log-probs of the policy, of the reference (the
same model with its LoRA adapter disabled: never a second copy) and, for PPO, values ->
the method's `prepare` (advantages) -> `ppo_epochs` x `minibatches` of the method's `loss`
-> the KL controller -> log, held-out reward, checkpoint.

What differs by method is a small object (`Method`): `ppo.PPO` (value head, KL in the
reward, GAE) and `grpo.GroupRL` (group baselines, k3 KL in the loss).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from tuneloop.config import Recipe
from tuneloop.errors import DataError, RecipeError, TrainingError, TrainingInterrupted
from tuneloop.training import common
from tuneloop.training.tokenize import IGNORE

Conversation = list[dict[str, str]]
RewardFunction = Callable[[Conversation, str], float]
VALUE_HEAD_FILE = "value_head.pt"


class NonFiniteReward(TrainingError):
    """A reward came back NaN or infinite; the run stopped and nothing was saved."""


# --- rewards ------------------------------------------------------------------------------


@dataclass
class RewardTerm:
    """One weighted reward: `score(prompts, answers)` gives one float per answer."""

    name: str
    weight: float
    score: Callable[[list[Conversation], list[str]], list[float]]
    value_init: Any = None  # a reward model's score head, to start PPO's value head from


def load_reward_function(spec: str) -> RewardFunction:
    """The function `name` of `path/to/file.py:name`, loaded and checked now, so a typo is one
    line at startup rather than a crash after the model has loaded."""
    path_text, sep, name = spec.rpartition(":")
    where = f"rl.rewards function {spec!r}"
    if not sep or not path_text or not name.isidentifier():
        raise RecipeError(f"{where}: expected path/to/file.py:function_name")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise RecipeError(f"{where}: no such file {path}")
    module_name = "tuneloop_reward_" + re.sub(r"\W", "_", str(path.resolve()))
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RecipeError(f"{where}: {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise RecipeError(f"{where}: {path} failed to load ({type(err).__name__}: {err})") from None
    fn = getattr(module, name, None)
    if fn is None:
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise RecipeError(
            f"{where}: {path} defines no {name!r}"
            + (f" (functions there: {', '.join(found[:5])})" if found else "")
        )
    if not callable(fn):
        raise RecipeError(f"{where}: {name!r} in {path} is not a function")
    try:
        inspect.signature(fn).bind([{"role": "user", "content": ""}], "")
    except TypeError:
        raise RecipeError(
            f"{where}: {name} must take (prompt_messages, answer_text) and return a float"
        ) from None
    except ValueError:  # a builtin without a signature: let the first call tell
        pass
    return fn


def _function_term(spec: str, weight: float) -> RewardTerm:
    fn = load_reward_function(spec)
    label = spec.rpartition(":")[2]

    def score(prompts: list[Conversation], answers: list[str]) -> list[float]:
        out = []
        for prompt, answer in zip(prompts, answers, strict=True):
            try:
                value = fn(prompt, answer)
                out.append(float(value))
            except (TypeError, ValueError) as err:
                raise TrainingError(
                    f"reward function {label} returned {value!r}, not a number ({err})"
                ) from None
        return out

    return RewardTerm(label, weight, score)


def _model_term(ref: str, weight: float) -> RewardTerm:
    """A reward model behind the scorer interface of `tuneloop.models.reward`:
    `load_reward_model(ref)` and `score(model, tokenizer, conversations) -> list[float]`,
    a conversation being the prompt messages plus the assistant answer."""
    try:
        from tuneloop.models import reward as reward_models
    except ModuleNotFoundError:
        raise RecipeError(
            f"rl.rewards model {ref!r}: reward models are not available in this build "
            "(tuneloop.models.reward is missing); use a reward function"
        ) from None
    loaded = reward_models.load_reward_model(ref)
    if isinstance(loaded, tuple):
        model, tokenizer = loaded
        scorer = lambda convs: reward_models.score(model, tokenizer, convs)  # noqa: E731
    else:  # a loaded reward model object that knows its own prompting
        model = loaded.model
        scorer = loaded.score

    def score(prompts: list[Conversation], answers: list[str]) -> list[float]:
        pairs = zip(prompts, answers, strict=True)
        convs = [[*p, {"role": "assistant", "content": a}] for p, a in pairs]
        return [float(x) for x in scorer(convs)]

    head = getattr(model, "score", None)
    return RewardTerm(ref, weight, score, getattr(head, "weight", None))


def reward_terms(recipe: Recipe, with_models: bool) -> list[RewardTerm]:
    """The recipe's rewards; functions always (cheap, checked at startup), reward models
    only when `with_models` (after the data is read, as they take a while to load)."""
    terms = []
    for spec in recipe.rl.rewards:
        if spec.function is not None:
            terms.append(_function_term(spec.function, spec.weight))
        elif with_models and spec.model is not None:
            terms.append(_model_term(spec.model, spec.weight))
    return terms


def score_answers(
    terms: list[RewardTerm], prompts: list[Conversation], answers: list[str]
) -> tuple[list[float], dict[str, float]]:
    """(weighted total per answer, mean of each term); a non-finite total is the caller's."""
    totals = [0.0] * len(answers)
    means: dict[str, float] = {}
    for term in terms:
        values = term.score(prompts, answers)
        if len(values) != len(answers):
            raise TrainingError(f"reward {term.name} gave {len(values)} scores for {len(answers)}")
        totals = [t + term.weight * v for t, v in zip(totals, values, strict=True)]
        means[term.name] = sum(values) / max(len(values), 1)
    return totals, means


# --- prompts ------------------------------------------------------------------------------


def prompt_of(row: dict[str, Any]) -> Conversation:
    """The prompt of a data row: a chat row's messages before its last assistant turn, a
    preference or KTO row's `prompt`."""
    if row["kind"] == "sft":
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        return list(messages[:last]) if last is not None else list(messages)
    return list(row.get("prompt") or [])


def _has_question(prompt: Conversation) -> bool:
    return any(m["role"] == "user" for m in prompt)


# --- rollouts as tensors ------------------------------------------------------------------


@dataclass
class Rollout:
    """Sampled answers as one batch: prompts left-padded to `width`, answers right-padded
    after them, so every answer starts at column `width` and the policy's output layer runs
    on the answer columns only (`logits_to_keep`)."""

    input_ids: Any
    attention_mask: Any
    position_ids: Any
    labels: Any  # (n, answer + 1): IGNORE, then the answer tokens (IGNORE on padding)
    scores: Any  # (n,) total reward

    def rows(self, idx: Any) -> Rollout:
        return Rollout(*(getattr(self, f.name)[idx] for f in fields(self)))


def to_rollout(samples: list[Any], scores: list[float], pad_id: int) -> Rollout:
    import torch

    from tuneloop.models.generate import left_pad

    prompts, mask = left_pad([s.prompt_ids for s in samples], pad_id)
    longest = max(1, max(len(s.ids) for s in samples))
    answers = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    answer_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, s in enumerate(samples):
        answers[row, : len(s.ids)] = torch.tensor(s.ids, dtype=torch.long)
        answer_mask[row, : len(s.ids)] = 1
    ids = torch.cat([prompts, answers], 1)
    attention = torch.cat([mask, answer_mask], 1)
    labels = torch.cat(
        [torch.full((len(samples), 1), IGNORE), answers.masked_fill(answer_mask == 0, IGNORE)], 1
    )
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return Rollout(ids, attention, positions, labels, torch.tensor(scores, dtype=torch.float32))


@dataclass
class Forward:
    """Per answer token `(n, answer)`: log-probs, the 0/1 mask, values (PPO) and entropy."""

    logps: Any
    mask: Any
    values: Any = None
    entropy: Any = None


def forward(
    policy: Any, batch: Rollout, values: bool, temperature: float = 1.0, entropy: bool = False
) -> Forward:
    """One pass of the policy (or, inside `disable_adapter()`, the reference) over a batch.

    The logits are divided by the sampling temperature, so the log-probabilities are those
    of the distribution the answers were drawn from (the policy gradient's premise)."""
    from tuneloop.training.losses import token_entropy, token_logps

    keep = batch.labels.shape[1]
    device = next(policy.parameters()).device
    out = policy.model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        position_ids=batch.position_ids.to(device),
        output_hidden_states=values,
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits / temperature if temperature != 1.0 else out.logits
    logps, mask = token_logps(logits, batch.labels.to(device))
    result = Forward(logps, mask)
    if values:  # the value of the state before each answer token
        hidden = out.hidden_states[-1][:, -keep:-1]
        result.values = policy.value_head(hidden.to(policy.value_head.weight.dtype)).squeeze(-1)
    if entropy:
        result.entropy = token_entropy(logits[:, :-1].detach())
    return result


# --- the method interface -----------------------------------------------------------------


class Method(Protocol):
    """What PPO, GRPO and RLOO do differently; everything else is this module's."""

    name: str
    uses_values: bool  # PPO's value head

    def group_size(self) -> int:
        """Answers sampled per prompt."""
        ...

    def prepare(
        self, batch: Rollout, old: Forward, ref_logps: Any, beta: float
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """Rollout-time targets (per row, sliced into minibatches) and statistics to log."""
        ...

    def loss(self, new: Forward, targets: dict[str, Any], beta: float) -> tuple[Any, dict]:
        """The minibatch loss and its statistics (floats or 0-d tensors)."""
        ...


def policy_module(model: Any, value_head: Any) -> Any:
    """The trained parameters as one module: the LoRA policy (`.model`) and PPO's value head
    (`.value_head`, None for GRPO/RLOO), so one `trainable_state` holds both in a checkpoint
    and one optimizer steps both."""
    import torch

    module = torch.nn.Module()
    module.model = model
    module.value_head = value_head
    return module


def value_head(hidden: int, init: Any = None) -> Any:
    """PPO's value head, a linear map from the last hidden state to a scalar: from the reward
    model's score head when one is given and the widths match (the usual start, since the
    reward model already predicts the final score), else zeros (no prior over values)."""
    import torch

    head = torch.nn.Linear(hidden, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        if init is not None and tuple(init.shape) == (1, hidden):
            head.weight.copy_(init.detach().float())
    return head


# --- state and result ---------------------------------------------------------------------


@dataclass
class RLState:
    """Where a run is; the checkpoint's state.json (plain JSON, like loop.TrainState)."""

    step: int = 0
    loss_sum: float = 0.0
    train_s: float = 0.0
    rollout_s: float = 0.0
    learn_s: float = 0.0
    answer_tokens: int = 0
    controller: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> RLState:
        known = {f.name for f in fields(cls)}
        try:
            state = cls(**{k: v for k, v in data.items() if k in known})
            int(state.step), float(state.loss_sum), dict(state.controller)
        except (TypeError, ValueError) as err:
            raise TrainingError(f"checkpoint {where}: state.json is malformed ({err})") from None
        return state


@dataclass
class RLResult:
    steps: int
    train_s: float
    rollout_s: float
    learn_s: float
    train_loss: float
    final: dict[str, float]
    eval_reward: float | None = None
    eval_reward_start: float | None = None
    resumed_from: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "train_loss": self.train_loss,
            "train_steps": self.steps,
            "rollout_share": self.rollout_s / max(self.rollout_s + self.learn_s, 1e-9),
            **{f"final_{k}": v for k, v in self.final.items()},
        }
        if self.eval_reward is not None:
            out["eval_reward"] = self.eval_reward
        if self.eval_reward_start is not None:
            out["eval_reward_start"] = self.eval_reward_start
        return out


# --- the run ------------------------------------------------------------------------------


def train_rl(
    recipe: Recipe,
    method: Method,
    run_dir: str | Path | None = None,
    resume: str | Path | bool = False,
    on_step: Any = None,
) -> common.TrainResult:
    """Run one PPO/GRPO/RLOO job: setup shared with every method, then `_rollout_loop`."""
    from tuneloop.models import load_tokenizer, resolve
    from tuneloop.training.loop import launched_world

    started = time.perf_counter()
    common.check_runtime(recipe)
    if launched_world() > 1:
        raise TrainingError(f"method {recipe.method} runs in one process; drop --nproc")
    if recipe.adapter.type not in ("lora", "qlora"):
        raise RecipeError(
            f"method {recipe.method} trains a LoRA policy (its reference is the model with the "
            f"adapter disabled, so no second copy is held); set adapter.type: lora"
        )
    main = common.is_main_process()
    reward_terms(recipe, with_models=False)  # a bad reward function fails before anything loads
    data = common.preference_data(recipe, main, ("sft", "preference", "kto", "prompt"))
    train_prompts = [p for p in map(prompt_of, data.train) if _has_question(p)]
    val_prompts = [p for p in map(prompt_of, data.validation) if _has_question(p)]
    if recipe.eval.limit:
        val_prompts = val_prompts[: recipe.eval.limit]
    if not train_prompts:
        raise DataError(f"{data.path}: no row has a prompt to sample answers for")
    resolved = resolve(recipe.model, loading=recipe.model_loading)
    run, run_path = common.run_for(recipe, data.datasets, resolved.base, run_dir, resume)
    meta = common.run_meta(
        run, recipe, resolved.base, datasets=data.datasets, data_format=data.format
    )
    meta.update(
        prompts=len(train_prompts),
        validation_prompts=len(val_prompts),
        prompts_dropped=len(data.train) - len(train_prompts),
        group_size=method.group_size(),
    )
    timings = {"data_s": time.perf_counter() - started}
    with common.recording(run.id, main):
        t0 = time.perf_counter()
        tokenizer = load_tokenizer(resolved.base, resolved)
        model, model_info = common.prepare_model(recipe, resolved)
        terms = reward_terms(recipe, with_models=True)
        head = None
        if method.uses_values:
            init = next((t.value_init for t in terms if t.value_init is not None), None)
            head = value_head(model.config.hidden_size, init)
            meta["value_head_init"] = "reward model" if init is not None else "zeros"
        policy = policy_module(model, head)
        meta.update(model=model_info, rewards=[t.name for t in terms])
        lr = common.record_setup(recipe, run_path, meta, main)
        timings["setup_s"] = time.perf_counter() - t0
        result = _rollout_loop(
            recipe, method, policy, tokenizer, terms, train_prompts, val_prompts, lr,
            run.id, run_path, resume, on_step,
        )  # fmt: skip
        if main:
            common.save_final(model, tokenizer, run_path / "model", resolved.base)
            if head is not None:  # beside the adapter, which stays a plain PEFT folder
                import torch

                torch.save(head.state_dict(), run_path / VALUE_HEAD_FILE)
    timings.update(rollout_s=result.rollout_s, learn_s=result.learn_s)
    return common.complete(run, recipe, run_path, meta, result, timings, started, main)


def _controller(recipe: Recipe) -> Any:
    from tuneloop.training.losses import AdaptiveKL, FixedKL

    rl = recipe.rl
    if rl.kl_controller == "adaptive":
        return AdaptiveKL(rl.kl_coef, rl.kl_target, rl.kl_horizon)
    return FixedKL(rl.kl_coef)


def _rollout_loop(
    recipe: Recipe,
    method: Method,
    policy: Any,
    tokenizer: Any,
    terms: list[RewardTerm],
    prompts: list[Conversation],
    val_prompts: list[Conversation],
    lr: float,
    run_id: int,
    run_path: Path,
    resume: str | Path | bool,
    on_step: Any,
) -> RLResult:
    """Steps of rollout -> reward -> learn, with logs, held-out rewards and checkpoints."""
    import torch
    from transformers import get_scheduler

    from tuneloop import registry
    from tuneloop.progress import Progress
    from tuneloop.training.checkpoint import load_checkpoint, rotate, save_checkpoint
    from tuneloop.training.layouts import load_trainable_state, trainable_state
    from tuneloop.training.loop import (
        _param_groups,
        _read_log,
        _StopSignal,
        _truncate_log,
        batch_plan,
    )

    tr = recipe.training
    steps_per_epoch = max(1, math.ceil(len(prompts) / tr.batch_size))
    total = tr.max_steps if tr.max_steps > 0 else max(1, math.ceil(tr.epochs * steps_per_epoch))
    eval_every = (tr.eval_steps or steps_per_epoch) if val_prompts else 0
    save_every = tr.save_steps or eval_every or steps_per_epoch
    optimizer = torch.optim.AdamW(_param_groups(policy, tr.weight_decay), lr=lr)
    scheduler = get_scheduler(
        tr.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(tr.warmup_ratio * total),
        num_training_steps=total,
    )
    controller = _controller(recipe)
    ckpt_dir, metrics_path = run_path / "checkpoints", run_path / "metrics.jsonl"
    state = RLState()
    if resume:
        from tuneloop.training.checkpoint import latest_checkpoint, set_rng_state

        path = latest_checkpoint(ckpt_dir) if resume is True else Path(resume)
        ckpt = load_checkpoint(path)
        state = RLState.from_dict(ckpt["state"], path)
        load_trainable_state(policy, ckpt["weights"], path)
        optimizer.load_state_dict(ckpt["optimizer"]["optimizer"])
        scheduler.load_state_dict(ckpt["optimizer"]["scheduler"])
        controller.load_state_dict(state.controller)
        set_rng_state(ckpt["rng"])
        _truncate_log(metrics_path, state.step)
        print(f"resumed from step {state.step} of {total} ({path})", file=sys.stderr, flush=True)
    resumed_from = state.step if resume else None
    history = _read_log(metrics_path)

    def log(entry: dict[str, Any]) -> None:
        history.append(entry)
        with metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        registry.add_run_metrics(run_id, entry)

    def heldout(step: int) -> float:
        reward, length = _heldout_reward(policy.model, tokenizer, terms, val_prompts, recipe)
        log({"step": step, "eval_reward": reward, "eval_answer_length": length})
        return reward

    start_reward = heldout(0) if val_prompts and not resume else None
    last_reward = None
    bar = Progress(total, recipe.method, "step")
    bar.update(state.step)
    with _StopSignal() as stop:
        while state.step < total:
            step_no = state.step + 1
            epoch, in_epoch = divmod(state.step, steps_per_epoch)
            ids = batch_plan([1] * len(prompts), tr.batch_size, tr.seed, epoch, False)[in_epoch]
            entry = _step(
                recipe, method, policy, tokenizer, terms, [prompts[i] for i in ids],
                optimizer, controller, step_no,
            )  # fmt: skip
            scheduler.step()
            state.step = step_no
            state.loss_sum += entry["loss"]
            state.rollout_s += entry["rollout_s"]
            state.learn_s += entry["learn_s"]
            state.train_s += entry["rollout_s"] + entry["learn_s"]
            state.answer_tokens += entry.pop("_answer_tokens")
            log(entry)
            bar.update(1)
            bar.postfix(reward=f"{entry['reward']:.3f}", kl=f"{entry['kl']:.3f}")
            if on_step:
                on_step(step_no, policy.model)
            evaluated = bool(eval_every) and (step_no % eval_every == 0 or step_no == total)
            if evaluated:
                last_reward = heldout(step_no)
            due = evaluated or step_no % save_every == 0 or stop.received
            if due and step_no < total:
                state.controller = controller.state_dict()
                save_checkpoint(
                    ckpt_dir, step_no, trainable_state(policy), optimizer, scheduler, asdict(state)
                )
                rotate(ckpt_dir, tr.save_total_limit)
            if stop.received and step_no < total:
                bar.close()
                from signal import Signals

                raise TrainingInterrupted(
                    f"{Signals(stop.received).name} received: saved checkpoint at step "
                    f"{step_no} in {ckpt_dir}; resume with: tuneloop train --resume {run_path}"
                )
    bar.close()
    steps_logged = [h for h in history if "loss" in h]
    final = {
        k: steps_logged[-1][k] for k in ("reward", "kl", "kl_coef") if steps_logged
    }  # the last step's view of the run
    return RLResult(
        steps=state.step,
        train_s=state.train_s,
        rollout_s=state.rollout_s,
        learn_s=state.learn_s,
        train_loss=state.loss_sum / max(state.step, 1),
        final=final,
        eval_reward=last_reward,
        eval_reward_start=start_reward,
        resumed_from=resumed_from,
        history=history,
    )


def _step(
    recipe: Recipe,
    method: Method,
    policy: Any,
    tokenizer: Any,
    terms: list[RewardTerm],
    prompts: list[Conversation],
    optimizer: Any,
    controller: Any,
    step_no: int,
) -> dict[str, Any]:
    """One RL step: rollout, rewards, targets, the minibatch updates; returns its log line."""
    import numpy as np
    import torch

    from tuneloop.models.generate import sample
    from tuneloop.training.loop import NonFiniteLoss

    rl, tr = recipe.rl, recipe.training
    k = method.group_size()
    t0 = time.perf_counter()
    policy.model.eval()  # no dropout while sampling
    with _use_cache(policy.model):
        groups = sample(
            policy.model, tokenizer, prompts, n=k, max_new_tokens=rl.max_new_tokens,
            temperature=rl.temperature, top_p=rl.top_p, seed=tr.seed * 100_003 + step_no,
            batch_size=rl.generation_batch_size,
        )  # fmt: skip
    samples = [s for group in groups for s in group]
    rollout_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    flat_prompts = [p for p in prompts for _ in range(k)]
    scores, parts = score_answers(terms, flat_prompts, [s.text for s in samples])
    bad = next((s for s in scores if not math.isfinite(s)), None)
    if bad is not None:
        raise NonFiniteReward(
            f"reward became {bad} at step {step_no}; stopped before the update, nothing saved "
            "(check the reward function or reward model)"
        )
    batch = to_rollout(samples, scores, tokenizer.pad_token_id)
    policy.model.train()
    beta = controller.beta
    with torch.no_grad():
        old = forward(policy, batch, method.uses_values, rl.temperature, entropy=True)
        with policy.model.disable_adapter():
            ref = forward(policy, batch, False, rl.temperature)
    targets, stats = method.prepare(batch, old, ref.logps, beta)
    kl_per_answer = ((old.logps - ref.logps) * old.mask).sum(-1)
    sums: dict[str, float] = {}
    updates = 0
    rng = np.random.default_rng([tr.seed, step_no])
    n = len(samples)
    for _ in range(rl.ppo_epochs):
        order = rng.permutation(n)
        for chunk in np.array_split(order, min(rl.minibatches, n)):
            idx = torch.as_tensor(chunk, dtype=torch.long)
            new = forward(policy, batch.rows(idx), method.uses_values, rl.temperature)
            part = {name: value[idx] for name, value in targets.items()}
            loss, loss_stats = method.loss(new, part, beta)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(
                    f"loss became {float(loss)} at step {step_no}; stopped before the update, "
                    "nothing saved (lower training.learning_rate, or check the rewards)"
                )
            loss.backward()
            params = [p for p in policy.parameters() if p.requires_grad]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, tr.max_grad_norm))
            if not math.isfinite(grad_norm):
                raise NonFiniteLoss(
                    f"gradient norm became {grad_norm} at step {step_no}; stopped before the "
                    "update, nothing saved (lower training.learning_rate)"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            updates += 1
            for name, value in {"loss": loss, **loss_stats, "grad_norm": grad_norm}.items():
                sums[name] = sums.get(name, 0.0) + _number(value)
    learn_s = time.perf_counter() - t1
    kl = float(kl_per_answer.mean())
    controller.update(kl, n)
    tokens = int(old.mask.sum())
    entry: dict[str, Any] = {
        "step": step_no,
        "reward": float(batch.scores.mean()),
        "reward_std": float(batch.scores.std()) if n > 1 else 0.0,
        **({f"reward_{name}": v for name, v in parts.items()} if len(parts) > 1 else {}),
        **{name: v / max(updates, 1) for name, v in sums.items()},
        "kl": kl,
        "kl_coef": beta,
        "entropy": float((old.entropy * old.mask).sum() / old.mask.sum().clamp(min=1)),
        "answer_length": tokens / n,
        "stopped": sum(s.stopped for s in samples) / n,
        **stats,
        "learning_rate": optimizer.param_groups[0]["lr"],
        "rollout_s": rollout_s,
        "learn_s": learn_s,
        "rollout_share": rollout_s / max(rollout_s + learn_s, 1e-9),
        "rollout_tokens_per_s": tokens / max(rollout_s, 1e-9),
        "_answer_tokens": tokens,
    }
    return entry


def _number(value: Any) -> float:
    return float(value.detach()) if hasattr(value, "detach") else float(value)


@contextmanager
def _use_cache(model: Any) -> Iterator[None]:
    """The KV cache on while generating: `prepare_model` turns it off for training, and
    sampling without it recomputes the whole prefix at every new token."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    old, config.use_cache = config.use_cache, True
    try:
        yield
    finally:
        config.use_cache = old


def _heldout_reward(
    model: Any,
    tokenizer: Any,
    terms: list[RewardTerm],
    prompts: list[Conversation],
    recipe: Recipe,
) -> tuple[float, float]:
    """Mean reward (and answer length) of greedy answers to the held-out prompts: the
    number that says whether the policy improved, without the sampling noise."""
    from tuneloop.models.generate import sample

    model.eval()
    with _use_cache(model):
        groups = sample(
            model, tokenizer, prompts, n=1, max_new_tokens=recipe.rl.max_new_tokens,
            temperature=0.0, batch_size=recipe.rl.generation_batch_size,
        )  # fmt: skip
    answers = [g[0] for g in groups]
    scores, _ = score_answers(terms, prompts, [a.text for a in answers])
    bad = next((s for s in scores if not math.isfinite(s)), None)
    if bad is not None:
        raise NonFiniteReward(f"held-out reward became {bad}; stopped, nothing saved")
    model.train()
    return sum(scores) / len(scores), sum(len(a.ids) for a in answers) / len(answers)
