"""`tuneloop monitor` and `tuneloop traffic`: watching what the endpoint served."""

from __future__ import annotations

import json

import click

from tuneloop import api
from tuneloop.cli.console import quiet_libraries

_since = click.option(
    "--since", default="24h", show_default=True, help="Window: a number and s, m, h or d."
)
_model = click.option("--model", help="Only requests for this served model name.")
_reference = click.option(
    "--reference",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Reference data file(s) for drift (default: the served runs' datasets).",
)


@click.command()
@_since
@_model
@_reference
@click.option("--recent", help="Window tested for drift (default: the whole --since).")
@click.option(
    "--out", type=click.Path(file_okay=False), help="Write monitor.json and monitor.html here."
)
@click.option("--alpha", default=0.01, show_default=True, type=click.FloatRange(0, 1))
@click.option(
    "--min-auc",
    default=0.6,
    show_default=True,
    type=click.FloatRange(0.5, 1),
    help="Drift alerts need the classifier test's AUC at least this.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def monitor(
    since: str,
    model: str | None,
    reference: tuple[str, ...],
    recent: str | None,
    out: str | None,
    alpha: float,
    min_auc: float,
    as_json: bool,
) -> None:
    """Traffic, errors, latency, refusals and drift of what `tuneloop serve` answered."""
    quiet_libraries()
    report = api.monitor(
        since, model=model, reference=reference, recent=recent, out=out, alpha=alpha,
        min_auc=min_auc,
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    o = report["overall"]
    click.echo(
        f"{o['requests']} requests since {report['window']['since']} UTC: error rate "
        f"{o['error_rate']:.3f}, p50 {_s(o['latency_p50'])}, p95 {_s(o['latency_p95'])}, "
        f"refusal rate {o['refusal_rate']:.3f}"
    )
    for name, s in report["by_model"].items():
        click.echo(f"  {name}: {s['requests']} requests, statuses {s['statuses']}")
    click.echo(report["drift"]["line"] if report["drift"] else report["drift_skipped"])
    if report["uncovered"]:
        click.echo(f"{len(report['uncovered'])} uncovered prompts, e.g.:")
        for u in report["uncovered"][:5]:
            click.echo(f"  {u['similarity']:.3f}  {u['text'][:100]}")
    if out:
        click.echo(f"report: {report['html']}")


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}s"


@click.group()
def traffic() -> None:
    """Logged serving traffic as datasets."""


@traffic.command("export")
@click.option(
    "--uncovered", "kind", flag_value="uncovered", help="Prompts far from the reference data."
)
@click.option("--downvoted", "kind", flag_value="downvoted", help="Answers given a thumbs down.")
@click.option("--corrected", "kind", flag_value="corrected", help="Corrections, as SFT rows.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL file to write.")
@click.option("--since", default="7d", show_default=True)
@_model
@_reference
def traffic_export(
    kind: str | None, out: str, since: str, model: str | None, reference: tuple[str, ...]
) -> None:
    """Write selected traffic to OUT and register it as a dataset version."""
    if kind is None:
        raise click.UsageError("choose one of --uncovered, --downvoted, --corrected")
    quiet_libraries()
    done = api.export_traffic(kind, out, since=since, model=model, reference=reference)
    click.echo(f"{done['rows']} {kind} rows -> {done['path']} (dataset {done['dataset_id']})")


@click.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--serving", required=True, help="The running server's URL (http://HOST:PORT).")
@click.option("--adapter", required=True, help="The served adapter name to improve.")
@click.option("--suite", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--gate", required=True, help='Promotion gate, e.g. "support.rouge_l>=0.2".')
@click.option("--since", default="7d", show_default=True, help="Corrections from this window.")
@click.option("--out", default="tuneloop-iterate", show_default=True, type=click.Path())
def iterate(
    recipe: str,
    overrides: tuple[str, ...],
    serving: str,
    adapter: str,
    suite: str,
    gate: str,
    since: str,
    out: str,
) -> None:
    """Next dataset (data + users' corrections), train, gate against production, promote.

    The server's admin key comes from TUNELOOP_ADMIN_KEY.
    """
    quiet_libraries()
    done = api.iterate(
        recipe, *overrides, serving=serving, adapter=adapter, suite=suite, gate=gate,
        out=out, since=since,
    )  # fmt: skip
    click.echo(
        f"{done['corrections']} corrections -> dataset {done['dataset']}; "
        f"candidate {done['candidate']} vs production {done['production']}"
    )
    click.echo(("PROMOTED: " if done["promoted"] else "NOT PROMOTED: ") + done["reason"])
    click.echo(f"report: {done['report']}")


@click.command()
@click.option("--serving", required=True, help="The running server's URL (http://HOST:PORT).")
@click.option("--adapter", required=True, help="The served adapter name.")
def rollback(serving: str, adapter: str) -> None:
    """Put back the run the latest `tuneloop iterate` promotion replaced."""
    done = api.rollback(serving, adapter)
    click.echo(f"{adapter}: {done['from']} -> {done['to']}")


COMMANDS = [monitor, traffic, iterate, rollback]
