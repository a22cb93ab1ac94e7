"""DPO and its relatives on a tiny model: ln 2 at the start, the reference without a second
copy, learning a preference, exact resume, the NaN guard, and recipes that fail clearly."""

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
from tuneloop.errors import DataError, RecipeError, TrainingInterrupted
from tuneloop.training import train
from tuneloop.training.loop import NonFiniteLoss

from conftest import assert_one_line_error, run_cli, write_jsonl

MARKER = "Thanks!"  # every chosen answer ends with it; no rejected answer has it


def pref(user: str, chosen: str, rejected: str) -> dict[str, Any]:
    return {"prompt": user, "chosen": chosen, "rejected": rejected}


def marker_pairs(n: int) -> list[dict[str, Any]]:
    """Pairs whose chosen answer is the rejected one plus MARKER: a preference a tiny model
    can learn, and check on held-out prompts."""
    topics = ["the weather", "a recipe", "my car", "the train", "a book", "the garden"]
    rows = []
    for i in range(n):
        answer = f"Here is a note about {topics[i % len(topics)]}, number {i}."
        rows.append(
            pref(f"Tell me about {topics[i % len(topics)]} {i}.", f"{answer} {MARKER}", answer)
        )
    return rows


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", marker_pairs(40))


def _recipe(
    tiny_model: Path, tmp_path: Path, data_path: Path, method: str = "dpo", **sections: Any
) -> Any:
    training = {
        "precision": "fp32",
        "max_steps": 4,
        "batch_size": 4,
        "logging_steps": 1,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.0,
        **sections.pop("training", {}),
    }
    return recipe_from_dict(
        {
            "name": f"tiny-{method}",
            "model": str(tiny_model),
            "method": method,
            "data": {
                "train": str(data_path),
                "max_length": 64,
                "validation_split": 0.2,
                **sections.pop("data", {}),
            },
            "adapter": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
            | sections.pop("adapter", {}),
            "training": training,
            "output_dir": str(tmp_path / "runs"),
            **sections,
        }
    )


