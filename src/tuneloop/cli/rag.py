"""`tuneloop rag`: index documents for retrieval, search them, measure retrieval quality."""

from __future__ import annotations

import click

from tuneloop import api
from tuneloop.cli.console import quiet_libraries


@click.group()
def rag() -> None:
    """Retrieval over your documents (RAG): index, search, measure (docs/baselines.md)."""


@rag.command("index")
@click.argument("docs", type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Index folder.")
@click.option("--max-chars", default=700, show_default=True, type=click.IntRange(min=100),
              help="Longest chunk in characters.")  # fmt: skip
@click.option("--overlap", default=100, show_default=True, type=click.IntRange(min=0),
              help="Characters of the previous chunk that start the next.")  # fmt: skip
@click.option("--kind", default="auto", show_default=True,
              type=click.Choice(["auto", "flat", "hnsw"]),
              help="flat: exact search; hnsw: a graph index for large corpora; auto: hnsw "
              "from 200,000 chunks.")  # fmt: skip
def index_cmd(docs: str, out: str, max_chars: int, overlap: int, kind: str) -> None:
    """Chunk, embed and index DOCS (a folder of .txt/.md/.html/.pdf, or one file)."""
    if overlap >= max_chars:
        raise click.UsageError("--overlap must be smaller than --max-chars")
    quiet_libraries()
    summary = api.rag_index(docs, out, max_chars=max_chars, overlap=overlap, kind=kind)
    for d in summary["documents"]:
        click.echo(f"{d['source']}: {d['chunks']} chunks")
    click.echo(
        f"index {summary['index']}: {summary['chunks']} chunks, {summary['kind']} search, "
        f"{summary['seconds']:.1f} s"
    )


@rag.command("search")
@click.argument("index", type=click.Path(exists=True))
@click.argument("query")
@click.option("-k", "k", default=3, show_default=True, type=click.IntRange(1, 100))
def search_cmd(index: str, query: str, k: int) -> None:
    """The K passages of INDEX (or a documents folder) most similar to QUERY."""
    quiet_libraries()
    (hits,) = api.rag_search(index, [query], k)
    for hit in hits:
        click.echo(f"[{hit['rank']}] {hit['score']:.3f}  {hit['source']}")
        click.echo("    " + hit["text"].replace("\n", "\n    "))


@rag.command("eval")
@click.argument("index", type=click.Path(exists=True))
@click.argument("queries", type=click.Path(exists=True, dir_okay=False))
@click.option("--k", "ks", multiple=True, type=click.IntRange(min=1),
              help="Cut-offs for recall@k (repeatable); default 1, 3, 5, 10.")  # fmt: skip
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write results here.")
def eval_cmd(index: str, queries: str, ks: tuple[int, ...], json_out: str | None) -> None:
    """Recall@k and MRR of INDEX on labelled QUERIES (JSONL: query + passage, section or
    facts)."""
    quiet_libraries()
    result = api.rag_quality(index, queries, ks or (1, 3, 5, 10))
    cut = sorted(k for k in result if k.startswith("recall@"))
    for key in sorted(cut, key=lambda k: int(k.split("@")[1])):
        click.echo(f"{key:10s} {result[key]:.4f}")
    click.echo(f"{'mrr':10s} {result['mrr']:.4f}  ({result['queries']} queries)")
    missed = [q for q in result["per_query"] if q["first_relevant_rank"] is None]
    for q in missed[:10]:
        click.echo(f"  not found (line {q['line']}): {q['query']}")
    if json_out:
        api.write_json(json_out, result)


COMMANDS = [rag]
