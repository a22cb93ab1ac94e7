"""Sweeps: one recipe, a grid of hyperparameters and/or amounts of data, a table and plots.

`tuneloop sweep RECIPE --grid learning_rate=1e-4,2e-4 lora.r=8,16 --data-fractions 0.25,1`
trains every combination (each a normal run in the registry), scores it on the validation
data, and writes SWEEP_DIR/results.{json,csv,md} and plots: the metric against each
hyperparameter, and against the amount of training data. The best run is marked.
"""

from __future__ import annotations

import csv
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneloop.config import Recipe
from tuneloop.config.load import apply_overrides, recipe_from_dict
from tuneloop.errors import RecipeError
from tuneloop.files import atomic_path, atomic_write_json, atomic_write_text

ALIASES = {"lora": "adapter"}  # `lora.r` is `adapter.r`
LOWER_IS_BETTER = {"eval_loss", "perplexity", "train_loss"}


@dataclass
class SweepResult:
    directory: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    metric: str = "eval_loss"
    forgetting: bool = False  # rows carry the forgetting check's drop


def _leaf_names(model: type[Any], prefix: str = "") -> dict[str, list[str]]:
    """Every recipe field's last name -> its dotted paths (to expand `learning_rate`)."""
    from pydantic import BaseModel

    out: dict[str, list[str]] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for leaf, paths in _leaf_names(annotation, f"{path}.").items():
                out.setdefault(leaf, []).extend(paths)
        else:
            out.setdefault(name, []).append(path)
    return out


def resolve_key(key: str) -> str:
    """`learning_rate` -> `training.learning_rate`, `lora.r` -> `adapter.r`."""
    head, _, rest = key.partition(".")
    if rest and head in ALIASES:
        return f"{ALIASES[head]}.{rest}"
    if "." in key:
        return key
    paths = _leaf_names(Recipe).get(key, [])
    if len(paths) == 1:
        return paths[0]
    if not paths:
        raise RecipeError(f"sweep: no recipe field named {key!r}")
    raise RecipeError(f"sweep: {key!r} is ambiguous ({', '.join(paths)}); use the dotted name")


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """`learning_rate=1e-4,2e-4` -> ('training.learning_rate', [0.0001, 0.0002])."""
    if "=" not in text:
        raise RecipeError(f"sweep axis {text!r} is not of the form key=v1,v2")
    key, _, values = text.partition("=")
    parsed = [_value(v) for v in values.split(",") if v.strip()]
    if not parsed:
        raise RecipeError(f"sweep axis {text!r} has no values")
    return resolve_key(key.strip()), parsed


