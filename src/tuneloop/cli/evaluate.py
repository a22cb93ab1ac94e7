"""`tuneloop eval`, `compare` and `judge`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from tuneloop import api
from tuneloop.cli.console import quiet_libraries


@click.command(name="eval")
@click.argument("suite", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--model",
    "model_refs",
    multiple=True,
    required=True,
    help="Model reference (name, dir, run:ID, openai:MODEL); repeat to compare with a suite.",
)
@click.option("--data", type=click.Path(), help="Chat, prompt/response or text + label file.")
@click.option("--metric", "metrics", multiple=True, help="Metric (repeatable); default: all.")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N rows.")
@click.option("--format", "fmt", default="auto", show_default=True, help="Row format.")
@click.option("--system-prompt", help="System message for rows without one.")
@click.option(
    "--constrain-labels",
    is_flag=True,
    help="Classification: decode only labels from the run's label set (or the data's).",
)
@click.option(
    "--docs",
    type=click.Path(exists=True),
    help="RAG: add passages from these documents (a folder, a file, or an index from "
    "`tuneloop rag index`) to every prompt; each example records the passages it got.",
)
@click.option("--k", "retrieval_k", default=3, show_default=True, type=click.IntRange(1, 20),
              help="With --docs: passages per prompt.")  # fmt: skip
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write results here.")
@click.option(
    "--out", type=click.Path(file_okay=False), help="Suite: report folder (default: runs dir)."
)
def eval_cmd(
    suite: str | None,
    model_refs: tuple[str, ...],
    data: str | None,
    metrics: tuple[str, ...],
    max_new_tokens: int,
    batch_size: int,
    limit: int | None,
    fmt: str,
    system_prompt: str | None,
    constrain_labels: bool,
    docs: str | None,
    retrieval_k: int,
    json_out: str | None,
    out: str | None,
) -> None:
    """Score MODEL on --data, or every --model on every task of SUITE (a YAML file)."""
    if suite:
        if data:
            raise click.UsageError("give a SUITE file or --data, not both")
        ignored = [
            name
            for name, given in (
                ("--metric", metrics),
                ("--limit", limit),
                ("--system-prompt", system_prompt),
                ("--constrain-labels", constrain_labels),
                ("--json", json_out),
                ("--format", fmt != "auto"),
                ("--docs", docs),
            )
            if given
        ]
        if ignored:
            raise click.UsageError(
                f"{', '.join(ignored)}: set these per task in the suite file, not here"
            )
        quiet_libraries()
        report = api.run_suite(suite, list(model_refs), out=out)
        for name, task in report.tasks.items():
            for model, res in task["results"].items():
                shown = ", ".join(f"{k} {v:.4f}" for k, v in res["metrics"].items())
                click.echo(f"{name} / {model}: {shown}")
                if res["classification"]:
                    echo_classification(res["classification"], top=3)
        if "pairwise" in report.result:
            echo_pairwise(report.result["pairwise"])
        click.echo(f"report: {report.html_path} (and report.json)")
        return
    if not data:
        raise click.UsageError("give --data FILE (or a SUITE file)")
    if len(model_refs) != 1:
        raise click.UsageError("--data evaluates one --model; use a SUITE file for several")
    quiet_libraries()
    result = api.evaluate(
        model_refs[0],
        data,
        metrics or None,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        limit=limit,
        format=fmt,
        system_prompt=system_prompt,
        constrain_labels=constrain_labels,
        docs=docs,
        retrieval_k=retrieval_k,
    )
    for name, value in result.metrics.items():
        click.echo(f"{name:12s} {value:.4f}")
    if "pair_accuracy" in result.metrics:
        m = result.metrics
        click.echo(
            f"pair accuracy {m['pair_accuracy']:.4f} [{m['pair_accuracy_low']:.4f}, "
            f"{m['pair_accuracy_high']:.4f}] (95% bootstrap) on {len(result.examples)} pairs; "
            f"reward gap median {m['reward_gap_q50']:.3f} "
            f"(5-95%: {m['reward_gap_q05']:.3f} .. {m['reward_gap_q95']:.3f})"
        )
    if result.classification:
        echo_classification(result.classification)
    click.echo(
        f"eval {result.eval_id} stored ({len(result.examples)} examples, {result.seconds:.0f} s)"
    )
    if json_out:
        api.write_json(json_out, {"model": model_refs[0], "data": data, **result.to_dict()})


@click.command()
@click.argument("base")
@click.argument("tuned")
@click.option("--suite", "suite_path", type=click.Path(dir_okay=False), help="Suite YAML.")
@click.option(
    "--data",
    type=click.Path(),
    help="Instead of a suite: prompts (chat, prompt/response or preference rows) both "
    "models answer; needs --judge.",
)
@click.option(
    "--judge",
    "judge_ref",
    help="With --data: a reward model (run:ID of a reward run; the higher score wins) or a "
    "model to judge pairwise (both orders).",
)
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--limit", type=click.IntRange(min=1), help="With --data: the first N prompts.")
@click.option(
    "--best-of",
    default=1,
    show_default=True,
    type=click.IntRange(min=1, max=64),
    help="With --data: TUNED answers best-of-n, the sample --picker scores highest.",
)
@click.option(
    "--picker",
    help="With --best-of: the reward model (run:ID) that picks (default: the judge).",
)
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), help="With --data: write here."
)
@click.option(
    "--gate",
    help='Fail (exit 1) unless these hold for TUNED, e.g. "accuracy>=0.9,forgetting.drop<=0.05".',
)
@click.option("--out", type=click.Path(file_okay=False), help="Report folder.")
def compare(
    base: str,
    tuned: str,
    suite_path: str | None,
    data: str | None,
    judge_ref: str | None,
    max_new_tokens: int,
    batch_size: int,
    limit: int | None,
    best_of: int,
    picker: str | None,
    json_out: str | None,
    gate: str | None,
    out: str | None,
) -> None:
    """Compare BASE and TUNED per example on a --suite (with the forgetting check), or by
    the win rate of TUNED over BASE on --data prompts as --judge picks."""
    if (suite_path is None) == (data is None):
        raise click.UsageError("give --suite FILE, or --data PROMPTS with --judge (not both)")
    if data is not None and judge_ref is None:
        raise click.UsageError("--data needs --judge (a reward model run:ID, or a judge model)")
    if suite_path is not None and (judge_ref or json_out or limit or best_of > 1 or picker):
        raise click.UsageError(
            "--judge, --json, --limit, --best-of and --picker go with --data, not --suite"
        )
    quiet_libraries()
    if data is not None:
        won = api.compare(
            base,
            tuned,
            data=data,
            judge=judge_ref,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            limit=limit,
            out=out,
            best_of=best_of,
            picker=picker,
        )
        assert isinstance(won, api.WinRate)
        ci = won.win_rate_ci
        shown = f"{tuned} (best of {best_of})" if best_of > 1 else tuned
        click.echo(
            f"win rate of {shown} over {base} by {judge_ref} ({won.judge_kind}): "
            f"{won.win_rate:.4f} [{ci['low']:.4f}, {ci['high']:.4f}] (95% bootstrap; ties "
            f"count half) on {won.prompts} prompts: W {won.wins} / T {won.ties} / L {won.losses}"
        )
        if json_out:
            api.write_json(json_out, won.to_dict())
        return
    report = api.compare(base, tuned, suite_path, gate=gate, out=out)
    assert isinstance(report, api.SuiteReport)
    for name, task in report.tasks.items():
        b, t = task["base"]["metrics"], task["tuned"]["metrics"]
        shown = ", ".join(f"{k} {b[k]:.4f} -> {t[k]:.4f}" for k in t if k in b)
        changes = ", ".join(f"{k} {v}" for k, v in sorted(task["changes"].items()))
        click.echo(f"{name}: {shown}; per example on {task['metric']}: {changes}")
    f = report.forgetting or {}
    click.echo(
        f"forgetting ({f['metric']} on {f['task']}): base {f['base']:.4f}, tuned "
        f"{f['tuned']:.4f}, drop {f['drop']:.4f} [{f['drop_ci']['low']:.4f}, "
        f"{f['drop_ci']['high']:.4f}]{' FLAGGED' if f['flagged'] else ''}"
    )
    if "pairwise" in report.result:
        echo_pairwise(report.result["pairwise"])
    click.echo(f"report: {report.html_path} (and report.json)")
    if report.gate_failed:
        click.echo("gate FAILED: " + "; ".join(report.gate_failed), err=True)
        sys.exit(1)
    if gate:
        click.echo("gate passed")


def echo_classification(report: dict[str, Any], top: int = 5) -> None:
    acc, f1 = report["accuracy_ci"], report["macro_f1_ci"]
    click.echo(
        f"classification: accuracy {acc['value']:.4f} [{acc['low']:.4f}, {acc['high']:.4f}], "
        f"macro-F1 {f1['value']:.4f} [{f1['low']:.4f}, {f1['high']:.4f}] (95% bootstrap), "
        f"{report['outside_label_set']} answers outside the label set"
    )
    for pair in report["confusions"][:top]:
        click.echo(f"  {pair['reference']} -> {pair['predicted']}: {pair['count']}")


def echo_pairwise(pairwise: dict[str, Any]) -> None:
    bias = pairwise["position_bias"]
    click.echo(
        f"pairwise judge {pairwise['judge']}: position bias {bias['inconsistent_rate']:.1%} of "
        f"pairs changed verdict with the order; first-shown answer won "
        f"{bias['first_position_rate']:.1%} of decisive verdicts"
    )
    for row in pairwise["leaderboard"]:
        click.echo(
            f"  {row['model']}: {row['rating']:.0f} [{row['low']:.0f}, {row['high']:.0f}] "
            f"(W {row['wins']} / L {row['losses']} / T {row['ties']})"
        )


@click.group()
def judge() -> None:
    """Check how far an LLM judge can be trusted."""


@judge.command("agreement")
@click.option("--judge", "judge_ref", required=True, help="Judge model, or openai:MODEL.")
@click.option(
    "--pairs",
    required=True,
    type=click.Path(exists=True),
    help="Human preference labels: prompt/chosen/rejected rows or HH transcripts.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Judge only the first N pairs.")
@click.option(
    "--criteria",
    help="What the judge compares for (default: a tuned judge's own criteria, else "
    "'helpfulness, correctness and clarity').",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the A/B coin flips.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write results here.")
def judge_agreement(
    judge_ref: str,
    pairs: str,
    limit: int | None,
    criteria: str | None,
    seed: int,
    json_out: str | None,
) -> None:
    """Agreement and Cohen's kappa between a judge and human preference labels."""
    quiet_libraries()
    result = api.judge_agreement(judge_ref, pairs, limit=limit, criteria=criteria, seed=seed)
    agree, bias = result["agreement"], result["position_bias"]
    click.echo(
        f"{result['pairs']} pairs judged by {judge_ref}: agreement with humans "
        f"{agree['value']:.3f} [{agree['low']:.3f}, {agree['high']:.3f}], "
        f"Cohen's kappa {result['kappa']:.3f} (0 = chance)"
    )
    decisive = result["decisive_agreement"]
    click.echo(
        f"verdicts {result['verdicts']}; on the {result['decisive']} decisive ones agreement "
        + (f"{decisive:.3f}" if decisive is not None else "n/a")
    )
    click.echo(
        f"position bias: {100 * bias['inconsistent_rate']:.1f}% of pairs changed verdict with "
        f"the order; the first answer won {100 * bias['first_position_rate']:.1f}% of decisive "
        "verdicts"
    )
    if json_out:
        api.write_json(json_out, result)


