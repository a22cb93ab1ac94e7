"""Eval suites: named tasks (data, prompting, generation settings, metrics) run on any models.

    name: support-suite
    tasks:
      - name: intents
        data: data/validation.jsonl      # relative to the suite file
        metrics: [exact_match]
        max_new_tokens: 32
      - name: general
        data: builtin:general            # tuneloop's general-ability probe set
        metrics: [exact_match, token_f1]
    pairwise:                            # optional: judge every pair of models
      judge: smollm2-135m-instruct
      tasks: [general]
      limit: 50

`run_suite` evaluates every model on every task through `evaluate_file` (so every answer
and score lands in the registry), sorts each answer into error categories, and with
`pairwise` has the judge compare every pair of models on the same prompts (both orders)
and fits a Bradley-Terry leaderboard. `compare` puts a base and a tuned model side by side
per example and adds the forgetting check; `check_gate` turns the result into a pass/fail
for automation.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuneloop.config.recipe import Metric
from tuneloop.errors import TuneloopError
from tuneloop.evaluation.judge import conversation_text

BUILTIN = {"builtin:general"}
FORGETTING_METRIC = "token_f1"
FORGETTING_FLAG = 0.02  # a drop larger than this on the probe set is flagged


class SuiteTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    data: str
    format: str = "auto"
    system_prompt: str | None = None
    metrics: list[Metric] = Field(default_factory=lambda: ["exact_match", "token_f1"])
    max_new_tokens: int = Field(default=128, gt=0)
    batch_size: int = Field(default=16, gt=0)
    limit: int | None = Field(default=None, gt=0)
    constrain_labels: bool = False
    use_run_format: bool = Field(
        default=True,
        description="For a run, prompt new data as the run was trained (its recorded "
        "format, template and system prompt); false reads the file as it is.",
    )


class PairwiseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    judge: str
    criteria: str = "helpfulness, correctness and clarity"
    tasks: list[str] | None = None  # default: every task
    limit: int | None = Field(default=50, gt=0)


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    tasks: list[SuiteTask] = Field(min_length=1)
    pairwise: PairwiseConfig | None = None
    source: str | None = Field(default=None, exclude=True)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; task data paths resolve relative to it."""
    from tuneloop.config.load import load_yaml_model
    from tuneloop.evaluation.probes import general_probes

    path = Path(path)
    suite = load_yaml_model(path, Suite, "suite")
    names = [t.name for t in suite.tasks]
    if len(set(names)) != len(names):
        raise TuneloopError(f"suite {path}: task names must be unique, got {names}")
    if suite.pairwise and suite.pairwise.tasks:
        unknown = sorted(set(suite.pairwise.tasks) - set(names))
        if unknown:
            raise TuneloopError(f"suite {path}: pairwise.tasks names unknown tasks {unknown}")
    for task in suite.tasks:
        task.data = os.path.expanduser(os.path.expandvars(task.data))  # e.g. ${VALIDATION}
        if "$" in task.data:
            raise TuneloopError(f"suite {path}: task {task.name}: unset variable in {task.data}")
        if task.data == "builtin:general":
            task.data = str(general_probes())
        elif task.data.startswith("builtin:"):
            raise TuneloopError(f"suite {path}: unknown {task.data} (known: {sorted(BUILTIN)})")
        elif not Path(task.data).is_absolute():
            task.data = str((path.parent / task.data).resolve())
        if not Path(task.data).exists():
            raise TuneloopError(f"suite {path}: task {task.name}: no file {task.data}")
    suite.source = str(path)
    return suite


# --- error categories ----------------------------------------------------------------------


