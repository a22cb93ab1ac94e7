"""The main job: validate data, evaluate the base model, LoRA fine-tune, evaluate the tuned
model, check what it forgot, and write report.html + report.json. One command, one
directory of results. The comparison uses the eval-suite machinery: bootstrap intervals,
per-example improved/regressed with error categories, and the forgetting check on the
general probes.

It uses the bundled SmolLM2-135M-Instruct and the team-written Brightwave support data in
`examples/support/`, and fits in about 11 minutes on a 2-core CPU.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tuneloop import __version__
from tuneloop.errors import TuneloopError


def examples_dir() -> Path:
    """The examples folder: a source checkout's `examples/`, or the installed copy."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "examples", Path(sys.prefix) / "share/tuneloop/examples"):
        if (candidate / "support" / "recipe.yaml").is_file():
            return candidate
    raise TuneloopError("cannot find tuneloop's examples/ folder (is the package installed?)")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _last_user(prompt: list[dict[str, str]]) -> str:
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else ""


def run_quickstart(
    out: str | Path = "tuneloop-quickstart",
    overrides: list[str] | None = None,
    samples: int = 8,
    probe_limit: int | None = None,
) -> dict[str, Any]:
    """Run the whole before/after loop and return the report dict (also written to `out`).

    probe_limit: score only the first N general probes in the forgetting check (tests)."""
    from tuneloop import registry
    from tuneloop.config import load_recipe
    from tuneloop.data import read_conversations
    from tuneloop.evaluation import evaluate_file
    from tuneloop.evaluation.report import loss_curve_png, render_html
    from tuneloop.evaluation.suite import (
        categories,
        diff_examples,
        evaluate_task,
        forgetting_summary,
        probe_task,
    )
    from tuneloop.files import atomic_write_json, atomic_write_text
    from tuneloop.intervals import mean_interval
    from tuneloop.models import resolve
    from tuneloop.training import train

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipe_path = examples_dir() / "support" / "recipe.yaml"
    recipe = load_recipe(recipe_path, [f"output_dir={out / 'runs'}", *(overrides or [])])
    assert recipe.data.eval is not None

    # 1. model and data
    _say(f"[1/6] model: {recipe.model}")
    resolve(recipe.model)  # pulls the bundled model on first use
    timings["model_s"] = time.perf_counter() - t_start
    _say("[2/6] validating data")
    t = time.perf_counter()
    train_data = read_conversations(
        recipe.data.train, recipe.data.format, recipe.data.system_prompt
    )
    eval_data = read_conversations(recipe.data.eval, recipe.data.format, recipe.data.system_prompt)
    eval_convs = (
        eval_data.conversations[: recipe.eval.limit]
        if recipe.eval.limit
        else (eval_data.conversations)
    )
    _say(
        f"      train: {len(train_data.conversations)} conversations ({train_data.format}), "
        f"eval: {len(eval_convs)} of {len(eval_data.conversations)}, 0 malformed rows"
    )
    eval_ds = registry.register_dataset(
        Path(recipe.data.eval).stem, eval_data.conversations, recipe.data.eval, eval_data.format
    )
    qs_run = registry.start_run(
        name="quickstart",
        kind="quickstart",
        recipe=recipe.model_dump(mode="json"),
        base_model=recipe.model,
        run_dir=str(out),
        datasets={"eval": eval_ds.id},
    )
    timings["data_s"] = time.perf_counter() - t

    def evaluate(ref: str, label: str) -> Any:
        t = time.perf_counter()
        result = evaluate_file(
            ref,
            recipe.data.eval,
            recipe.eval.metrics,
            recipe.eval.max_new_tokens,
            recipe.eval.batch_size,
            recipe.eval.limit,
            recipe.data.format,
            recipe.data.system_prompt,
            run_id=qs_run.id,
            label=label,
        )
        timings[f"eval_{label}_s"] = time.perf_counter() - t
        return result

    try:
        _say("[3/6] evaluating the base model")
        base = evaluate(recipe.model, "base")
        _say("      base: " + _fmt(base.metrics))
        _say("[4/6] LoRA fine-tuning")
        t = time.perf_counter()
        trained = train(recipe)
        timings["train_s"] = time.perf_counter() - t
        _say("[5/6] evaluating the tuned model")
        tuned = evaluate(str(trained.model_dir), "tuned")
        _say("      tuned: " + _fmt(tuned.metrics))
        _say("[6/6] forgetting check: general probes, base and tuned")
        t = time.perf_counter()
        probe = probe_task(max_new_tokens=32, limit=probe_limit)
        probe_base = evaluate_task(probe, recipe.model, run_id=qs_run.id)
        probe_tuned = evaluate_task(probe, str(trained.model_dir), run_id=qs_run.id)
        forgetting = forgetting_summary(probe_base.examples, probe_tuned.examples)
        timings["forgetting_s"] = time.perf_counter() - t
        _say(
            f"      {forgetting['metric']}: base {forgetting['base']:.4f}, tuned "
            f"{forgetting['tuned']:.4f}, drop {forgetting['drop']:.4f}"
            + (" (flagged)" if forgetting["flagged"] else "")
        )
    except BaseException as err:
        registry.update_run(qs_run.id, status="failed", error=f"{type(err).__name__}: {err}")
        raise
    timings["total_s"] = time.perf_counter() - t_start

    for result in (base, tuned):
        for ex, cat in zip(result.examples, categories(result, recipe.eval.metrics), strict=True):
            ex["category"] = cat
    text_metrics = [m for m in recipe.eval.metrics if m not in ("perplexity", "bleu")]
    primary = "rouge_l" if "rouge_l" in text_metrics else (text_metrics or ["exact_match"])[0]
    diff = diff_examples(primary, base.examples, tuned.examples)
    intervals = {  # means of per-example scores (corpus BLEU and perplexity are not means)
        label: {
            m: mean_interval([ex["scores"][m] for ex in result.examples]).as_dict()
            for m in text_metrics
        }
        for label, result in (("base", base), ("tuned", tuned))
    }
    report = {
        "title": "tuneloop quickstart: Brightwave support assistant",
        "package_version": __version__,
        "base": {"model": recipe.model, "metrics": base.metrics, "eval_id": base.eval_id},
        "tuned": {
            "model": str(trained.model_dir),
            "metrics": tuned.metrics,
            "eval_id": tuned.eval_id,
        },
        "improved": {
            name: _better(name, base.metrics[name], tuned.metrics[name]) for name in base.metrics
        },
        "training": {
            **trained.metrics,
            "loss_history": [
                {"step": h["step"], "loss": h["loss"]} for h in trained.history if "loss" in h
            ],
        },
        "run_ids": {"quickstart": qs_run.id, "train": trained.run_id},
        "data": {
            "train": recipe.data.train,
            "eval": recipe.data.eval,
            "train_rows": len(train_data.conversations),
            "eval_rows": len(eval_convs),
            "eval_dataset_id": eval_ds.id,
        },
        "intervals": intervals,
        "per_example": {k: diff[k] for k in ("metric", "changes", "wins", "regressions")},
        "categories": {
            label: dict(Counter(ex["category"] for ex in result.examples))
            for label, result in (("base", base), ("tuned", tuned))
        },
        "forgetting": forgetting,
        "timings": timings,
    }
    picks = [
        {
            "prompt": _last_user(b["prompt"]),
            "reference": b["reference"],
            "base": b["prediction"],
            "tuned": tu["prediction"],
        }
        for b, tu in list(zip(base.examples, tuned.examples, strict=True))[:samples]
    ]
    atomic_write_json(out / "report.json", report, default=str)
    html_text = render_html(report, picks, loss_curve_png(trained.history))
    atomic_write_text(out / "report.html", html_text)
    registry.update_run(
        qs_run.id,
        status="completed",
        metrics={f"base.{k}": v for k, v in base.metrics.items()}
        | {f"tuned.{k}": v for k, v in tuned.metrics.items()},
        timings=timings,
    )
    _say(f"report: {out / 'report.html'}  ({timings['total_s']:.0f} s)")
    return report


def _better(name: str, base: float, tuned: float) -> bool:
    from tuneloop.evaluation.report import improved

    return improved(name, base, tuned)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
