"""`tuneloop serve`: the OpenAI-compatible endpoint; `tuneloop keys`: its API keys."""

from __future__ import annotations

import json

import click

from tuneloop import api
from tuneloop.cli.console import quiet_libraries


@click.command()
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--name", help="Model id clients send (default: MODEL as given).")
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    metavar="NAME=run:ID",
    help="Serve a LoRA run over MODEL under NAME (repeatable; MODEL must be its base).",
)
@click.option(
    "--docs",
    type=click.Path(exists=True),
    help="RAG: add passages from these documents (a folder, a file, or an index from "
    "`tuneloop rag index`) to every chat request to MODEL; responses list them as "
    "`citations`. A run trained with retrieval needs no --docs.",
)
@click.option("--rag-k", "retrieval_k", default=3, show_default=True,
              type=click.IntRange(1, 20), help="With --docs: passages per request.")  # fmt: skip
@click.option(
    "--keys",
    type=click.Path(dir_okay=False),
    help="Keys file (`tuneloop keys create --file`): every route but /health then needs a key.",
)
@click.option(
    "--registry-keys",
    is_flag=True,
    help="Check keys against the registry's (`tuneloop keys create`): replicas on one "
    "database share keys and revocations.",
)
@click.option(
    "--max-batch",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most sequences decoded together (continuous batching).",
)
@click.option(
    "--max-queue",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most requests waiting for the batch; beyond it requests get 429 with Retry-After.",
)
@click.option(
    "--max-tokens-limit",
    type=click.IntRange(min=1),
    help="Most tokens one request may generate (default: the model's context).",
)
@click.option(
    "--drain",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds running requests get to finish on SIGTERM or Ctrl-C.",
)
@click.option(
    "--log/--no-log",
    "log_traffic",
    default=True,
    show_default=True,
    help="Write every request and answer to the registry's traffic table.",
)
@click.option(
    "--redact-pii",
    is_flag=True,
    help="Redact emails, phones, cards, IBANs and IPs before traffic is stored.",
)
@click.option(
    "--allow-no-keys",
    is_flag=True,
    help="Listen on a non-loopback --host without keys (only on a network you trust).",
)
def serve(
    model: str,
    host: str,
    port: int,
    name: str | None,
    adapters: tuple[str, ...],
    docs: str | None,
    retrieval_k: int,
    keys: str | None,
    registry_keys: bool,
    max_batch: int,
    max_queue: int,
    max_tokens_limit: int | None,
    drain: float,
    log_traffic: bool,
    redact_pii: bool,
    allow_no_keys: bool,
) -> None:
    """Serve MODEL (run:ID, a model folder or a bundled name) as an OpenAI-compatible endpoint.

    Clients use base URL http://HOST:PORT/v1 (chat and text completions, streaming, n,
    sampling); `tuneloop eval --model openai:NAME` with OPENAI_BASE_URL set evaluates it
    like a local model.
    """
    quiet_libraries()
    named = {}
    for item in adapters:
        label, sep, ref = item.partition("=")
        if not sep or not label or not ref:
            raise click.BadParameter(f"{item!r}: use NAME=run:ID", param_hint="--adapter")
        named[label] = ref
    api.serve(
        model,
        adapters=named or None,
        docs=docs,
        retrieval_k=retrieval_k,
        host=host,
        port=port,
        name=name,
        max_batch=max_batch,
        max_queue=max_queue,
        keys=keys,
        registry_keys=registry_keys,
        max_tokens_limit=max_tokens_limit,
        allow_no_keys=allow_no_keys,
        drain_seconds=drain,
        log_traffic=log_traffic,
        redact_pii=redact_pii,
    )


@click.group()
def keys() -> None:
    """API keys for `tuneloop serve --keys FILE` or `--registry-keys` (argon2 hashes)."""


_file = click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False),
    help="A keys file (default: the registry, shared by replicas on one database).",
)


@keys.command("create")
@_file
@click.argument("name")
@click.option("--admin", is_flag=True, help="Admin scope (routes that change the server).")
def keys_create(path: str | None, name: str, admin: bool) -> None:
    """Add a key called NAME; the key is printed once and stored nowhere."""
    key, record = api.create_api_key(path, name, admin=admin)
    click.echo(key)
    where = path or "the registry"
    click.echo(f"created {record['scope']} key {record['id']} ({name}) in {where}", err=True)


@keys.command("list")
@_file
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def keys_list(path: str | None, as_json: bool) -> None:
    """The keys in the file or the registry (never their hashes)."""
    records = api.list_api_keys(path)
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    for r in records:
        click.echo(f"{r['id']}  {r['scope']:<5}  {r['created']}  {r['name']}")


@keys.command("revoke")
@_file
@click.argument("which")
def keys_revoke(path: str | None, which: str) -> None:
    """Remove the key with id or name WHICH (a running server drops it within a second)."""
    record = api.revoke_api_key(path, which)
    click.echo(f"revoked {record['id']} ({record['name']})")


COMMANDS = [serve, keys]