def categorize(example: dict[str, Any], classification: bool, json_task: bool) -> str:
    """One category per answer: correct, empty, truncated (hit the token budget),
    did_not_stop (the right answer, then more text), format_error (not JSON on a JSON
    task), not_in_label_set / wrong_label (classification), or wrong."""
    from tuneloop.evaluation.classification import OUTSIDE
    from tuneloop.evaluation.metrics import json_valid, normalize

    pred, ref = example["prediction"], example["reference"]
    scores = example.get("scores", {})
    if scores.get("exact_match") == 1.0 or normalize(pred) == normalize(ref):
        return "correct"
    if not pred.strip():
        return "empty"
    if classification and example.get("label") not in (None, OUTSIDE):
        return "wrong_label"  # named another label of the set
    stopped = scores.get("stopped", 1.0) == 1.0
    if normalize(ref) and normalize(pred).startswith(normalize(ref) + " "):
        return "did_not_stop"
    if not stopped:
        return "truncated"
    if json_task and json_valid([pred], [ref])[0] == 0.0:
        return "format_error"
    return "not_in_label_set" if classification else "wrong"


def categories(out: Any, metrics: list[str]) -> list[str]:
    """The category of every answer of an eval output (see `categorize`)."""
    from tuneloop.evaluation.classification import label_outcomes

    labels: list[str | None] = [None] * len(out.examples)
    if out.classification:
        names = out.classification["confusion_matrix"]["rows"]
        labels = label_outcomes([e["prediction"] for e in out.examples], names, names)[0]
    json_task = "json_valid" in metrics
    cats = []
    for ex, lab in zip(out.examples, labels, strict=True):
        cats.append(categorize({**ex, "label": lab}, out.classification is not None, json_task))
    return cats


# --- running a suite -----------------------------------------------------------------------


def evaluate_task(
    task: SuiteTask, model: str, run_id: int | None = None, prompt_as: str | None = None
) -> Any:
    """One task on one model (stored in the registry); every example gets its category.
    prompt_as: prompt as this run does, not as `model` (`evaluate_file`)."""
    from tuneloop.evaluation.run import evaluate_file

    out = evaluate_file(
        model,
        task.data,
        task.metrics,
        task.max_new_tokens,
        task.batch_size,
        task.limit,
        task.format,
        task.system_prompt,
        run_id=run_id,
        label=f"{task.name} / {model}",
        constrain_labels=task.constrain_labels,
        use_run_format=task.use_run_format,
        prompt_as=prompt_as,
    )
    for ex, cat in zip(out.examples, categories(out, list(task.metrics)), strict=True):
        ex["category"] = cat
    return out


def run_suite(suite: Suite, models: list[str]) -> dict[str, Any]:
    """Evaluate every model on every task (and judge pairs when configured)."""
    report, _ = _run_models(suite, models)
    return report


def _run_models(
    suite: Suite, models: list[str]
) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    """The suite report, and every (task, model) evaluation with its per-example answers."""
    from collections import Counter

    if not models:
        raise TuneloopError("a suite needs at least one --model")
    start = time.perf_counter()
    report: dict[str, Any] = {
        "suite": suite.name,
        "source": suite.source,
        "models": models,
        "tasks": {},
    }
    answers: dict[tuple[str, str], Any] = {}
    for task in suite.tasks:
        report["tasks"][task.name] = {"data": task.data, "metrics": task.metrics, "results": {}}
        for model in models:
            out = evaluate_task(task, model)
            cats = [ex["category"] for ex in out.examples]
            answers[(task.name, model)] = out
            report["tasks"][task.name]["results"][model] = {
                "metrics": out.metrics,
                "eval_id": out.eval_id,
                "examples": len(out.examples),
                "categories": dict(Counter(cats)),
                "classification": out.classification,
            }
    if suite.pairwise and len(models) > 1:
        report["pairwise"] = _pairwise(suite, models, answers)
    report["seconds"] = time.perf_counter() - start
    return report, answers


