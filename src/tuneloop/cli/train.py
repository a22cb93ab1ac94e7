"""`tuneloop train`, `sweep`, `export`, `rlaif` and `continual`."""

from __future__ import annotations

import json

import click

from tuneloop import api
from tuneloop.cli.console import quiet_libraries


@click.command()
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
    help="Needs --resume RUN: the checkpoint directory to continue from (default: the latest).",
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
    if resume and recipe and not recipe.endswith((".yaml", ".yml")):
        overrides = (recipe, *overrides)  # `--resume RUN key=value`: no recipe given
    elif not resume and not recipe:
        raise click.UsageError("give a RECIPE file, or --resume RUN")
    quiet_libraries()
    run = api.train(
        recipe or "", *overrides, resume=resume, from_checkpoint=from_checkpoint, nproc=nproc
    )
    if nproc > 1:
        click.echo(f"run {run.id} {run.status} with {nproc} processes")
    else:
        click.echo(f"run {run.id} completed in {run.timings.get('seconds', 0.0):.0f} s")
    click.echo(f"model: {run.model_dir}")
    click.echo(json.dumps(run.metrics, indent=2))


@click.command(context_settings={"ignore_unknown_options": True})
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
@click.option(
    "--forgetting",
    is_flag=True,
    help="Also run the forgetting check on every run (the general probes against the "
    "starting model) and plot its drop beside the metric; the best run is the best one "
    "the check does not flag.",
)
@click.option(
    "--probe-limit",
    type=click.IntRange(min=1),
    default=None,
    help="With --forgetting: score only the first N general probes.",
)
def sweep(
    recipe: str,
    args: tuple[str, ...],
    grid: tuple[str, ...],
    data_fractions: str | None,
    metric: str,
    out: str | None,
    forgetting: bool,
    probe_limit: int | None,
) -> None:
    """Train RECIPE over a grid of settings and/or data amounts; table, plots, best run.

    \b
    tuneloop sweep RECIPE --grid learning_rate=1e-4,2e-4 lora.r=8,16
    tuneloop sweep RECIPE --data-fractions 0.1,0.25,0.5,1.0 data.validation_split=0.1
    tuneloop sweep RECIPE --grid training.replay.ratio=0,0.1,0.2 --metric rouge_l --forgetting

    Arguments after RECIPE of the form key=v1,v2 (a comma in the value) are swept like
    --grid; key=value ones are plain overrides applied to every run.
    """
    axes = list(grid) + [a for a in args if "=" in a and "," in a.partition("=")[2]]
    overrides = [a for a in args if a not in axes]
    fractions = [float(x) for x in data_fractions.split(",")] if data_fractions else None
    if not axes and not fractions:
        raise click.UsageError("nothing to sweep: give --grid KEY=V1,V2 or --data-fractions")
    quiet_libraries()
    result = api.sweep(
        recipe,
        axes,
        data_fractions=fractions,
        metric=metric,
        out=out,
        overrides=overrides,
        forgetting=forgetting,
        probe_limit=probe_limit,
    )
    click.echo((result.directory / "results.md").read_text(encoding="utf-8"))
    if result.best:
        drop = result.best.get("forgetting_drop")
        kept = f", forgetting drop {drop:.4f}" if drop is not None else ""
        best = result.best
        click.echo(f"best: run {best['run_id']} ({metric} = {best[metric]:.4g}{kept})")
    click.echo(f"results and plots: {result.directory}")