def _value(text: str) -> Any:
    """A YAML scalar, with `1e-4` read as a number (YAML 1.1 wants `1.0e-4`)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def plan(
    base: dict[str, Any], axes: list[tuple[str, list[Any]]], fractions: list[float] | None
) -> list[dict[str, Any]]:
    """Every combination as {dotted key: value}, each validated as a recipe up front."""
    all_axes = list(axes)
    if fractions:
        bad = [f for f in fractions if not 0 < f <= 1]
        if bad:
            raise RecipeError(f"--data-fractions must be in (0, 1], got {bad}")
        all_axes.append(("data.fraction", fractions))
    keys = [k for k, _ in all_axes]
    combos = [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(v for _, v in all_axes))
    ]
    for combo in combos:  # a bad value fails before hours of training, not in the middle
        recipe_from_dict(_with(base, combo), source=f"sweep {combo}")
    return combos


def _with(base: dict[str, Any], combo: dict[str, Any]) -> dict[str, Any]:
    raw = json.loads(json.dumps(base))
    return apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in combo.items()])


def _score(result: Any, recipe: Recipe, metric: str) -> float | None:
    """The run's value of `metric`: validation loss from training, or a generation metric
    computed on the validation data."""
    if metric in result.metrics:
        return float(result.metrics[metric])
    data = recipe.data.eval or str(result.run_dir / "validation.jsonl")
    if metric in LOWER_IS_BETTER or not Path(data).is_file():
        raise RecipeError(
            f"sweep metric {metric!r} needs validation data: set data.eval or data.validation_split"
        )
    from tuneloop.evaluation import evaluate_file

    out = evaluate_file(
        f"run:{result.run_id}",
        data,
        metrics=[metric],
        max_new_tokens=recipe.eval.max_new_tokens,
        batch_size=recipe.eval.batch_size,
        limit=recipe.eval.limit,
    )
    return float(out.metrics[metric])


def run_sweep(
    base: dict[str, Any],
    axes: list[tuple[str, list[Any]]],
    fractions: list[float] | None,
    out: str | Path,
    metric: str = "eval_loss",
    forgetting: bool = False,
    probe_limit: int | None = None,
) -> SweepResult:
    """Train and score every combination; write the results table and plots into `out`.

    forgetting: also run the forgetting check on every run (the general probes, against
    the starting model's answers, scored once): each row gets the drop with its interval,
    the plots show the drop beside the metric, and the best run is the best one the check
    does not flag (the best of all when every run is flagged), which is the trade-off a
    replay ratio or regulariser weight is swept for. probe_limit: the first N probes only.
    """
    from tuneloop.training import train

    combos = plan(base, axes, fractions)
    first = recipe_from_dict(_with(base, combos[0]))
    if metric != "train_loss" and not (first.data.eval or first.data.validation_split):
        # found before any training, not after the first run
        raise RecipeError(
            f"sweep metric {metric!r} needs validation data: set data.eval or data.validation_split"
        )
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    result = SweepResult(directory=directory, metric=metric, forgetting=forgetting)
    probes = _probes(probe_limit) if forgetting else None
    start_answers = _probe_answers(probes, str(base["model"])) if probes is not None else None
    for i, combo in enumerate(combos, 1):
        raw = _with(base, combo)
        raw["name"] = f"{raw.get('name', 'sweep')}-{i:02d}"
        raw["output_dir"] = str(directory / "runs")
        recipe = recipe_from_dict(raw)
        started = time.perf_counter()
        trained = train(recipe)
        value = _score(trained, recipe, metric)
        row = {
            "run_id": trained.run_id,
            **combo,
            metric: value,
            "train_loss": trained.metrics.get("train_loss"),
            "train_rows": json.loads((trained.run_dir / "run.json").read_text())["train_rows"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        if probes is not None:
            row.update(_forgetting(start_answers, _probe_answers(probes, f"run:{trained.run_id}")))
        result.rows.append(row)
        _write(result, list(combo))  # after every run, so an interrupted sweep keeps its table
    return result


def _probes(limit: int | None) -> Any:
    from tuneloop.evaluation.suite import probe_task

    return probe_task(limit=limit)


def _probe_answers(task: Any, model: str) -> Any:
    from tuneloop.evaluation.suite import evaluate_task

    return evaluate_task(task, model)


def _forgetting(start: Any, tuned: Any) -> dict[str, Any]:
    """The check's drop for one run; `forgetting_evals` names the two evaluations
    (start, run) it was computed from."""
    from tuneloop.evaluation.suite import forgetting_summary

    found = forgetting_summary(start.examples, tuned.examples)
    return {
        "forgetting_drop": found["drop"],
        "forgetting_low": found["drop_ci"]["low"],
        "forgetting_high": found["drop_ci"]["high"],
        "forgetting_flagged": found["flagged"],
        "forgetting_evals": [start.eval_id, tuned.eval_id],
    }


def _best(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The best-scoring run; with the forgetting check, among the runs it does not flag."""
    scored = [r for r in rows if r.get(metric) is not None]
    if not scored:
        return None
    kept = [r for r in scored if r.get("forgetting_flagged") is False]
    if kept:
        scored = kept
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(scored, key=lambda r: r[metric])


def _write(result: SweepResult, keys: list[str]) -> None:
    rows, metric, d = result.rows, result.metric, result.directory
    result.best = _best(rows, metric)
    best_id = result.best["run_id"] if result.best else None
    columns = ["run_id", *keys, metric, "train_loss", "train_rows", "seconds"]
    if result.forgetting:
        columns[-1:-1] = ["forgetting_drop", "forgetting_low", "forgetting_high"]
        columns.insert(-1, "forgetting_flagged")
    atomic_write_json(d / "results.json", {"metric": metric, "best_run_id": best_id, "runs": rows})
    with atomic_path(d / "results.csv") as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*columns, "best"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**{c: r.get(c) for c in columns}, "best": r["run_id"] == best_id})
    lines = ["| " + " | ".join([*columns, "best"]) + " |", "|" + " --- |" * (len(columns) + 1)]
    for r in rows:
        cells = [_fmt(r.get(c)) for c in columns] + ["**best**" if r["run_id"] == best_id else ""]
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(d / "results.md", "\n".join(lines) + "\n")
    _plots(result, keys)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def axis_order(values: Any) -> list[Any]:
    """Swept values in plotting order: numbers by value, whether written `0` or `0.1` (a
    grid `0,0.1,0.2` parses to an int and floats), then anything else by its text."""

    def key(v: Any) -> tuple[int, float, str]:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return (0, float(v), "")
        return (1, 0.0, f"{type(v).__name__}:{v}")

    return sorted(values, key=key)