def _pairwise(suite: Suite, models: list[str], answers: dict[tuple[str, str], Any]) -> dict:
    from tuneloop.evaluation.judge import Judge, position_bias
    from tuneloop.evaluation.ranking import Game, leaderboard

    cfg = suite.pairwise
    assert cfg is not None
    judge = Judge(cfg.judge)
    out: dict[str, Any] = {"judge": cfg.judge, "criteria": cfg.criteria, "tasks": {}}
    all_games: list[Game] = []
    all_verdicts = []
    for task in suite.tasks:
        if cfg.tasks and task.name not in cfg.tasks:
            continue
        games, verdicts = [], []
        for a, b in itertools.combinations(models, 2):
            ea, eb = answers[(task.name, a)].examples, answers[(task.name, b)].examples
            n = min(len(ea), len(eb), cfg.limit or len(ea))
            questions = [conversation_text(ea[i]["prompt"]) for i in range(n)]
            result = judge.compare(
                questions,
                [ea[i]["prediction"] for i in range(n)],
                [eb[i]["prediction"] for i in range(n)],
                cfg.criteria,
            )
            verdicts += result
            games += [Game(a, b, v.winner) for v in result]
        all_games += games
        all_verdicts += verdicts
        out["tasks"][task.name] = {
            "leaderboard": leaderboard(games) if games else [],
            "position_bias": position_bias(verdicts),
        }
    out["leaderboard"] = leaderboard(all_games) if all_games else []
    out["position_bias"] = position_bias(all_verdicts)
    out["judge_calls"] = judge.calls
    return out


# --- compare: base vs tuned ----------------------------------------------------------------


def _primary(task: SuiteTask) -> str:
    return task.metrics[0]


def probe_task(max_new_tokens: int = 48, limit: int | None = None) -> SuiteTask:
    """The forgetting check's task: the general probes in plain chat, scored by token F1."""
    from tuneloop.evaluation.probes import general_probes

    return SuiteTask(
        name="forgetting",
        data=str(general_probes()),
        metrics=["exact_match", FORGETTING_METRIC],
        max_new_tokens=max_new_tokens,
        limit=limit,
        use_run_format=False,  # general ability: plain chat, not the tuned model's format
    )


def diff_examples(
    metric: str, base: list[dict[str, Any]], tuned: list[dict[str, Any]], top: int = 5
) -> dict[str, Any]:
    """Per example, base vs tuned on `metric`: improved / regressed / unchanged, both
    answers with their categories, and the `top` biggest wins and regressions."""
    from collections import Counter

    from tuneloop.evaluation.metrics import HIGHER_IS_BETTER

    sign = 1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0
    rows = []
    for i, (b, t) in enumerate(zip(base, tuned, strict=True)):
        sb, st = b["scores"].get(metric), t["scores"].get(metric)
        if not _finite(sb) or not _finite(st):  # e.g. perplexity of an empty reference
            delta, change = 0.0, "unscored"
        else:
            delta = sign * (st - sb)
            change = "improved" if delta > 1e-9 else "regressed" if delta < -1e-9 else "unchanged"
        rows.append(
            {
                "index": i,
                "prompt": conversation_text(b["prompt"]),
                "reference": b["reference"],
                "base": b["prediction"],
                "tuned": t["prediction"],
                "base_score": sb,
                "tuned_score": st,
                "delta": delta,
                "change": change,
                "base_category": b.get("category"),
                "tuned_category": t.get("category"),
            }
        )
    ordered = sorted(rows, key=lambda r: r["delta"])
    return {
        "metric": metric,
        "changes": dict(Counter(r["change"] for r in rows)),
        "wins": [r for r in ordered[::-1][:top] if r["change"] == "improved"],
        "regressions": [r for r in ordered[:top] if r["change"] == "regressed"],
        "examples": rows,
    }


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and x == x and abs(x) != float("inf")