@click.command("compare-approaches")
@click.argument("suite", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Training rows: the few-shot pool, and the held-out split unless --eval.",
)
@click.option("--model", required=True, help="The base model (prompting and few-shot).")
@click.option(
    "--tuned", multiple=True, help="A tuned run (run:ID) to put beside them (repeatable)."
)
@click.option(
    "--eval",
    "eval_data",
    type=click.Path(exists=True, dir_okay=False),
    help="Held-out rows (e.g. the tuned run's validation.jsonl).",
)
@click.option(
    "--k",
    "shots",
    multiple=True,
    type=click.IntRange(min=0),
    help="Few-shot sizes (repeat; default 5 and 10; 0 for none).",
)
@click.option(
    "--eval-size",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Held-out rows split from --data when there is no --eval.",
)
@click.option(
    "--system-prompt",
    help="A template of your own, or a library name "
    "(classifier, on_topic, json); default classifier for labelled rows.",
)
@click.option(
    "--topic", default="our product", show_default=True, help="{topic} in the on_topic prompt."
)
@click.option(
    "--docs",
    type=click.Path(exists=True),
    help="RAG: documents (folder or file) or a saved index; adds a RAG row, and each "
    "tuned run trained without retrieval also with passages.",
)
@click.option("--rag-k", "retrieval_k", default=3, show_default=True,
              type=click.IntRange(1, 20), help="Passages per request with --docs.")  # fmt: skip
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", type=click.Path(file_okay=False), help="Write the plot and JSON here.")
def compare_approaches(
    suite,
    data,
    model,
    tuned,
    eval_data,
    shots,
    eval_size,
    system_prompt,
    topic,
    docs,
    retrieval_k,
    max_new_tokens,
    batch_size,
    seed,
    out,
) -> None:
    """Should we fine-tune? Prompting, few-shot, RAG and tuned runs on the same rows: a
    held-out split of --data, --eval, or each task of SUITE (an eval suite YAML)."""
    quiet_libraries()
    options = {
        "tuned": tuned, "shots": shots or (5, 10), "system_prompt": system_prompt,
        "topic": topic, "docs": docs, "retrieval_k": retrieval_k, "batch_size": batch_size,
        "seed": seed,
    }  # fmt: skip
    if suite:
        if eval_data:
            raise click.UsageError("give a SUITE or --eval, not both")
        reports = api.compare_approaches_suite(suite, data, model, out=out, **options)
        for name, report in reports.items():
            click.echo(f"\n## {name}")
            task_out = str(Path(out) / name) if out else None
            _echo_approaches(report, task_out)
        return
    report = api.compare_approaches(
        data, model, eval_data=eval_data, eval_size=eval_size, max_new_tokens=max_new_tokens,
        out=out, **options,
    )  # fmt: skip
    _echo_approaches(report, out)


def _echo_approaches(report: Any, out: str | None) -> None:
    click.echo(f"{report.eval_rows} held-out rows, {report.pool_rows} in the few-shot pool")
    click.echo(report.table())
    if report.retrieval:
        r = report.retrieval
        click.echo(
            f"retrieval: the top {r['k']} passages hold {r['fact_recall']:.1%} of the reference "
            f"facts (all of them for {r['all_facts_found']:.1%} of the rows)"
        )
    click.echo(report.recommendation)
    if out:
        report.to_json(Path(out) / "approaches.json")
        click.echo(f"plot: {report.plot}")


COMMANDS = [eval_cmd, compare, judge, compare_approaches]
