"""`tuneloop data`: inspect, curate and version datasets."""

from __future__ import annotations

import json

import click

from tuneloop import api
from tuneloop.cli.console import echo_json, quiet_libraries, table
from tuneloop.errors import TuneloopError


@click.group()
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
    quiet_libraries()
    card = api.inspect(path, format=fmt, model=model)
    if card_path:
        api.write_text(card_path, card.to_html())
    if as_json:
        echo_json(card.card)
        return
    click.echo(
        f"{card.path}: {card.rows} rows, format {card.format}, "
        f"kind {card.kind}, {card.malformed} malformed"
    )
    for err in card.malformed_examples:
        click.echo(f"  {err['where']}: {err['problem']}")
    lengths = card.card["lengths"]["total"]
    if lengths.get("n"):
        click.echo(
            f"length ({card.card['lengths']['unit']}): median {lengths['median']}, "
            f"p95 {lengths['p95']}, max {lengths['max']}"
        )
    if card.card.get("labels"):
        click.echo(f"labels: {len(card.card['labels'])}")
    for warning in card.warnings:
        click.echo(f"warning: {warning}")


@data.command("curate")
@click.argument("path", type=click.Path())
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="curate.yaml.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--name",
    help="Display name in the registry (default: the file stem); versions are numbered per "
    "input file.",
)
@click.option("--labels", type=click.Path(dir_okay=False), help="JSON label set (overrides).")
@click.option(
    "--force",
    is_flag=True,
    help="Replace --out even if it holds files an earlier curation did not write.",
)
def data_curate(
    path: str,
    config_path: str | None,
    out: str,
    name: str | None,
    labels: str | None,
    force: bool,
) -> None:
    """Curate PATH with the steps in --config (default: a safe pipeline) into --out.

    The folder is written whole (a temporary folder, then a rename): an earlier
    curation's files are replaced, never mixed with the new ones.
    """
    quiet_libraries()
    result = api.curate(path, config_path, out=out, name=name, labels=labels, force=force)
    for log in result.steps:
        dropped = sum(log.dropped.values())
        changed = sum(log.changed.values())
        click.echo(
            f"{log.step:18s} {log.rows_in:>7} -> {log.rows_out:<7} dropped {dropped:<6} "
            f"changed {changed:<6} {log.seconds:.1f}s"
        )
    for warning in result.warnings:
        click.echo(f"warning: {warning}")
    ids = ", ".join(f"{k}: {v}" for k, v in result.dataset_ids.items())
    click.echo(f"datasets {ids}; card: {result.out_dir / 'card.html'}")


@data.command("ls")
def data_ls() -> None:
    """Every dataset version in the registry."""
    rows = [
        [
            d.id,
            d.name,
            d.version,
            d.source,
            d.rows,
            d.format,
            d.parent_id or "",
            d.content_hash[:12],
            d.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        for d in api.datasets()
    ]
    table(["id", "name", "version", "source", "rows", "format", "parent", "hash", "created"], rows)


@data.command("show")
@click.argument("dataset_id", type=int)
@click.option("--rows", "n_rows", default=3, show_default=True, help="Rows to print.")
def data_show(dataset_id: int, n_rows: int) -> None:
    """One dataset version: lineage, curation steps, a few rows."""
    d = api.dataset(dataset_id)
    echo_json(d.to_dict())
    if n_rows and d.path.endswith(".parquet"):
        try:
            rows = d.read(limit=n_rows)
        except TuneloopError:
            return  # the stored copy is gone; the record above says where it was
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))


@data.command("diff")
@click.argument("old_id", type=int)
@click.argument("new_id", type=int)
def data_diff(old_id: int, new_id: int) -> None:
    """Rows added and removed between two stored dataset versions, and label shifts."""
    echo_json(api.diff_datasets(old_id, new_id))


@data.command("steps")
def data_steps() -> None:
    """The curation steps available in a curate.yaml and their parameters."""
    for name, step in api.curation_steps().items():
        params = ", ".join(f"{k}={v!r}" for k, v in step["parameters"].items())
        click.echo(f"{name}: {step['summary']}\n    {params}")


COMMANDS = [data]