def forgetting_summary(
    base: list[dict[str, Any]], tuned: list[dict[str, Any]], task: str = "forgetting"
) -> dict[str, Any]:
    """Probe score of base and tuned, the drop with a paired bootstrap interval, whether
    it is flagged, and the drop by probe category."""
    from tuneloop.intervals import bootstrap

    sb = [e["scores"][FORGETTING_METRIC] for e in base]
    st = [e["scores"][FORGETTING_METRIC] for e in tuned]
    diff = bootstrap(len(sb), lambda idx: sum(sb[i] - st[i] for i in idx) / len(idx))
    return {
        "task": task,
        "metric": FORGETTING_METRIC,
        "base": sum(sb) / len(sb),
        "tuned": sum(st) / len(st),
        "drop": diff.value,
        "drop_ci": diff.as_dict(),
        "flagged": diff.value > FORGETTING_FLAG and diff.low > 0,
        "by_category": _by_category(base, tuned),
    }


def compare(suite: Suite, base: str, tuned: str, top: int = 5) -> dict[str, Any]:
    """Run the suite on both models; per task, per example: improved / regressed /
    unchanged on the task's first metric, error categories of both, the biggest wins and
    regressions with their texts; plus the forgetting check on the general probes (the
    suite's own `builtin:general` task when it has one)."""
    from tuneloop.evaluation.probes import general_probes

    probe = str(general_probes())
    tasks = list(suite.tasks)
    forget = next(
        (
            t
            for t in tasks
            if Path(t.data) == Path(probe)
            and FORGETTING_METRIC in t.metrics
            and not t.use_run_format
        ),
        None,
    )
    if forget is None:  # the suite has no usable probe task: add one, under a free name
        forget = probe_task()
        names = {t.name for t in tasks}
        while forget.name in names:
            forget = forget.model_copy(update={"name": forget.name + "-probes"})
        tasks.append(forget)
    full = suite.model_copy(update={"tasks": tasks})
    report, answers = _run_models(full, [base, tuned])
    out: dict[str, Any] = {"suite": suite.name, "base": base, "tuned": tuned, "tasks": {}}
    for task in tasks:
        eb, et = answers[(task.name, base)].examples, answers[(task.name, tuned)].examples
        out["tasks"][task.name] = {
            "data": task.data,
            "base": report["tasks"][task.name]["results"][base],
            "tuned": report["tasks"][task.name]["results"][tuned],
            **diff_examples(_primary(task), eb, et, top),
        }
    out["forgetting"] = forgetting_summary(
        answers[(forget.name, base)].examples, answers[(forget.name, tuned)].examples, forget.name
    )
    if "pairwise" in report:
        out["pairwise"] = report["pairwise"]
    out["seconds"] = report["seconds"]
    return out


def _by_category(eb: list[dict], et: list[dict]) -> dict[str, dict[str, float]]:
    """Probe score by probe category (the probe file's `category` field), base vs tuned."""
    import json

    from tuneloop.evaluation.probes import general_probes

    cats = [
        json.loads(line)["category"]
        for line in general_probes().read_text("utf-8").splitlines()
        if line.strip()
    ]
    out: dict[str, dict[str, float]] = {}
    for cat in sorted(set(cats[: len(eb)])):
        idx = [i for i in range(len(eb)) if cats[i] == cat]
        b = sum(eb[i]["scores"][FORGETTING_METRIC] for i in idx) / len(idx)
        t = sum(et[i]["scores"][FORGETTING_METRIC] for i in idx) / len(idx)
        out[cat] = {"base": b, "tuned": t, "drop": b - t}
    return out


# --- gate ----------------------------------------------------------------------------------

_CLAUSE = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(>=|<=|==|>|<)\s*(-?[0-9.]+(?:e-?\d+)?)\s*$")


def parse_gate(gate: str) -> list[tuple[str, str, float]]:
    """(key, operator, number) clauses of a gate; a clear error for a malformed one, so a
    typo fails before any model runs."""
    clauses = []
    for clause in [c for c in gate.split(",") if c.strip()]:
        m = _CLAUSE.match(clause)
        try:
            number = float(m.group(3)) if m else None
        except ValueError:
            number = None
        if m is None or number is None:
            raise TuneloopError(
                f"gate clause {clause.strip()!r}: expected KEY OP NUMBER, e.g. accuracy>=0.9"
            )
        clauses.append((m.group(1), m.group(2), number))
    if not clauses:
        raise TuneloopError("empty gate: give clauses like accuracy>=0.9,forgetting.drop<=0.05")
    return clauses