def _losses(history: list[dict[str, Any]]) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def _evals(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [h for h in history if "eval_loss" in h]


# --- the objective on a real tiny batch ---------------------------------------------------


def _tiny_batch(tiny_model: Path, n: int = 4) -> tuple[Any, list[Any]]:
    from tuneloop.data.preference import to_preference_row
    from tuneloop.models import load_tokenizer
    from tuneloop.training.pairs import tokenize_pairs

    tokenizer = load_tokenizer(str(tiny_model))
    rows = [to_preference_row(r, f"line {i}") for i, r in enumerate(marker_pairs(n))]
    return tokenizer, tokenize_pairs(tokenizer, rows, 64, progress=False).examples


def test_answer_logps_equal_sequence_logps_on_full_logits(tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.training.dpo import answer_logps
    from tuneloop.training.losses import sequence_logps
    from tuneloop.training.pairs import collate_pairs

    tokenizer, pairs = _tiny_batch(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    with torch.no_grad():
        sums, counts = answer_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"]
        )
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(sums, sequence_logps(logits, batch["labels"]), atol=1e-4)
    expected = (batch["labels"][:, 1:] != -100).sum(-1).float()
    assert torch.equal(counts, expected) and sums.shape == (8,) and (sums < 0).all()


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_dpo_loss_is_ln2_when_policy_equals_reference(
    tiny_model: Path, tmp_path: Path, pairs_file: Path, adapter: str
) -> None:
    """LoRA: B = 0 at the start, so the disabled adapter gives the same log-probs. Full: the
    reference is precomputed from the same weights. Either way h = 0 and the loss is ln 2."""
    import torch

    from tuneloop.models import resolve
    from tuneloop.training import common
    from tuneloop.training.dpo import attach_reference, objective_for

    recipe = _recipe(tiny_model, tmp_path, pairs_file, adapter={"type": adapter})
    tokenizer, pairs = _tiny_batch(tiny_model)
    model, _ = common.prepare_model(recipe, resolve(str(tiny_model)))
    objective = objective_for(recipe)
    if adapter == "full":
        assert not hasattr(model, "disable_adapter")
        attach_reference(model, objective, pairs, tokenizer.pad_token_id, 3)
        assert all(p.ref_chosen is not None and p.ref_chosen < 0 for p in pairs)
    batch = objective.collate(pairs, tokenizer.pad_token_id)
    assert ("ref_chosen" in batch) == (adapter == "full")
    loss, stats = objective.module(model)(**batch)
    n = objective.count(batch)
    assert n == 4
    assert float(loss.detach()) / n == pytest.approx(math.log(2), abs=1e-5)
    assert float(stats["reward_margin"]) == pytest.approx(0.0, abs=1e-5)
    loss.backward()  # the loss reaches the trainable weights (B of LoRA: its gradient)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in grads)
    if adapter == "lora":  # after a change to the adapter the policy moves, the reference not
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.add_(0.05)
            loss, _ = objective.module(model)(**batch)
        assert abs(float(loss) / n - math.log(2)) > 1e-4


def test_kl_partners_pair_each_prompt_with_another_prompts_completion() -> None:
    from tuneloop.training.dpo import with_kl_partners
    from tuneloop.training.pairs import UnpairedExample
    from tuneloop.training.tokenize import IGNORE, Example

    def ex(prompt: list[int], answer: list[int], good: bool) -> UnpairedExample:
        return UnpairedExample(Example(prompt + answer, [IGNORE] * len(prompt) + answer), good, 2)

    # as pairs_to_unpaired makes them: two examples per prompt
    examples = [ex([1, 2], [10], True), ex([1, 2], [11], False), ex([3, 4], [12, 13], True)]
    kl = [e.kl for e in with_kl_partners(examples)]
    assert [k.input_ids for k in kl] == [[1, 2, 12, 13], [1, 2, 12, 13], [3, 4, 10]]
    assert [k.labels for k in kl] == [[IGNORE, IGNORE, 12, 13]] * 2 + [[IGNORE, IGNORE, 10]]


@pytest.mark.parametrize(
    ("alignment", "expected"),
    [
        ({"loss": "ipo", "beta": 0.1}, 25.0),  # (h - 1/(2 beta))^2 at h = 0
        ({"loss": "hinge"}, 1.0),  # relu(1 - beta h)
        ({"loss": "robust", "label_smoothing": 0.1}, math.log(2)),
        ({"loss": "sigmoid", "label_smoothing": 0.2}, math.log(2)),  # cDPO
    ],
)
def test_dpo_variants_at_the_start_through_the_objective(
    tiny_model: Path, tmp_path: Path, pairs_file: Path, alignment: dict, expected: float
) -> None:
    from tuneloop.models import resolve
    from tuneloop.training import common
    from tuneloop.training.dpo import objective_for

    recipe = _recipe(tiny_model, tmp_path, pairs_file, alignment=alignment)
    tokenizer, pairs = _tiny_batch(tiny_model)
    model, _ = common.prepare_model(recipe, resolve(str(tiny_model)))
    objective = objective_for(recipe)
    assert objective.average == (alignment["loss"] == "ipo")
    batch = objective.collate(pairs, tokenizer.pad_token_id)
    loss, _ = objective.module(model)(**batch)
    assert float(loss.detach()) / objective.count(batch) == pytest.approx(expected, abs=1e-4)


# --- training runs -------------------------------------------------------------------------


def test_dpo_learns_the_marker_and_records_its_run(
    tiny_model: Path, tmp_path: Path, pairs_file: Path
) -> None:
    recipe = _recipe(tiny_model, tmp_path, pairs_file, training={"max_steps": 10, "eval_steps": 5})
    result = train(recipe)
    losses = _losses(result.history)
    assert losses[1] == pytest.approx(math.log(2), abs=1e-5)  # step 1 is measured before an update
    first = next(h for h in result.history if h["step"] == 1)
    assert {"reward_accuracy", "reward_margin", "rewards_chosen", "rewards_rejected"} <= set(first)
    evals = _evals(result.history)
    assert [e["step"] for e in evals] == [5, 10]
    assert evals[-1]["eval_reward_accuracy"] >= 0.85, evals
    assert evals[-1]["eval_reward_margin"] > 0.1 and evals[-1]["eval_loss"] < math.log(2) - 0.1
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["reference"] == "adapter disabled" and meta["method"] == "dpo"
    assert meta["tokenization"]["train"]["pairs"] == 32
    assert meta["tokenization"]["validation"]["pairs"] == 8
    assert result.metrics["train_pairs"] == 32 and result.metrics["dropped_pairs"] == 0
    assert result.metrics["train_pairs_per_s"] > 0
    assert (result.model_dir / "adapter_config.json").is_file()
    logged = [e for e in registry.run_metrics(result.run_id) if "eval_reward_accuracy" in e]
    assert len(logged) == 2
    assert registry.get_run(result.run_id).status == "completed"


def kto_rows(n: int) -> list[dict[str, Any]]:
    rows = []
    for p in marker_pairs(n):
        rows.append({"prompt": p["prompt"], "completion": p["chosen"], "label": True})
        rows.append(
            {"prompt": p["prompt"] + " Again.", "completion": p["rejected"], "label": False}
        )
    return rows


def test_kto_learns_the_marker_from_unpaired_rows(tiny_model: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "kto.jsonl", kto_rows(20))
    recipe = _recipe(
        tiny_model,
        tmp_path,
        data,
        "kto",
        alignment={"beta": 0.3},
        training={"max_steps": 12, "eval_steps": 6, "learning_rate": 3e-2},
    )
    result = train(recipe)
    losses = _losses(result.history)
    # the reference is the disabled adapter: at the start every log-ratio and z are 0,
    # so each example's loss is 1 - sigmoid(0) = 0.5
    assert losses[1] == pytest.approx(0.5, abs=1e-5)
    first, last = _evals(result.history)
    assert last["eval_reward_accuracy"] > first["eval_reward_accuracy"]
    assert last["eval_reward_accuracy"] >= 0.75, last
    assert last["eval_reward_margin"] > 0.05 and last["eval_loss"] < 0.5 - 0.02
    assert all(math.isfinite(h["kl"]) and h["kl"] >= 0 for h in result.history if "kl" in h)
    meta = json.loads((result.run_dir / "run.json").read_text())
    summary = meta["tokenization"]["train"]
    assert summary["examples"] == 32 and summary["desirable"] + summary["undesirable"] == 32
    assert result.metrics["train_examples"] == 32


@pytest.mark.parametrize(
    ("method", "alignment", "stat"),
    [
        ("simpo", {"beta": 2.0}, "reward_margin"),
        ("orpo", {}, "log_odds_ratio"),
        ("kto", {"pairs_to_unpaired": True}, "kl"),
    ],
)
def test_relatives_train_and_log_finite_losses(
    tiny_model: Path, tmp_path: Path, pairs_file: Path, method: str, alignment: dict, stat: str
) -> None:
    recipe = _recipe(
        tiny_model, tmp_path, pairs_file, method, alignment=alignment, training={"max_steps": 2}
    )
    result = train(recipe)
    logged = [h for h in result.history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2]
    assert all(math.isfinite(h["loss"]) and math.isfinite(h[stat]) for h in logged)
    assert logged[-1]["loss"] != logged[0]["loss"]  # the weights moved
    assert "eval_reward_accuracy" in _evals(result.history)[-1]
    if method == "orpo":  # the NLL of the chosen answer is part of the loss
        assert logged[0]["loss"] > logged[0]["nll"] > 1.0
    if method == "kto":  # every pair became a desirable and an undesirable example
        meta = json.loads((result.run_dir / "run.json").read_text())
        assert meta["tokenization"]["train"]["desirable"] == 32


def test_full_fine_tuning_precomputes_the_reference_and_resumes_exactly(
    tiny_model: Path, tmp_path: Path, pairs_file: Path
) -> None:
    """Full fine-tuning: the reference log-probs come from the initial weights, computed
    before training and again on resume (before the checkpoint is loaded)."""
    adapter = {"type": "full"}
    settings = {"max_steps": 5, "save_steps": 100, "learning_rate": 1e-3}
    full = train(_recipe(tiny_model, tmp_path, pairs_file, adapter=adapter, training=settings))
    a = _losses(full.history)
    assert a[1] == pytest.approx(math.log(2), abs=1e-5)
    assert a[5] < a[1]  # it learns, so later losses test the reference, not just ln 2
    meta = json.loads((full.run_dir / "run.json").read_text())
    assert meta["reference"] == "precomputed"

    def interrupt(step: int, model: Any) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    recipe = _recipe(tiny_model, tmp_path / "b", pairs_file, adapter=adapter, training=settings)
    run_dir = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted, match="saved checkpoint at step 2"):
        train(recipe, run_dir=run_dir, on_step=interrupt)
    resumed = train(recipe, run_dir=run_dir, resume=True)
    b = _losses(resumed.history)
    assert sorted(b) == [1, 2, 3, 4, 5]
    for step in range(1, 6):
        assert b[step] == pytest.approx(a[step], abs=1e-4), step
    eval_a, eval_b = _evals(full.history)[-1], _evals(resumed.history)[-1]
    assert eval_b["eval_loss"] == pytest.approx(eval_a["eval_loss"], abs=1e-4)


def test_nan_stops_the_run_and_saves_nothing(
    tiny_model: Path, tmp_path: Path, pairs_file: Path
) -> None:
    import torch

    def poison(step: int, model: Any) -> None:
        if step == 2:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))

    recipe = _recipe(tiny_model, tmp_path, pairs_file, training={"max_steps": 5, "save_steps": 100})
    run_dir = tmp_path / "nan"
    with pytest.raises(NonFiniteLoss, match="loss became nan at step 3"):
        train(recipe, run_dir=run_dir, on_step=poison)
    assert not (run_dir / "model").exists()
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert registry.get_run(run_id).status == "failed"


