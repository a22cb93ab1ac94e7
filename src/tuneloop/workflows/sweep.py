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
) -> SweepResult:
    """Train and score every combination; write the results table and plots into `out`."""
    from tuneloop.training import train

    combos = plan(base, axes, fractions)
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    result = SweepResult(directory=directory, metric=metric)
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
        result.rows.append(row)
        _write(result, list(combo))  # after every run, so an interrupted sweep keeps its table
    return result


def _best(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    scored = [r for r in rows if r.get(metric) is not None]
    if not scored:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(scored, key=lambda r: r[metric])


def _write(result: SweepResult, keys: list[str]) -> None:
    rows, metric, d = result.rows, result.metric, result.directory
    result.best = _best(rows, metric)
    best_id = result.best["run_id"] if result.best else None
    columns = ["run_id", *keys, metric, "train_loss", "train_rows", "seconds"]
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


def _plots(result: SweepResult, keys: list[str]) -> None:
    """One PNG per swept key: the metric against that key, one line per other setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result.metric
    for key in keys:
        values = sorted({r[key] for r in result.rows}, key=lambda v: (str(type(v)), v))
        if len(values) < 2:
            continue
        others = [k for k in keys if k != key]
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for r in result.rows:
            groups.setdefault(tuple(r[k] for k in others), []).append(r)
        for setting, members in groups.items():
            members.sort(key=lambda r: values.index(r[key]))
            xs = [r["train_rows"] if key == "data.fraction" else r[key] for r in members]
            label = ", ".join(
                f"{k.split('.')[-1]}={v}" for k, v in zip(others, setting, strict=True)
            )
            ax.plot(xs, [r[metric] for r in members], marker="o", label=label or None)
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
        ax.set_title(f"{metric} vs {'amount of data' if key == 'data.fraction' else key}")
        ax.grid(alpha=0.3)
        if len(groups) > 1 or result.best is not None:
            ax.legend(fontsize=7)
        fig.tight_layout()
        name = "data" if key == "data.fraction" else key.replace(".", "_")
        fig.savefig(result.directory / f"{metric}_vs_{name}.png", dpi=110)
        plt.close(fig)