def check_gate(result: dict[str, Any], gate: str) -> list[str]:
    """Failed clauses of a gate like "accuracy>=0.9,forgetting.drop<=0.05" (empty: pass).

    A key is `forgetting.drop` (or another forgetting field), `TASK.METRIC`, or a bare
    METRIC, taken from the first task that has it; values are the tuned model's. A key
    ending in `.delta` is the tuned value minus the base's (`support.rouge_l.delta>=0`:
    no worse than the model it would replace).
    """
    import operator

    ops = {
        ">=": operator.ge,
        "<=": operator.le,
        "==": operator.eq,
        ">": operator.gt,
        "<": operator.lt,
    }
    failed = []
    for key, op, limit in parse_gate(gate):
        value = _gate_value(result, key)
        if not ops[op](value, limit):
            failed.append(f"{key} = {value:.4f}, needs {op} {limit:g}")
    return failed


def _gate_value(result: dict[str, Any], key: str) -> float:
    if key.endswith(".delta") and not key.startswith("forgetting."):
        # tuned minus base: "support.rouge_l.delta>=0" = no worse than the model it replaces
        tuned = _gate_value_of(result, key.removesuffix(".delta"))
        return tuned - _gate_value_of(result, key.removesuffix(".delta"), side="base")
    return _gate_value_of(result, key)


def _gate_value_of(result: dict[str, Any], key: str, side: str = "tuned") -> float:
    if key.startswith("forgetting."):
        field = key.split(".", 1)[1]
        value = result.get("forgetting", {}).get(field)
        if not isinstance(value, int | float):
            raise TuneloopError(f"gate key {key!r}: no such forgetting value")
        return float(value)
    tasks = result["tasks"]
    # the longest task name that prefixes the key (task names may contain dots)
    owner = max((t for t in tasks if key.startswith(t + ".")), key=len, default=None)
    if owner is not None:
        task, metric = owner, key[len(owner) + 1 :]
        found = tasks[task][side]["metrics"].get(metric)
    else:
        task, metric = None, key
        found = next(
            (t[side]["metrics"][key] for t in tasks.values() if key in t[side]["metrics"]),
            None,
        )
    if found is None:
        where = f"task {task}" if task else "any task"
        raise TuneloopError(f"gate key {key!r}: {metric} was not measured on {where}")
    return float(found)


# --- reports -------------------------------------------------------------------------------


def write_report(
    result: dict[str, Any], out_dir: str | Path, title: str, gate: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """report.json (everything, per-example rows included) and a self-contained
    report.html in `out_dir`, both written atomically."""
    from tuneloop.evaluation.report import render_template
    from tuneloop.files import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = dict(result)
    if gate is not None:
        data["gate"] = gate
    json_path = out / "report.json"
    atomic_write_json(json_path, data, default=str)
    tasks = {}
    for name, task in data["tasks"].items():
        if "results" in task:  # run_suite
            results = task["results"]
            view = {"data": task["data"]}
        else:  # compare
            results = {data["base"]: task["base"], data["tuned"]: task["tuned"]}
            view = {k: task[k] for k in ("metric", "changes", "wins", "regressions")}
            view["data"] = task.get("data", "")
        names: list[str] = []
        for res in results.values():
            names += [m for m in res["metrics"] if m not in names]
        tasks[name] = {**view, "results": results, "metric_names": names}
    models = data.get("models") or [data.get("base"), data.get("tuned")]
    page = render_template(
        "suite.html",
        title=title,
        suite=data.get("suite"),
        models=models,
        seconds=data.get("seconds", 0.0),
        tasks=tasks,
        forgetting=data.get("forgetting"),
        pairwise=data.get("pairwise"),
        gate=gate,
    )
    html_path = out / "report.html"
    atomic_write_text(html_path, page)
    return json_path, html_path
