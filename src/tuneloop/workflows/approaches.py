"""`tuneloop compare-approaches`: should we fine-tune? Prompting, few-shot, RAG and tuned
runs, on the same held-out rows, with intervals and cost.

Approaches, each on the same evaluation rows:

- `zero-shot`: the rows as they are (a classification row's own instruction template);
- `system prompt`: plus a system prompt (the library's `classifier` for labelled rows,
  listing the labels; `on_topic` otherwise; or the user's own template);
- `few-shot k=N`: plus the N training rows most similar to the request (MiniLM), as
  earlier turns;
- `RAG` (with `--docs`): the system prompt plus the passages of the documents most
  similar to the request (`tuneloop.data.retrieval`), numbered for citation;
- `fine-tuned`: each tuned run (`--tuned run:ID`, repeatable), prompted as it was trained;
  a run trained with retrieval (`data.retrieval`) is `fine-tuned + RAG`, and with `--docs`
  a run trained without it is also tried with passages added at inference.

Labelled rows are scored by accuracy with decoding constrained to the label set (the base
model does not know the label names otherwise); other rows by ROUGE-L and token F1, and,
when the rows carry `facts` (short strings a right answer states), by fact match, which
is then the headline metric. Cost per approach: prompt tokens per request, seconds per
request, and a tuned run's training time. Approaches with passages also report how often
an answer cites one ([n]); every example records the passages it got.

The held-out rows are a stratified split of `--data` (seeded), or `--eval`; the few-shot
pool is the rest of `--data` (with `--eval`, every row of `--data` whose request neither is
nor holds nor sits inside a held-out request, so a template around it does not hide it).
A tuned run must not have trained on the held-out rows: give it its own validation file as
`--eval`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import DataError, TuneloopError
from tuneloop.results import Serializable


@dataclass
class ApproachesReport(Serializable):
    model: str
    tuned: list[str] | None
    metric: str
    eval_rows: int
    pool_rows: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    recommendation: str = ""
    plot: str | None = None
    seconds: float = 0.0
    docs: str | None = None
    retrieval: dict[str, Any] | None = None  # recall of the facts in the passages

    def table(self) -> str:
        """The comparison as a Markdown table."""
        extra = [m for m in ("token_f1", "rouge_l") if m != self.metric and self._has(m)]
        cited = any(r.get("cited") is not None for r in self.rows)
        head = f"| approach | {self.metric} [95% CI] | " + "".join(f"{m} | " for m in extra)
        head += ("cites a passage | " if cited else "") + "prompt tokens | s / request | training |"
        lines = [head, "| --- " * (head.count("|") - 1) + "|"]
        for r in self.rows:
            train = f"{r['training_s']:.0f} s" if r.get("training_s") else "—"
            cells = [f"{r['approach']}", f"{r['value']:.4f} [{r['low']:.4f}, {r['high']:.4f}]"]
            cells += [f"{r['metrics'][m]:.4f}" for m in extra]
            if cited:
                cells.append("—" if r.get("cited") is None else f"{r['cited']:.2f}")
            cells += [f"{r['prompt_tokens']:.0f}", f"{r['seconds_per_request']:.3f}", train]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def _has(self, metric: str) -> bool:
        return all(metric in r["metrics"] for r in self.rows) and bool(self.rows)


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


def read_facts(path: str | Path) -> list[list[Any]] | None:
    """Each JSONL row's `facts` (a list of strings, or of lists of alternatives), in file
    order, or None when no row has any. Rows are read as the conversation reader reads
    them (blank lines skipped), so the lists line up with its conversations."""
    p = Path(path)
    if p.suffix.lower() != ".jsonl":
        return None
    out: list[list[Any]] = []
    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                facts = json.loads(line).get("facts") or []
            except (ValueError, AttributeError):
                return None  # the conversation reader reports the bad line
            ok = isinstance(facts, list) and all(
                isinstance(f, str) or (isinstance(f, list) and all(isinstance(a, str) for a in f))
                for f in facts
            )
            if not ok:
                raise DataError(f"{p}:{n}: facts must be a list of strings or of string lists")
            out.append(facts)
    return out if any(out) else None


_CITE = re.compile(r"\[(\d{1,2})\]")


def cites(answer: str, passages: int) -> bool:
    """Whether an answer cites one of its passages by number ([1] .. [passages])."""
    return any(1 <= int(m) <= passages for m in _CITE.findall(answer))


def compare_approaches(
    data: str | Path,
    model: str,
    *,
    tuned: str | Sequence[str] | None = None,
    eval_data: str | Path | None = None,
    shots: tuple[int, ...] = (5, 10),
    eval_size: int = 200,
    system_prompt: str | None = None,
    topic: str = "our product",
    docs: str | Path | None = None,
    retrieval_k: int = 3,
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
    from tuneloop.evaluation.metrics import fact_match
    from tuneloop.evaluation.run import evaluate_conversations
    from tuneloop.intervals import mean_interval
    from tuneloop.models import load, resolve

    started = time.perf_counter()
    tuned_refs = [tuned] if isinstance(tuned, str) else list(tuned or [])
    loaded = read_conversations(data)
    if eval_data is not None:
        from tuneloop.data.decontaminate import overlapping_requests
        from tuneloop.data.hints import query_text

        held = read_conversations(eval_data)
        evals, eval_labels = held.conversations, held.labels
        # a held-out request must never be its own few-shot example (a validation split of
        # the same file would otherwise be in the pool), also when the two files wrap it in
        # different templates
        leaked = overlapping_requests(
            [query_text(c[:-1]) for c in loaded.conversations],
            [query_text(c[:-1]) for c in evals],
        )
        pool_idx = [i for i, hit in enumerate(leaked) if not hit]
        eval_idx = None
        all_facts = read_facts(eval_data)
    else:
        pool_idx, eval_idx = _split(loaded.labels, eval_size, seed)
        evals = [loaded.conversations[i] for i in eval_idx]
        eval_labels = [loaded.labels[i] for i in eval_idx]
        found = read_facts(data)
        all_facts = [found[i] for i in eval_idx] if found else None
    if all_facts is not None and len(all_facts) != len(evals):
        all_facts = None  # rows the reader skipped or split: facts no longer line up
    pool = [loaded.conversations[i] for i in pool_idx]
    classify = all(lab is not None for lab in eval_labels) and bool(eval_labels)
    labels = sorted({lab for lab in loaded.labels if lab is not None}) if classify else None
    metrics = ["exact_match"] if classify else ["rouge_l", "token_f1"]
    metric = "accuracy" if classify else "fact_match" if all_facts else "rouge_l"
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

    index = None
    if docs is not None:
        from tuneloop.data.retrieval import open_index

        index = open_index(docs)
    # (name, conversations, passages per conversation or None)
    approaches: list[tuple[str, list[Any], Any]] = [
        ("zero-shot", evals, None),
        ("system prompt", with_system(evals), None),
    ]
    if any(k > 0 for k in shots):
        fewshot = FewShot.build(pool)
        for k in shots:
            if k > 0:
                approaches.append((f"few-shot k={k}", fewshot.prompts(with_system(evals), k), None))
    retrieval_report = None
    if index is not None:
        rag = Prompting().with_retrieval(index, retrieval_k)
        hits = rag.retrieve(evals)
        approaches.append(("RAG", rag.with_context(with_system(evals), hits), hits))
        if all_facts:
            retrieval_report = _fact_recall(hits, all_facts, retrieval_k)

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
        hits: list[list[Any]] | None = None,
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
        if all_facts:
            agg, per_fact = fact_match([ex["prediction"] for ex in result.examples], all_facts)
            result.metrics["fact_match"] = agg
            for ex, s in zip(result.examples, per_fact, strict=True):
                ex["scores"]["fact_match"] = s
        cited = None
        if hits is not None:
            for ex, found in zip(result.examples, hits, strict=True):
                ex["sources"] = [h.to_dict() for h in found]
            cited = sum(
                cites(ex["prediction"], len(found))
                for ex, found in zip(result.examples, hits, strict=True)
            ) / max(len(hits), 1)
            result.metrics["cites_passage"] = cited
        key = {"accuracy": "exact_match"}.get(metric, metric)
        per = [ex["scores"][key] for ex in result.examples]
        ci = mean_interval(per, seed=seed)
        record = registry.add_eval(
            model_ref=ref,
            metrics=result.metrics,
            examples=result.examples,
            settings={
                "approach": name,
                "choices": labels,
                "system_prompt": prompt,
                "retrieval": {"docs": str(docs), "k": retrieval_k} if hits is not None else None,
            },
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
                "cited": cited,
                **extra,
            }
        )

    for name, convs, hits in approaches:
        run(name, base, tokenizer, convs, model, {}, hits=hits)
    del base
    for ref in tuned_refs:
        resolved = resolve(ref)
        options = RowOptions.from_prompt_format(resolved.prompt_format or {})
        source = eval_data if eval_data is not None else data
        again = read_conversations(source, options=options)
        convs = (
            again.conversations if eval_idx is None else [again.conversations[i] for i in eval_idx]
        )
        prompting = Prompting.of(resolved)  # the run's system prompt, hints, retrieval, rerank
        convs = prompting.with_system(convs)
        queries = prompting.queries(convs) if prompting.rerank is not None else None
        the_model, tok, _ = load(ref)
        timings = registry.get_run(resolved.run_id).timings if resolved.run_id else {}
        train_s = (timings or {}).get("train_s") or (timings or {}).get("total_s")
        label = "fine-tuned" if len(tuned_refs) == 1 else f"fine-tuned {ref}"
        variants = [(prompting, label + (" + RAG" if prompting.retrieval is not None else ""))]
        if index is not None and prompting.retrieval is None:
            variants.append((prompting.with_retrieval(index, retrieval_k), label + " + RAG"))
        for variant, name in variants:
            hits = variant.retrieve(convs) if variant.retrieval is not None else None
            prepared = variant.with_hints(variant.with_context(convs, hits))
            run(name, the_model, tok, prepared, ref, {"training_s": train_s},
                rerank=variant.rerank, queries=queries, hits=hits)  # fmt: skip
        del the_model

    report = ApproachesReport(
        model=model,
        tuned=tuned_refs or None,
        metric=metric,
        eval_rows=len(evals),
        pool_rows=len(pool),
        rows=rows,
        seconds=time.perf_counter() - started,
        docs=str(docs) if docs is not None else None,
        retrieval=retrieval_report,
    )
    report.recommendation = recommend(rows, metric)
    if out is not None:
        report.plot = str(_plot(report, Path(out)))
    return report


def compare_suite(
    suite: str | Path, data: str | Path, model: str, **options: Any
) -> dict[str, ApproachesReport]:
    """`compare_approaches` on every task of an eval suite: each task's data is the held-out
    set (`eval_data`), `data` the few-shot pool, and the task's `max_new_tokens` applies.
    Tasks that read their file as it is (`use_run_format: false`, such as the general
    forgetting probes) measure something else and are left out. With `out`, each task's
    plot goes to its own folder under it."""
    from tuneloop.evaluation.suite import load_suite

    loaded = load_suite(suite)
    folder = options.pop("out", None)
    out: dict[str, ApproachesReport] = {}
    for task in loaded.tasks:
        if not task.use_run_format:
            continue
        settings = {"max_new_tokens": task.max_new_tokens, **options}
        if folder is not None:
            settings["out"] = Path(folder) / task.name  # a plot per task
        out[task.name] = compare_approaches(data, model, eval_data=task.data, **settings)
    if not out:
        raise TuneloopError(f"suite {suite}: no task to compare approaches on")
    return out


def _fact_recall(hits: list[list[Any]], facts: list[list[Any]], k: int) -> dict[str, Any]:
    """Context recall: the share of each row's facts that its passages contain (what
    retrieval made available to the answer), and the share of rows with all of them."""
    from tuneloop.evaluation.metrics import fact_match

    texts = ["\n".join(h.chunk.text for h in found) for found in hits]
    mean, per = fact_match(texts, facts)
    return {"k": k, "fact_recall": mean, "all_facts_found": sum(p == 1.0 for p in per) / len(per)}


def recommend(rows: list[dict[str, Any]], metric: str) -> str:
    """One line that follows from the numbers. The best approach; if it is the tuned run,
    whether any prompt-only approach is within its interval (then fine-tuning bought no
    clear gain); otherwise whether a cheaper approach (fewer prompt tokens per request)
    is within it."""
    if not rows:
        return "no approach was measured"
    best = max(rows, key=lambda r: r["value"])
    within = [r for r in rows if r is not best and r["high"] >= best["low"]]
    untrained = [r for r in within if not r["approach"].startswith("fine-tuned")]
    line = (
        f"best: {best['approach']} ({metric} {best['value']:.3f} "
        f"[{best['low']:.3f}, {best['high']:.3f}])"
    )
    if best["approach"].startswith("fine-tuned"):
        if not untrained:
            return line + (
                "; fine-tuning is worth it: no approach without training is within its interval"
            )
        rival = max(untrained, key=lambda r: r["value"])
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
