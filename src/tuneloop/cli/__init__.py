"""`tuneloop <verb>`: one module per command group, each a thin wrapper over `tuneloop.api`.

The commands call the same public functions a Python user calls (docs/python.md); a test
holds that these modules import nothing else of tuneloop's. Heavy libraries (torch,
transformers) load inside the API functions, so `tuneloop --help` stays instant. User
errors (TuneloopError) print one line and exit non-zero, with no traceback.
"""

from __future__ import annotations

import sys

import click

from tuneloop import __version__
from tuneloop.cli import (
    data,
    evaluate,
    models,
    monitor,
    quickstart,
    rag,
    runs,
    serve,
    studio,
    synth,
    train,
)
from tuneloop.errors import TuneloopError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tuneloop")
def cli() -> None:
    """tuneloop: fine-tune LLMs on your own data, evaluate them, keep them good."""


for module in (quickstart, train, serve, monitor, evaluate, models, data, rag, synth, runs, studio):
    for command in module.COMMANDS:
        cli.add_command(command)


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
