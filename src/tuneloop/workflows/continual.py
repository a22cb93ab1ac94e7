"""Continual fine-tuning: tasks learned one after another, each stage trained from the
last, and every task learned so far scored again after each stage, so the table shows what
each stage taught and what it cost the tasks before it.

    tuneloop continual PLAN.yaml [--out DIR]

A plan names a starting model and its stages, each a recipe with overrides and an eval
suite (paths relative to the plan; overrides as on the command line, relative to where the
command runs):

    name: support-then-intents
    model: smollm2-135m-instruct
    limit: 100             # at most this many examples per task and model (cost)
    stages:
      - name: support
        recipe: ../support/recipe.yaml
        suite: ../support/suite.yaml
      - name: intents
        recipe: ../banking77/recipe.yaml
        overrides: [data.train=../shared/data/banking77/train.csv, data.limit_per_label=10]
        suite: ../banking77/suite.yaml   # ${VALIDATION}: this stage's validation.jsonl

Stage k trains its recipe with `model` set to stage k-1's run (stage 1: the plan's model).
Then stage k's model is scored on the tasks of stages 1..k, and stage k-1's model on stage
k's own tasks (its score before it learned them). Every task is prompted as its own stage's
run prompts it (`prompt_as`): a later stage's system prompt or label set would otherwise
decide an earlier task's score. A stage without a suite is scored on its run's
`validation.jsonl` with its recipe's eval metrics. Tasks a suite reads as they are
(`use_run_format: false`, the general probes) are one shared row scored on every model,
the base included: the forgetting check across stages.

Everything done is kept in OUT/continual.json after each training and each score, so a
re-run with the same OUT skips it, and an interrupted stage resumes from its checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuneloop.errors import TuneloopError

PROBES = "general"  # the row of the general probes (and of any plain-chat suite task)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class StagePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    recipe: str
    overrides: list[str] = Field(default_factory=list)
    suite: str | None = None


class ContinualPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str
    stages: list[StagePlan] = Field(min_length=1)
    limit: int | None = Field(default=None, gt=0)
    probes: bool = True  # score the general probes on every model


def load_plan(path: str | Path) -> ContinualPlan:
    """Read and validate a plan; recipe and suite paths become absolute (relative to it)."""
    from tuneloop.config.load import load_yaml_model

    path = Path(path)
    plan = load_yaml_model(path, ContinualPlan, "continual plan")
    names = [s.name for s in plan.stages]
    if len(set(names)) != len(names):
        raise TuneloopError(f"continual plan {path}: stage names must be unique, got {names}")
    for i, stage in enumerate(plan.stages):
        for field in ("recipe", "suite"):
            value = getattr(stage, field)
            if value is None:
                continue
            full = (path.parent / os.path.expanduser(value)).resolve()
            if not full.is_file():
                raise TuneloopError(f"continual plan {path}: stages[{i}].{field}: no file {full}")
            setattr(stage, field, str(full))
    return plan


def _state_path(out: Path) -> Path:
    return out / "continual.json"


def _load_state(out: Path, plan: ContinualPlan) -> dict[str, Any]:
    """What an earlier invocation with this OUT finished; a different plan is refused."""
    import json

    fresh = {"plan": plan.model_dump(mode="json"), "stages": {}, "cells": {}}
    path = _state_path(out)
    if not path.is_file():
        return fresh
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TuneloopError(f"{path}: unreadable ({err}); move it away to start over") from None
    if state.get("plan") != fresh["plan"]:
        raise TuneloopError(
            f"{out} holds the results of a different plan; give another --out (or move "
            f"{path} away to start over)"
        )
    return state


def _save(out: Path, state: dict[str, Any]) -> None:
    from tuneloop.files import atomic_write_json

    atomic_write_json(_state_path(out), state)


def _stage_recipe(plan: ContinualPlan, k: int, start: str, out: Path) -> Any:
    from tuneloop.config import load_recipe

    stage = plan.stages[k]
    overrides = [
        *stage.overrides,
        f"model={start}",
        f"name={plan.name}-{k + 1}-{stage.name}",
        f"output_dir={out / 'runs'}",
    ]
    return load_recipe(stage.recipe, overrides)


def _earlier_run(recipe: Any) -> Any:
    """This stage's run from an earlier, interrupted invocation (same name, same folder)."""
    from tuneloop import registry

    folder = Path(recipe.output_dir).resolve()
    for run in registry.list_runs(limit=200):
        if run.name == recipe.name and run.run_dir and Path(run.run_dir).parent == folder:
            return run
    return None