@click.command()
@click.argument("run")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--merged/--no-merged",
    default=True,
    show_default=True,
    help="Also write the adapter merged into the base as a plain transformers model.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write into OUT/adapter or OUT/merged even if they hold files tuneloop did not "
    "write; only the files an export writes are replaced, others are kept.",
)
@click.option(
    "--base-model",
    metavar="REF",
    help="Base-model reference for the exported adapter and model cards (default: the "
    "bundled model's hub id, else the recipe's model as written).",
)
@click.option(
    "--gguf",
    "gguf",
    is_flag=True,
    help="Also write OUT/gguf: a GGUF file for llama.cpp and Ollama, a Modelfile, and "
    "parity.json (templates, tokens, stop token and logits checked against the run).",
)
@click.option(
    "--quant",
    type=click.Choice(["f16", "q8_0"]),
    default="f16",
    show_default=True,
    help="How the GGUF stores the weight matrices (norms stay float32).",
)
def export(
    run: str,
    out: str,
    merged: bool,
    force: bool,
    base_model: str | None,
    gguf: bool,
    quant: str,
) -> None:
    """Export RUN (run:ID): its PEFT adapter and/or a merged model, each with a model card;
    with --gguf also a GGUF file and an Ollama Modelfile.

    \b
    tuneloop export run:2 --out exported/ --gguf --quant q8_0
    cd exported/gguf && ollama create support -f Modelfile
    """
    quiet_libraries()
    exported = api.export(
        run, out, merged=merged, force=force, base_model=base_model, gguf=quant if gguf else None
    )
    for kind, path in exported.items():
        click.echo(f"{kind}: {path}")
    if "gguf" in exported:
        import json

        parity = json.loads((exported["gguf"] / "parity.json").read_text(encoding="utf-8"))
        logits = parity["checks"]["logits"]
        click.echo(
            f"gguf parity: templates and {parity['checks']['tokens']} tokens equal; logits "
            f"max diff {logits['max_diff_share']:.2%} of range, top token agrees at "
            f"{logits['top1_agreement']:.1%} of {logits['positions']} positions"
        )
        for warning in parity["warnings"]:
            click.echo(f"warning: {warning}", err=True)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--out", type=click.Path(file_okay=False), help="Folder (default rlaif-NAME).")
@click.option(
    "--compare-tokens",
    type=click.IntRange(min=1),
    help="Answer length for the held-out win rate (default rlaif.max_new_tokens).",
)
def rlaif(
    recipe: str, overrides: tuple[str, ...], out: str | None, compare_tokens: int | None
) -> None:
    """RLAIF: sample answers from the policy, have rlaif.judge label pairs, train the
    recipe's dpo/simpo/orpo on them, report the judge's win rate on held-out prompts.

    \b
    tuneloop rlaif examples/hh-harmless/rlaif.yaml model=run:SFT rlaif.judge=run:RM \\
        data.train=../shared/data/hh-rlhf-harmless/pairs.jsonl
    """
    quiet_libraries()
    result = api.rlaif(recipe, *overrides, out=out, compare_tokens=compare_tokens)
    c = result.counts
    skipped = ", ".join(
        f"{k.replace('_', ' ')} {c[k]}"
        for k in ("identical_answers", "ties", "order_dependent", "equal_scores")
        if k in c
    )
    click.echo(
        f"{c['pairs']} pairs from {c['comparisons']} comparisons over {c['prompts']} prompts "
        f"({skipped}); dataset version {result.pairs_dataset_id}"
    )
    click.echo(f"run {result.run_id} trained on them")
    w = result.win_rate
    if w:
        ci = w["win_rate_ci"]
        click.echo(
            f"win rate over the policy by {w['judge']}: {w['win_rate']:.4f} "
            f"[{ci['low']:.4f}, {ci['high']:.4f}] on {w['prompts']} held-out prompts: "
            f"W {w['wins']} / T {w['ties']} / L {w['losses']}"
        )
    click.echo(f"report: {result.directory / 'rlaif.json'}")


@click.command()
@click.argument("plan", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder for continual.json, table.md and the stages' runs "
    "(default: continual-NAME). Re-run with the same folder to continue.",
)
def continual(plan: str, out: str | None) -> None:
    """Learn tasks one after another: train each stage of PLAN (YAML) from the last, and
    score every task learned so far after each stage (a task x stage table).

    \b
    tuneloop continual examples/continual/plan.yaml --out continual-demo
    """
    quiet_libraries()
    report = api.continual(plan, out=out)
    click.echo(report["table"])
    click.echo(f"wrote {report['directory']}/table.md and continual.json")


COMMANDS = [train, sweep, export, rlaif, continual]
