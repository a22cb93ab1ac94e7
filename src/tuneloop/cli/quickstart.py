"""`tuneloop quickstart`: the main job."""

from __future__ import annotations

import click

from tuneloop import api
from tuneloop.cli.console import quiet_libraries


@click.command()
@click.option("--out", default="tuneloop-quickstart", show_default=True, help="Output folder.")
@click.argument("overrides", nargs=-1)
def quickstart(out: str, overrides: tuple[str, ...]) -> None:
    """Evaluate, LoRA fine-tune and re-evaluate the bundled model on the example support data.

    Writes OUT/report.html and OUT/report.json. Recipe overrides (key=value) apply to
    examples/support/recipe.yaml, e.g. `training.max_steps=5 eval.limit=16`.
    """
    quiet_libraries()
    report = api.quickstart(out, overrides)
    better = [k for k, v in report["improved"].items() if v]
    click.echo(f"tuned beats base on {len(better)}/{len(report['improved'])} metrics: {better}")


COMMANDS = [quickstart]