def _train_stage(plan: ContinualPlan, k: int, start: str, out: Path) -> dict[str, Any]:
    from tuneloop import registry
    from tuneloop.config import load_recipe
    from tuneloop.training import train

    recipe = _stage_recipe(plan, k, start, out)
    earlier = _earlier_run(recipe)
    started = time.perf_counter()
    if earlier is not None and registry.run_status(earlier) != "completed":
        # resumed from its own recipe.yaml, as `tuneloop train --resume` does
        resumed = load_recipe(str(Path(earlier.run_dir) / "recipe.yaml"))
        result = train(resumed, run_dir=earlier.run_dir, resume=True)
    elif earlier is not None:
        result = None
    else:
        result = train(recipe)
    run = registry.get_run(result.run_id if result is not None else earlier.id)
    return {
        "run": f"run:{run.id}",
        "run_dir": str(run.run_dir),
        "seconds": round((run.timings or {}).get("train_s") or time.perf_counter() - started, 1),
    }


def _stage_tasks(plan: ContinualPlan, k: int, run_dir: str) -> list[Any]:
    """Stage k's tasks (suite tasks prompted as its run), named `stage/task`."""
    from tuneloop.evaluation.suite import SuiteTask, load_suite

    stage = plan.stages[k]
    if stage.suite is None:
        from tuneloop.config import load_recipe

        recipe = load_recipe(str(Path(run_dir) / "recipe.yaml"))
        data = recipe.data.eval or str(Path(run_dir) / "validation.jsonl")
        if not Path(data).is_file():
            raise TuneloopError(
                f"stage {stage.name}: nothing to score it on: give the stage a suite, or the "
                "recipe data.eval or data.validation_split"
            )
        tasks = [
            SuiteTask(
                name="validation",
                data=data,
                metrics=list(recipe.eval.metrics),
                max_new_tokens=recipe.eval.max_new_tokens,
                batch_size=recipe.eval.batch_size,
            )
        ]
    else:
        previous = os.environ.get("VALIDATION")
        os.environ["VALIDATION"] = str(Path(run_dir) / "validation.jsonl")
        try:
            tasks = list(load_suite(stage.suite).tasks)
        finally:
            if previous is None:
                os.environ.pop("VALIDATION", None)
            else:
                os.environ["VALIDATION"] = previous
    own = [t for t in tasks if t.use_run_format]
    return [t.model_copy(update={"name": f"{stage.name}/{t.name}"}) for t in own]


def _limited(task: Any, limit: int | None) -> Any:
    if limit is None or (task.limit is not None and task.limit <= limit):
        return task
    return task.model_copy(update={"limit": limit})


def _score(
    state: dict[str, Any], out: Path, task: Any, column: int, model: str, prompt_as: str | None
) -> None:
    """Score one (task, model) cell unless an earlier invocation did; saved at once."""
    from tuneloop.evaluation.suite import evaluate_task
    from tuneloop.intervals import mean_interval

    cells = state["cells"].setdefault(task.name, {})
    if str(column) in cells:
        return
    metric = task.metrics[0]
    result = evaluate_task(task, model, prompt_as=prompt_as)
    per_example = [ex["scores"].get(metric) for ex in result.examples]
    cell: dict[str, Any] = {"metric": metric, "value": float(result.metrics[metric])}
    if per_example and all(isinstance(v, int | float) for v in per_example):
        interval = mean_interval(per_example)
        cell.update(low=interval.low, high=interval.high, scores=per_example)
    cell.update(eval_id=result.eval_id, model=model, n=len(result.examples))
    cells[str(column)] = cell
    _save(out, state)