def _plots(result: SweepResult, keys: list[str]) -> None:
    """One PNG per swept key: the metric against that key, one line per other setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result.metric
    for key in keys:
        values = axis_order({r[key] for r in result.rows})
        if len(values) < 2:
            continue
        others = [k for k in keys if k != key]
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for r in result.rows:
            groups.setdefault(tuple(r[k] for k in others), []).append(r)
        drops = ax.twinx() if result.forgetting else None
        for setting, members in groups.items():
            members.sort(key=lambda r: values.index(r[key]))
            xs = [r["train_rows"] if key == "data.fraction" else r[key] for r in members]
            label = ", ".join(
                f"{k.split('.')[-1]}={v}" for k, v in zip(others, setting, strict=True)
            )
            named = f"{metric} {label}".strip() if result.forgetting else label or None
            ax.plot(xs, [r[metric] for r in members], marker="o", label=named)
            if result.forgetting:
                _drop_line(drops, xs, members, label)
        if result.best is not None:
            bx = result.best["train_rows"] if key == "data.fraction" else result.best[key]
            ax.plot(
                [bx],
                [result.best[metric]],
                marker="*",
                markersize=14,
                color="gold",
                markeredgecolor="black",
                linestyle="none",
                label="best",
            )
        numeric = all(isinstance(v, int | float) for v in values)
        if (
            numeric
            and key != "data.fraction"
            and min(values) > 0
            and max(values) / min(values) >= 10
        ):
            ax.set_xscale("log")
        ax.set_xlabel("training rows" if key == "data.fraction" else key)
        ax.set_ylabel(metric)
        against = "amount of data" if key == "data.fraction" else key
        ax.set_title(f"{metric}{' and forgetting' if drops else ''} vs {against}")
        if drops is not None:
            from tuneloop.evaluation.suite import FORGETTING_FLAG

            drops.axhline(FORGETTING_FLAG, color="tab:red", linestyle=":", linewidth=1)
            drops.set_ylabel("forgetting drop (dotted: flagged above)", color="tab:red")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if drops is not None:
            more = drops.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        if len(groups) > 1 or result.best is not None:
            ax.legend(handles, labels, fontsize=7)
        fig.tight_layout()
        name = "data" if key == "data.fraction" else key.replace(".", "_")
        fig.savefig(result.directory / f"{metric}_vs_{name}.png", dpi=110)
        plt.close(fig)


def _drop_line(axis: Any, xs: list[Any], members: list[dict[str, Any]], label: str) -> None:
    """The forgetting drop of one line's runs, with its interval, on the right-hand axis."""
    drop = [r["forgetting_drop"] for r in members]
    below = [d - r["forgetting_low"] for d, r in zip(drop, members, strict=True)]
    above = [r["forgetting_high"] - d for d, r in zip(drop, members, strict=True)]
    axis.errorbar(
        xs,
        drop,
        yerr=[below, above],
        color="tab:red",
        linestyle="--",
        marker="s",
        capsize=3,
        alpha=0.8,
        label=f"drop {label}".strip(),
    )
