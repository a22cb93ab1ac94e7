"""`tuneloop runs`: what the registry knows about runs."""

from __future__ import annotations

import click

from tuneloop import api
from tuneloop.cli.console import echo_json, table


@click.group()
def runs() -> None:
    """Inspect runs in the registry."""


@runs.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--kind", help="Only runs of this kind (train, quickstart).")
def runs_list(limit: int, kind: str | None) -> None:
    """The most recent runs."""
    rows = []
    for r in api.runs(limit, kind):
        headline = r.metrics.get("final_loss", r.metrics.get("train_loss"))
        shown = f"{headline:.4f}" if isinstance(headline, float) else ""
        created = r.created_at.strftime("%Y-%m-%d %H:%M") if r.created_at else ""
        rows.append([r.id, r.kind, r.name, r.status, r.base_model or "", shown, created])
    table(["id", "kind", "name", "status", "model", "loss", "created"], rows)


@runs.command("show")
@click.argument("run_id", type=int)
def runs_show(run_id: int) -> None:
    """Everything recorded about one run."""
    echo_json(api.get_run(run_id).to_dict())


COMMANDS = [runs]
