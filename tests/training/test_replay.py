"""`training.replay`: general rows mixed into fine-tuning at a set ratio; self-distilled
answers generated once per starting model and reused; the built-in prompts never touch
the forgetting probes."""

from __future__ import annotations

import json
from pathlib import Path

from tuneloop.config import recipe_from_dict
from tuneloop.training import replay, train

from conftest import SUPPORT

PROBES = Path(replay.__file__).parents[1] / "evaluation" / "probes" / "general.jsonl"


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def test_builtin_replay_prompts_hold_no_forgetting_probe() -> None:
    prompts = replay.replay_prompts(replay.BUILTIN)
    probe_rows = [json.loads(line) for line in PROBES.read_text().splitlines()]
    probes = {_norm(m["content"]) for r in probe_rows for m in r["messages"] if m["role"] == "user"}
    asked = [_norm(p[-1]["content"]) for p in prompts]
    assert len(asked) >= 150 and len(set(asked)) == len(asked)
    assert not set(asked) & probes
    # every prompt is a user turn awaiting an answer, and the probe categories are covered
    assert all(p[-1]["role"] == "user" for p in prompts)
    shipped = [json.loads(line) for line in replay.BUILTIN_PATH.read_text().splitlines()]
    assert {r["category"] for r in probe_rows} <= {r["category"] for r in shipped}


def test_mix_adds_the_ratio_and_uses_every_row_before_repeating() -> None:
    task = [[{"role": "user", "content": f"t{i}"}] for i in range(30)]
    pool = [[{"role": "user", "content": f"r{i}"}] for i in range(4)]
    mixed = replay.mix(task, pool, 0.25, seed=3)
    assert mixed[:30] == task and len(mixed) == 40  # 10 / 40 = 0.25
    drawn = [m[0]["content"] for m in mixed[30:]]
    assert sorted(drawn[:4]) == sorted(drawn[4:8]) == ["r0", "r1", "r2", "r3"]
    assert replay.mix(task, pool, 0.25, seed=3) == mixed  # seeded: a resume sees the same
    assert replay.replay_count(30, 0.0) == 0


def _recipe(model: Path, tmp_path: Path, ratio: float) -> object:
    return recipe_from_dict(
        {
            "name": "replay",
            "model": str(model),
            "data": {"train": str(SUPPORT / "train.jsonl"), "max_length": 96},
            "adapter": {"type": "lora", "r": 4, "alpha": 8},
            "training": {
                "max_steps": 1,
                "batch_size": 4,
                "learning_rate": 1e-3,
                "replay": {"ratio": ratio, "max_new_tokens": 6},
            },
            "output_dir": str(tmp_path / "runs"),
        }
    )


def _talkative(tiny_model: Path, out: Path) -> Path:
    """The tiny model with the embedding rows of special and blank tokens zeroed: tied to
    the output, their logits become 0, so its random greedy answers are visible text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i]).strip()]
    with torch.no_grad():
        model.get_input_embeddings().weight[blank] = 0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_self_distilled_replay_is_cached_and_linked(tiny_model: Path, tmp_path: Path) -> None:
    from tuneloop import registry

    model = _talkative(tiny_model, tmp_path / "talkative")
    first = train(_recipe(model, tmp_path, 0.2))
    meta = json.loads((Path(first.run_dir) / "run.json").read_text())
    record = meta["replay"]
    task_rows = len((SUPPORT / "train.jsonl").read_text().splitlines())
    assert record["task_rows"] == task_rows and record["cached"] is False
    assert record["replay_rows"] == round(task_rows * 0.2 / 0.8)
    assert meta["train_rows"] == task_rows + record["replay_rows"]
    # the replay rows reached tokenization with the task rows (none dropped here)
    tokenized = meta["tokenization"]["train"]
    assert tokenized["examples"] + sum(tokenized["dropped"].values()) == meta["train_rows"]
    cached = Path(record["file"])
    rows = [json.loads(line)["messages"] for line in cached.read_text().splitlines()]
    assert rows and all(r[-1]["role"] == "assistant" and r[-1]["content"] for r in rows)
    run = registry.get_run(first.run_id)
    linked = {d.role: d.dataset for d in run.datasets}
    assert linked["replay"].id == record["dataset_id"]
    assert linked["replay"].num_rows == len(rows)

    again = train(_recipe(model, tmp_path, 0.2))
    second = json.loads((Path(again.run_dir) / "run.json").read_text())["replay"]
    assert second["cached"] is True and second["key"] == record["key"]
    assert second["dataset_id"] == record["dataset_id"]  # same answers: the same version


def test_resume_stays_exact_with_replay_and_ewc_on(tiny_model: Path, tmp_path: Path) -> None:
    """Interrupted at step 3 and resumed, a run with replay rows and the EWC pull logs the
    same losses and penalties as the run that was never stopped."""
    import os
    import signal

    import pytest

    from tuneloop.errors import TrainingInterrupted

    model = _talkative(tiny_model, tmp_path / "talkative")

    def recipe(sub: str) -> object:
        r = _recipe(model, tmp_path / sub, 0.2)
        r.training.max_steps, r.training.save_steps, r.training.logging_steps = 6, 100, 1
        r.training.ewc, r.training.ewc_samples = 5.0, 4
        return r

    full = train(recipe("a"))

    def interrupt(step: int, _: object) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    run_dir = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted):
        train(recipe("b"), run_dir=run_dir, on_step=interrupt)
    resumed = train(recipe("b"), run_dir=run_dir, resume=True)

    def curve(history: list[dict]) -> dict[int, tuple[float, float]]:
        return {e["step"]: (e["loss"], e["ewc"]) for e in history if "loss" in e and "ewc" in e}

    a, b = curve(full.history), curve(resumed.history)
    assert sorted(b) == [1, 2, 3, 4, 5, 6] and b[6][1] > 0
    for step in range(1, 7):
        assert b[step] == pytest.approx(a[step], abs=1e-4), step