# --- recipes that cannot train ---------------------------------------------------------------


def test_kto_on_paired_data_without_conversion_is_refused(
    tiny_model: Path, tmp_path: Path, pairs_file: Path
) -> None:
    with pytest.raises(DataError, match="pairs_to_unpaired: true"):
        train(_recipe(tiny_model, tmp_path, pairs_file, "kto"))


def test_beta_must_be_positive(tiny_model: Path, tmp_path: Path, pairs_file: Path) -> None:
    with pytest.raises(RecipeError, match=r"alignment\.beta"):
        _recipe(tiny_model, tmp_path, pairs_file, alignment={"beta": 0.0})


def test_all_pairs_dropped_fails_clearly(tiny_model: Path, tmp_path: Path) -> None:
    long = "word " * 80
    data = write_jsonl(tmp_path / "long.jsonl", [pref(long, "yes", "no")] * 4)
    recipe = _recipe(tiny_model, tmp_path, data, data={"validation_split": 0.0})
    with pytest.raises(DataError, match=r"no training pair left .*longer than max_length': 4"):
        train(recipe)


def test_dpo_through_the_cli(tiny_model: Path, tmp_path: Path, pairs_file: Path) -> None:
    import yaml

    recipe = _recipe(tiny_model, tmp_path, pairs_file, training={"max_steps": 1})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    proc = run_cli("train", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "completed" in proc.stdout
    metrics = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert metrics["train_steps"] == 1 and metrics["train_pairs"] == 32
    assert metrics["eval_loss"] > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("beta: 0.1", "beta: -1.0"))
    assert_one_line_error(run_cli("train", str(bad)), "alignment.beta")