def run_continual(plan_path: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Train every stage and fill the task x stage table (module docstring); returns the
    report that OUT/continual.json and OUT/table.md hold."""
    from tuneloop.evaluation.suite import FORGETTING_METRIC, probe_task

    plan = load_plan(plan_path)
    directory = Path(out or f"continual-{plan.name}")
    directory.mkdir(parents=True, exist_ok=True)
    state = _load_state(directory, plan)
    models = [plan.model]
    probes = _limited(probe_task(), plan.limit) if plan.probes else None
    if probes is not None:  # scored by the forgetting check's metric, not exact match
        probes = probes.model_copy(update={"name": PROBES, "metrics": [FORGETTING_METRIC]})
    if probes is not None:
        _score(state, directory, probes, 0, plan.model, None)
    order: list[str] = []
    stage_tasks: list[list[Any]] = []  # each stage's tasks, read once
    for k, stage in enumerate(plan.stages):
        done = state["stages"].get(stage.name)
        if done is None:
            _say(f"continual: stage {k + 1}/{len(plan.stages)} ({stage.name}) from {models[-1]}")
            done = _train_stage(plan, k, models[-1], directory)
            state["stages"][stage.name] = done
            _save(directory, state)
        models.append(done["run"])
        tasks = [_limited(t, plan.limit) for t in _stage_tasks(plan, k, done["run_dir"])]
        stage_tasks.append(tasks)
        state.setdefault("tasks", {})[stage.name] = [t.name for t in tasks]
        for task in tasks:  # before: the model this stage started from
            _score(state, directory, task, k, models[k], done["run"])
        for j in range(k + 1):  # after: every task so far, each prompted as its own run
            owner = state["stages"][plan.stages[j].name]["run"]
            for task in stage_tasks[j]:
                _score(state, directory, task, k + 1, models[k + 1], owner)
        if probes is not None:
            _score(state, directory, probes, k + 1, models[k + 1], None)
        order += state["tasks"][stage.name]
    report = summarize(state, plan, models, order + ([PROBES] if probes is not None else []))
    from tuneloop.files import atomic_write_text

    report["table"] = table_markdown(report)
    _save(directory, {**state, "report": report})
    atomic_write_text(directory / "table.md", report["table"] + "\n")
    report["directory"] = str(directory)
    return report


def summarize(
    state: dict[str, Any], plan: ContinualPlan, models: list[str], rows: list[str]
) -> dict[str, Any]:
    """The table, and per task what its stage taught (`learned`) and what the later stages
    took away (`kept`: final minus right after learning; negative is forgetting);
    `backward_transfer` is the mean of `kept` over the tasks before the last stage."""
    from tuneloop.intervals import mean_interval

    columns = ["base", *(s.name for s in plan.stages)]
    learned_at = {t: i + 1 for i, s in enumerate(plan.stages) for t in state["tasks"][s.name]}
    table = []
    for name in rows:
        cells = state["cells"].get(name, {})
        entry: dict[str, Any] = {
            "task": name,
            "metric": next(iter(cells.values()))["metric"] if cells else None,
            "scores": [cells.get(str(c), {}).get("value") for c in range(len(columns))],
            "intervals": [
                [cells[str(c)]["low"], cells[str(c)]["high"]]
                if "low" in cells.get(str(c), {})
                else None
                for c in range(len(columns))
            ],
        }
        final = entry["scores"][-1]
        if name in learned_at:
            at = learned_at[name]
            before, after = entry["scores"][at - 1], entry["scores"][at]
            entry["stage"] = columns[at]
            entry["learned"] = after - before if None not in (before, after) else None
            entry["kept"] = final - after if None not in (final, after) else None
        else:  # the probes: change from the base, with a paired interval at the end
            first, last = (
                cells.get("0", {}).get("scores"),
                cells.get(str(len(columns) - 1), {}).get("scores"),
            )
            entry["stage"] = None
            if first and last and len(first) == len(last):
                # paired: the same probes before and after, so the interval is on the drop
                drop = mean_interval([a - b for a, b in zip(first, last, strict=True)])
                entry["drop"] = drop.as_dict()
        table.append(entry)
    earlier = [
        e["kept"]
        for e in table
        if e.get("stage") not in (None, columns[-1]) and e["kept"] is not None
    ]
    finals = [
        e["scores"][-1] for e in table if e.get("stage") is not None and e["scores"][-1] is not None
    ]
    return {
        "plan": plan.name,
        "models": models,
        "columns": columns,
        "rows": table,
        "average_final": sum(finals) / len(finals) if finals else None,
        "backward_transfer": sum(earlier) / len(earlier) if earlier else None,
        "stages": state["stages"],
    }


def table_markdown(report: dict[str, Any]) -> str:
    """The task x stage table as Markdown (scores after each stage; — not measured)."""
    columns = report["columns"]
    head = [
        "task (metric)",
        *(f"after {c}" if c != "base" else "base" for c in columns),
        "learned",
        "kept",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in report["rows"]:
        cells = ["—" if v is None else f"{v:.4f}" for v in row["scores"]]
        learned = row.get("learned")
        kept = row.get("kept")
        if row.get("drop"):
            d = row["drop"]
            kept_text = f"{-d['value']:+.4f} [{-d['high']:+.4f}, {-d['low']:+.4f}] vs base"
        else:
            kept_text = "—" if kept is None else f"{kept:+.4f}"
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{row['task']} ({row['metric']})",
                    *cells,
                    "—" if learned is None else f"{learned:+.4f}",
                    kept_text,
                ]
            )
            + " |"
        )
    bwt, avg = report.get("backward_transfer"), report.get("average_final")
    lines.append("")
    lines.append(f"average final score {avg:.4f}" if avg is not None else "average final score —")
    if bwt is not None:
        lines.append(f"backward transfer {bwt:+.4f} (mean change of earlier tasks by the end)")
    return "\n".join(lines)
