"""`tuneloop compare-approaches`: should we fine-tune? Prompting, few-shot and a tuned run,
on the same held-out rows, with intervals and cost.

Approaches, each on the same evaluation rows:

- `zero-shot`: the rows as they are (a classification row's own instruction template);
- `system prompt`: plus a system prompt (the library's `classifier` for labelled rows,
  listing the labels; `on_topic` otherwise; or the user's own template);
- `few-shot k=N`: plus the N training rows most similar to the request (MiniLM), as
  earlier turns;
- `fine-tuned`: a tuned run (`--tuned run:ID`), prompted as it was trained.

Labelled rows are scored by accuracy with decoding constrained to the label set (the base
model does not know the label names otherwise); other rows by ROUGE-L and token F1. Cost
per approach: prompt tokens per request, seconds per request, and the tuned run's
training time. The held-out rows are a stratified split of `--data` (seeded), or `--eval`;
the few-shot pool is the rest of `--data`. A tuned run must not have trained on the
held-out rows: give it its own validation file as `--eval`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.results import Serializable


@dataclass
class ApproachesReport(Serializable):
    model: str
    tuned: str | None
    metric: str
    eval_rows: int
    pool_rows: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    recommendation: str = ""
    plot: str | None = None
    seconds: float = 0.0

    def table(self) -> str:
        """The comparison as a Markdown table."""
        head = f"| approach | {self.metric} [95% CI] | prompt tokens | s / request | training |"
        lines = [head, "| --- | --- | --- | --- | --- |"]
        for r in self.rows:
            train = f"{r['training_s']:.0f} s" if r.get("training_s") else "—"
            lines.append(
                f"| {r['approach']} | {r['value']:.4f} [{r['low']:.4f}, {r['high']:.4f}] | "
                f"{r['prompt_tokens']:.0f} | {r['seconds_per_request']:.3f} | {train} |"
            )
        return "\n".join(lines)


def _split(labels: list[str | None], eval_size: int, seed: int) -> tuple[list[int], list[int]]:
    from tuneloop.training.common import stratified_split

    n = len(labels)
    if eval_size >= n:
        raise TuneloopError(f"--eval-size {eval_size} leaves no rows for few-shot ({n} rows)")
    return stratified_split(labels, eval_size / n, seed)


def _prompt_tokens(tokenizer: Any, prompts: list[list[dict[str, str]]]) -> float:
    if tokenizer is None or not prompts:
        return 0.0
    lengths = []
    for p in prompts:
        ids = tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True)
        lengths.append(len(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return sum(lengths) / len(lengths)


def compare_approaches(
    data: str | Path,
    model: str,
    *,
    tuned: str | None = None,
    eval_data: str | Path | None = None,
    shots: tuple[int, ...] = (5, 10),
    eval_size: int = 200,
    system_prompt: str | None = None,
    topic: str = "our product",
    max_new_tokens: int = 64,
    batch_size: int = 16,
    seed: int = 0,
    out: str | Path | None = None,
) -> ApproachesReport:
    """Run every approach (module docstring) and say which to use."""
    from tuneloop import registry
    from tuneloop.baselines import FewShot, render_prompt
    from tuneloop.data.formats import RowOptions
    from tuneloop.data.prompting import Prompting
    from tuneloop.data.readers import read_conversations
    from tuneloop.evaluation.run import evaluate_conversations
    from tuneloop.intervals import mean_interval
    from tuneloop.models import load, resolve

    started = time.perf_counter()
    loaded = read_conversations(data)
    if eval_data is not None:
        held = read_conversations(eval_data)
        pool_idx, eval_idx = list(range(len(loaded.conversations))), None
        evals, eval_labels = held.conversations, held.labels
    else:
        pool_idx, eval_idx = _split(loaded.labels, eval_size, seed)
        evals = [loaded.conversations[i] for i in eval_idx]
        eval_labels = [loaded.labels[i] for i in eval_idx]
    pool = [loaded.conversations[i] for i in pool_idx]
    classify = all(lab is not None for lab in eval_labels) and bool(eval_labels)
    labels = sorted({lab for lab in loaded.labels if lab is not None}) if classify else None
    metrics = ["exact_match"] if classify else ["rouge_l", "token_f1"]
    metric = "accuracy" if classify else "rouge_l"
    prompt = render_prompt(
        system_prompt or ("classifier" if classify else "on_topic"),
        labels=", ".join(labels or []),
        topic=topic,
    )

    def with_system(convs: list[Any]) -> list[Any]:
        return [
            [{"role": "system", "content": prompt}] + [m for m in c if m["role"] != "system"]
            for c in convs
        ]

    approaches: list[tuple[str, list[Any]]] = [
        ("zero-shot", evals),
        ("system prompt", with_system(evals)),
    ]
    if any(k > 0 for k in shots):
        fewshot = FewShot.build(pool)
        for k in shots:
            if k > 0:
                approaches.append((f"few-shot k={k}", fewshot.prompts(with_system(evals), k)))

    base, tokenizer, _ = load(model)
    rows: list[dict[str, Any]] = []

    def run(
        name: str,
        the_model: Any,
        tok: Any,
        convs: list[Any],
        ref: str,
        extra: dict,
        rerank: Any = None,
        queries: list[str] | None = None,
    ) -> None:
        result = evaluate_conversations(
            the_model,
            tok,
            convs,
            metrics,
            max_new_tokens,
            batch_size,
            label=name,
            choices=None if rerank is not None else labels,
            rerank=rerank,
            queries=queries,
        )
        key = "exact_match" if classify else "rouge_l"
        per = [ex["scores"][key] for ex in result.examples]
        ci = mean_interval(per, seed=seed)
        record = registry.add_eval(
            model_ref=ref,
            metrics=result.metrics,
            examples=result.examples,
            settings={"approach": name, "choices": labels, "system_prompt": prompt},
            seconds=result.seconds,
        )
        rows.append(
            {
                "approach": name,
                "value": ci.value,
                "low": ci.low,
                "high": ci.high,
                "metrics": result.metrics,
                "eval_id": record.id,
                "prompt_tokens": _prompt_tokens(tok, [c[:-1] for c in convs]),
                "seconds_per_request": result.seconds / max(len(convs), 1),
                **extra,
            }
        )

    for name, convs in approaches:
        run(name, base, tokenizer, convs, model, {})
    del base
    if tuned is not None:
        resolved = resolve(tuned)
        options = RowOptions.from_prompt_format(resolved.prompt_format or {})
        source = eval_data if eval_data is not None else data
        again = read_conversations(source, options=options)
        convs = (
            again.conversations if eval_idx is None else [again.conversations[i] for i in eval_idx]
        )
        prompting = Prompting.of(resolved)  # the run's system prompt, hints and reranking
        convs = prompting.with_system(convs)
        queries = prompting.queries(convs) if prompting.rerank is not None else None
        convs = prompting.with_hints(convs)
        the_model, tok, _ = load(tuned)
        timings = registry.get_run(resolved.run_id).timings if resolved.run_id else {}
        train_s = (timings or {}).get("train_s") or (timings or {}).get("total_s")
        run(
            "fine-tuned",
            the_model,
            tok,
            convs,
            tuned,
            {"training_s": train_s},
            rerank=prompting.rerank,
            queries=queries,
        )

    report = ApproachesReport(
        model=model,
        tuned=tuned,
        metric=metric,
        eval_rows=len(evals),
        pool_rows=len(pool),
        rows=rows,
        seconds=time.perf_counter() - started,
    )
    report.recommendation = recommend(rows, metric)
    if out is not None:
        report.plot = str(_plot(report, Path(out)))
    return report


def recommend(rows: list[dict[str, Any]], metric: str) -> str:
    """One line that follows from the numbers. The best approach; if it is the tuned run,
    whether any prompt-only approach is within its interval (then fine-tuning bought no
    clear gain); otherwise whether a cheaper approach (fewer prompt tokens per request)
    is within it."""
    if not rows:
        return "no approach was measured"
    best = max(rows, key=lambda r: r["value"])
    within = [r for r in rows if r is not best and r["high"] >= best["low"]]
    line = (
        f"best: {best['approach']} ({metric} {best['value']:.3f} "
        f"[{best['low']:.3f}, {best['high']:.3f}])"
    )
    if best["approach"] == "fine-tuned":
        if not within:
            return (
                line + "; fine-tuning is worth it: no prompt-only approach is within its interval"
            )
        rival = max(within, key=lambda r: r["value"])
        return line + (
            f"; but {rival['approach']} ({rival['value']:.3f}) is within its interval without "
            f"training ({rival['prompt_tokens']:.0f} prompt tokens per request against "
            f"{best['prompt_tokens']:.0f}): no clear gain from fine-tuning yet"
        )
    cheaper = [r for r in within if r["prompt_tokens"] < best["prompt_tokens"]]
    if cheaper:
        pick = min(cheaper, key=lambda r: r["prompt_tokens"])
        return line + (
            f"; {pick['approach']} ({pick['value']:.3f}) is within its interval at "
            f"{pick['prompt_tokens']:.0f} prompt tokens: the cheaper choice"
        )
    return line + "; no cheaper approach is within its interval"


def _plot(report: ApproachesReport, folder: Path) -> Path:
    """Quality with its interval per approach, beside prompt tokens per request."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tuneloop.files import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    names = [r["approach"] for r in report.rows]
    values = [r["value"] for r in report.rows]
    errors = [
        [r["value"] - r["low"] for r in report.rows],
        [r["high"] - r["value"] for r in report.rows],
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.barh(names, values, xerr=errors, color="#0b5cad", capsize=4)
    left.set_xlabel(f"{report.metric} (95% interval)")
    left.invert_yaxis()
    right.barh(names, [r["prompt_tokens"] for r in report.rows], color="#888")
    right.set_xlabel("prompt tokens per request")
    right.invert_yaxis()
    right.set_yticklabels([])
    fig.suptitle(f"{report.model}: {report.eval_rows} held-out rows")
    fig.tight_layout()
    path = folder / "approaches.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
