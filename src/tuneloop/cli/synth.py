"""`tuneloop synth`: teacher-drafted examples, their review queue, and the dataset they make."""

from __future__ import annotations

import click

from tuneloop import api
from tuneloop.cli.console import quiet_libraries, table


@click.group()
def synth() -> None:
    """Synthetic training data with review (docs/synthetic.md)."""


@synth.command("run")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
def run_cmd(config: str) -> None:
    """Draft examples as CONFIG (a synth.yaml) says, filter them, queue them for review."""
    quiet_libraries()
    report = api.synth(config)
    click.echo(report.summary())
    click.echo(f"review: tuneloop synth review {report.batch_id}")


@synth.command("list")
def list_cmd() -> None:
    """Every batch with its counts per status."""
    rows = []
    for b in api.synth_batches():
        c = b["counts"]
        rows.append([b["id"], b["name"], b["teacher"], c.get("pending", 0),
                     c.get("approved", 0) + c.get("edited", 0), c.get("rejected", 0),
                     c.get("filtered", 0), b["created_at"]])  # fmt: skip
    table(["id", "name", "teacher", "pending", "accepted", "rejected", "filtered", "created"], rows)


@synth.command("show")
@click.argument("batch", type=int)
@click.option("--status", help="Only these: pending, approved, edited, rejected, filtered.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def show_cmd(batch: int, status: str | None, limit: int) -> None:
    """The candidates of BATCH: id, status, method, question and answer."""
    for c in api.synth_candidates(batch, status, limit):
        why = f" ({c['reason']})" if c["reason"] else ""
        click.echo(f"#{c['id']} [{c['status']}{why}] {c['method']}")
        click.echo(f"  Q: {c['question']}")
        click.echo(f"  A: {c['edited_answer'] or c['answer']}")


@synth.command("review")
@click.argument("batch", type=int)
@click.option("--reviewer", help="Your name in the record (default: the login name).")
def review_cmd(batch: int, reviewer: str | None) -> None:
    """Go through BATCH's pending candidates one by one: [a]pprove, [e]dit (opens
    $EDITOR on the answer), [r]eject, [s]kip or [q]uit."""
    pending = api.synth_candidates(batch, "pending")
    if not pending:
        click.echo(f"batch {batch} has nothing pending")
        return
    done = 0
    for n, c in enumerate(pending, start=1):
        click.echo(f"\n[{n}/{len(pending)}] #{c['id']} {c['method']}")
        click.echo(f"Q: {c['question']}\nA: {c['answer']}")
        choice = click.prompt(
            "approve / edit / reject / skip / quit",
            type=click.Choice(["a", "e", "r", "s", "q"]),
            show_choices=False,
            default="s",
        )
        if choice == "q":
            break
        if choice == "s":
            continue
        if choice == "e":
            text = click.edit(c["answer"])
            if text is None or not text.strip():
                click.echo("unchanged (no edit saved)")
                continue
            api.synth_review(batch, [c["id"]], "edit", reviewer=reviewer, answer=text)
        else:
            decision = "approve" if choice == "a" else "reject"
            api.synth_review(batch, [c["id"]], decision, reviewer=reviewer)
        done += 1
    click.echo(f"{done} reviewed; export with: tuneloop synth export {batch}")


def _decide(decision: str):  # type: ignore[no-untyped-def]
    @click.argument("batch", type=int)
    @click.argument("ids", nargs=-1, type=int)
    @click.option("--all", "everything", is_flag=True, help="Every pending candidate.")
    @click.option("--reviewer", help="Your name in the record (default: the login name).")
    def command(batch: int, ids: tuple[int, ...], everything: bool, reviewer: str | None) -> None:
        if bool(ids) == everything:
            raise click.UsageError("give candidate IDS or --all (every pending one)")
        n = api.synth_review(batch, None if everything else list(ids), decision,
                             reviewer=reviewer)  # fmt: skip
        click.echo(f"{n} candidate(s) {'approved' if decision == 'approve' else 'rejected'}")

    command.__doc__ = f"{decision.capitalize()} candidates of BATCH (IDS, or --all pending)."
    return command


synth.command("approve")(_decide("approve"))
synth.command("reject")(_decide("reject"))


@synth.command("edit")
@click.argument("batch", type=int)
@click.argument("candidate", type=int)
@click.option("--answer", help="The corrected answer.")
@click.option("--question", help="The corrected question.")
@click.option("--reviewer", help="Your name in the record (default: the login name).")
def edit_cmd(
    batch: int, candidate: int, answer: str | None, question: str | None, reviewer: str | None
) -> None:
    """Correct CANDIDATE of BATCH (its answer and/or question); it counts as accepted."""
    api.synth_review(batch, [candidate], "edit", reviewer=reviewer, answer=answer,
                     question=question)  # fmt: skip
    click.echo(f"candidate {candidate} edited")


@synth.command("export")
@click.argument("batch", type=int)
@click.option(
    "--out", type=click.Path(dir_okay=False), help="Write the rows here (default: tuneloop home)."
)
def export_cmd(batch: int, out: str | None) -> None:
    """Make the accepted candidates of BATCH a dataset version (train with dataset:ID)."""
    result = api.synth_export(batch, out)
    click.echo(
        f"dataset:{result['dataset_id']} (version {result['version']}): {result['rows']} rows "
        f"from batch {batch}, teacher {result['teacher']}" + f"; rows in {result['path']}"
    )


COMMANDS = [synth]
