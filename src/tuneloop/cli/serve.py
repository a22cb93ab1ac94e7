"""`tuneloop serve`: the OpenAI-compatible endpoint."""

from __future__ import annotations

import click

from tuneloop import api
from tuneloop.cli.console import quiet_libraries


@click.command()
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
    quiet_libraries()
    api.serve(model, host=host, port=port, name=name, max_batch=max_batch)


COMMANDS = [serve]
