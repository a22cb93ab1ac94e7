"""`tuneloop studio`: the human feedback web app, and its accounts, tasks and exports."""

from __future__ import annotations

import json

import click

from tuneloop import api


@click.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--secure-cookies/--no-secure-cookies",
    default=None,
    help="Mark the session cookie Secure (default: when the request came over https).",
)
@click.pass_context
def studio(ctx: click.Context, host: str, port: int, secure_cookies: bool | None) -> None:
    """Run the studio, where people rate, compare, rank and correct answers.

    The first start creates an `admin` account and prints its password once. Tasks,
    accounts and exports are also commands here (`tuneloop studio task --help`), calling
    the same functions as the pages.
    """
    if ctx.invoked_subcommand is None:
        # the one command that is not a call of tuneloop.api: the web app sits above the
        # API (its pages call it), so the API cannot start it
        from tuneloop.studio import serve

        serve(host=host, port=port, secure_cookies=secure_cookies)


@studio.group()
def user() -> None:
    """Studio accounts (admin, annotator, viewer)."""


@user.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["annotator", "viewer", "admin"]),
    default="annotator",
    show_default=True,
)
def user_add(name: str, role: str) -> None:
    """Create an account with a random password, printed once."""
    record, password = api.create_studio_user(name, role)
    click.echo(f"created {record['name']} ({record['role']}); password: {password}")


@user.command("password")
@click.argument("name")
def user_password(name: str) -> None:
    """Give an account a new random password, printed once."""
    click.echo(f"new password for {name}: {api.set_studio_password(name)}")


@user.command("list")
def user_list() -> None:
    """Every account."""
    for u in api.studio_users():
        state = " (disabled)" if u["disabled"] else ""
        click.echo(f"{u['name']:<24} {u['role']:<10} {u['created_at']}{state}")


@studio.group()
def task() -> None:
    """Feedback tasks."""


@task.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(["compare", "rate", "rank", "correct"]), required=True)
@click.option(
    "--from",
    "sources",
    multiple=True,
    required=True,
    help="eval:ID, run:ID (all its evaluations), dataset:ID or a data file; repeat to put "
    "several models' answers side by side.",
)
@click.option(
    "--overlap",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Annotators per item.",
)
@click.option("--annotator", "annotators", multiple=True, help="Only these accounts (repeat).")
@click.option("--criterion", "criteria", multiple=True, help="Rate: a criterion (repeat).")
@click.option("--flag", "flags", multiple=True, help="Rate: a flag (repeat).")
@click.option(
    "--blind/--no-blind",
    default=True,
    show_default=True,
    help="Hide which model wrote which answer from annotators.",
)
@click.option("--instructions", default="", help="Shown to annotators above every item.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many items.")
def task_create(
    name, kind, sources, overlap, annotators, criteria, flags, blind, instructions, limit
) -> None:
    """Create a task from evaluations' answers or a dataset."""
    info = api.create_feedback_task(
        name,
        kind,
        list(sources),
        criteria=list(criteria) or None,
        flags=list(flags) if flags else None,
        overlap=overlap,
        annotators=list(annotators) or None,
        blind=blind,
        instructions=instructions,
        limit=limit,
    )
    click.echo(f"task {info.id}: {info.name} ({info.kind}, {info.items} items, x{info.overlap})")


@task.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def task_list(as_json: bool) -> None:
    """Every task with its progress."""
    tasks = api.feedback_tasks()
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in tasks], indent=2))
        return
    for t in tasks:
        click.echo(
            f"{t.id:>4}  {t.name:<30} {t.kind:<8} {t.complete}/{t.items} complete, "
            f"{t.submitted} responses, {t.status}"
        )


@studio.command()
@click.argument("task_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def agreement(task_id: int, as_json: bool) -> None:
    """Inter-annotator agreement of a task, per criterion."""
    result = api.feedback_agreement(task_id)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    if not result:
        click.echo("no agreement yet: it needs items with two or more submitted responses")

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for name, a in result.items():
        click.echo(
            f"{name:<24} units {a['units']:>4}  agree {num(a['percent_agreement'])}  "
            f"cohen {num(a['cohen_kappa'])}  fleiss {num(a['fleiss_kappa'])}  "
            f"krippendorff {num(a['krippendorff_alpha'])} ({a['level']})"
        )


@studio.command("export")
@click.argument("task_id", type=int)
@click.option("--kind", type=click.Choice(["preference", "kto", "sft"]), required=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the JSONL here.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
def export(task_id: int, kind: str, out: str | None, force: bool) -> None:
    """A task's outcome as a new dataset version (train on it with data.train=dataset:ID)."""
    done = api.export_feedback(task_id, kind, out, force=force)
    skipped = ", ".join(f"{n} {why}" for why, n in done.skipped.items())
    click.echo(
        f"exported {done.rows} {kind} rows from task {task_id} as dataset:{done.dataset_id} "
        f"(version {done.dataset_version}): {done.path}"
        + (f"; skipped {skipped}" if skipped else "")
    )


@studio.command()
@click.argument("task_id", type=int)
@click.option("--judge", "judge", required=True, help="The judge model (a reference or run:ID).")
@click.option("--criteria", help="What the judge compares for (default: the judge's own).")
def judge(task_id: int, judge: str, criteria: str | None) -> None:
    """Run an LLM judge on a compare task: its leaderboard beside the people's, and its
    agreement with them (shown on the task's page too)."""
    out = api.judge_feedback_task(task_id, judge, criteria)
    kappa = "-" if out["kappa"] is None else f"{out['kappa']:.3f}"
    agree = "-" if out["agreement"] is None else f"{out['agreement']:.3f}"
    click.echo(
        f"judge {judge} on {out['items']} items: a {out['verdicts']['a']}, b "
        f"{out['verdicts']['b']}, tie {out['verdicts']['tie']}; against the annotators' "
        f"majority on {out['judged_by_people']} items: agreement {agree}, kappa {kappa}"
    )
    for row in out["leaderboard"]:
        click.echo(
            f"  {row['model']:<40} {row['rating']:7.0f}  [{row['low']:.0f}, {row['high']:.0f}]"
        )


@studio.command()
@click.option("--task", "task_ids", multiple=True, type=int, help="Only these tasks (repeat).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def leaderboard(task_ids: tuple[int, ...], as_json: bool) -> None:
    """Human compare/rank votes as a Bradley-Terry leaderboard with intervals."""
    board = api.human_leaderboard(list(task_ids) or None)
    if as_json:
        click.echo(json.dumps(board, indent=2))
        return
    click.echo(f"{board['games']} games")
    for row in board["leaderboard"]:
        click.echo(
            f"{row['model']:<40} {row['rating']:7.0f}  [{row['low']:.0f}, {row['high']:.0f}]  "
            f"{row['wins']}-{row['losses']}-{row['ties']}"
        )


COMMANDS = [studio]
