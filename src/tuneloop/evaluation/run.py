"""Evaluate a model on a data file: generate answers, score them, store every example.

`evaluate_conversations` is the pure part (model + conversations -> metrics and examples);
`evaluate_file` adds model resolution, dataset versioning and the registry record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.config.recipe import METRICS
from tuneloop.data.formats import Conversation, RowOptions
from tuneloop.data.prompting import Prompting
from tuneloop.data.readers import read_conversations
from tuneloop.data.rerank import LabelRerank
from tuneloop.errors import TuneloopError
from tuneloop.evaluation import metrics as M
from tuneloop.models.generate import answer_nll, generate
from tuneloop.progress import Progress
from tuneloop.results import Serializable


@dataclass
class EvalOutput(Serializable):
    """One evaluation: metrics, per-example rows, the classification report for labelled
    data, and the registry ids of the stored evaluation and its dataset."""

    metrics: dict[str, float]
    examples: list[dict[str, Any]]
    seconds: float
    generation: dict[str, float] = field(default_factory=dict)
    eval_id: int | None = None
    dataset_id: int | None = None
    classification: dict[str, Any] | None = None

    def table(self) -> Any:
        """The per-example rows as a pandas DataFrame: the question (the last user turn),
        reference, prediction and one column per score."""
        import pandas as pd

        rows = []
        for ex in self.examples:
            users = [m["content"] for m in ex["prompt"] if m.get("role") == "user"]
            row = {
                "question": users[-1] if users else "",
                "reference": ex["reference"],
                "prediction": ex["prediction"],
            }
            rows.append({**row, **ex["scores"]})
        return pd.DataFrame(rows)


def _check_metrics(metrics: list[str] | tuple[str, ...]) -> None:
    unknown = [m for m in metrics if m not in M.HIGHER_IS_BETTER]
    if unknown:
        known = ", ".join(M.HIGHER_IS_BETTER)
        raise TuneloopError(f"unknown metric(s) {', '.join(unknown)}; known: {known}")


def evaluate_conversations(
    model: Any,
    tokenizer: Any,
    conversations: list[Conversation],
    metrics: list[str] | tuple[str, ...] = METRICS,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    label: str = "eval",
    choices: list[str] | None = None,
    rerank: LabelRerank | None = None,
    queries: list[str] | None = None,
) -> EvalOutput:
    """Greedy-generate the final answer of each conversation and score it.

    model: a loaded model, or an `openai:MODEL` reference (tokenizer None) answered by an
    OpenAI-compatible endpoint.
    choices: constrain every answer to one of these (a classifier's label set).
    rerank: answer with the best of the label index's candidates instead of generating
    (tuneloop.data.rerank); queries are the texts to look up (default: each
    conversation's last user message)."""
    _check_metrics(metrics)
    remote = isinstance(model, str)
    if remote and "perplexity" in metrics:
        raise TuneloopError(
            f"{model}: perplexity needs the model's weights; an endpoint gives only answers "
            "(leave perplexity out of the metrics)"
        )
    if remote and choices is not None:
        raise TuneloopError(
            f"{model}: decoding constrained to labels needs the model's weights; leave out "
            "--constrain-labels for an endpoint"
        )
    if remote and rerank is not None:
        raise TuneloopError(
            f"{model}: label reranking scores candidates with the model's weights; an "
            "endpoint gives only answers"
        )
    start = time.perf_counter()
    prompts = [c[:-1] for c in conversations]
    refs = [c[-1]["content"] for c in conversations]
    examples: list[dict[str, Any]] = [
        {"prompt": p, "reference": r, "prediction": "", "scores": {}}
        for p, r in zip(prompts, refs, strict=True)
    ]
    result: dict[str, float] = {}
    gen_stats: dict[str, float] = {}
    text_metrics = [m for m in metrics if m != "perplexity"]
    if text_metrics:
        with Progress(total=len(prompts), desc=f"{label}: generating", unit="ex") as bar:
            if rerank is not None:
                from tuneloop.data.hints import query_text
                from tuneloop.data.rerank import rerank_answers
                from tuneloop.models.generate import Generation

                texts = queries if queries is not None else [query_text(p) for p in prompts]
                t0 = time.perf_counter()
                chosen = rerank_answers(
                    model, tokenizer, prompts, texts, rerank, batch_size, bar.update
                )
                gens = [Generation(text=r.text, new_tokens=0, stopped=True) for r in chosen]
                for ex, r in zip(examples, chosen, strict=True):
                    # 0: the lookup's first choice; > 0: the model overruled it
                    ex["scores"]["candidate_rank"] = float(
                        [c[0] for c in r.candidates].index(r.text)
                    )
                    ex["candidates"] = [
                        {"label": lab, "model_logp": round(m, 4), "lookup_logp": round(q, 4)}
                        for lab, m, q in r.candidates
                    ]
                gen_stats = {"seconds": time.perf_counter() - t0, "candidates": rerank.k}
            elif remote:
                from tuneloop.models.remote import remote_generate

                gens, gen_stats = remote_generate(model, prompts, max_new_tokens, bar.update)
            else:
                gens, gen_stats = generate(
                    model,
                    tokenizer,
                    prompts,
                    max_new_tokens,
                    batch_size,
                    progress=bar.update,
                    choices=choices,
                )
        preds = [g.text for g in gens]
        for ex, g in zip(examples, gens, strict=True):
            ex["prediction"] = g.text
            ex["scores"]["stopped"] = float(g.stopped)
        for name in text_metrics:
            agg, per = M.SCORERS[name](preds, refs)
            result[name] = agg
            for ex, s in zip(examples, per, strict=True):
                ex["scores"][name] = s
    if "perplexity" in metrics:
        agg, per = M.perplexity(answer_nll(model, tokenizer, conversations, batch_size))
        result["perplexity"] = agg
        for ex, s in zip(examples, per, strict=True):
            ex["scores"]["perplexity"] = s
    return EvalOutput(
        metrics=result,
        examples=examples,
        seconds=time.perf_counter() - start,
        generation=gen_stats,
    )


def _trained_prompt_format(model_ref: str) -> dict[str, Any] | None:
    """How a run turned rows into prompts (None for anything but an existing run)."""
    if not model_ref.startswith("run:"):
        return None
    from tuneloop.errors import TuneloopError
    from tuneloop.models import resolve

    try:
        return resolve(model_ref).prompt_format
    except TuneloopError:
        return None  # reported by the model step, after the data has been checked


def _retrieval_settings(prompting: Prompting, docs: str | Path | None) -> dict | None:
    if prompting.retrieval is None:
        return None
    source = str(docs) if docs is not None else prompting.record["retrieval"]["index"]
    return {"k": prompting.retrieval_k, "chunks": len(prompting.retrieval), "docs": source}


def evaluate_file(
    model_ref: str,
    data: str | Path,
    metrics: list[str] | tuple[str, ...] = METRICS,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    limit: int | None = None,
    fmt: str = "auto",
    system_prompt: str | None = None,
    run_id: int | None = None,
    label: str | None = None,
    constrain_labels: bool = False,
    use_run_format: bool = True,
    docs: str | Path | None = None,
    retrieval_k: int = 3,
    prompt_as: str | None = None,
) -> EvalOutput:
    """Evaluate `model_ref` on a data file and record the result in the registry.

    When `model_ref` is a run, new data is prompted exactly as the run's training data was
    (its recorded format, classification template, text/label fields and system prompt),
    unless `fmt` or `system_prompt` say otherwise. The data is read (strictly) before the
    model is loaded, so a bad file fails in seconds.

    constrain_labels: decode only labels: the run's recorded label set, else the labels
    found in the data file (an error when neither has any).
    use_run_format: False reads the file as it is, ignoring the run's recorded format.
    docs: RAG: add the `retrieval_k` passages most similar to each request from this folder
    of documents (indexed here) or saved index (`tuneloop rag index`); a run trained with
    retrieval uses its own index without it. Each example records the passages it got.
    prompt_as: a run whose prompting applies instead of `model_ref`'s own (continual
    fine-tuning scores each stage's model on an earlier task as that task's run prompts
    it, so a later stage's system prompt or label set does not decide the score).
    """
    from tuneloop import registry
    from tuneloop.models import load, resolve
    from tuneloop.models.remote import is_remote
    from tuneloop.models.resolve import ResolvedModel

    _check_metrics(metrics)
    data_path = Path(data)
    options = None
    trained = _trained_prompt_format(prompt_as or model_ref) if use_run_format else None
    if trained:
        options = RowOptions.from_prompt_format(trained)
    loaded_data = read_conversations(data_path, fmt=fmt, options=options)
    remote = is_remote(model_ref)
    resolved = ResolvedModel(ref=model_ref, base=model_ref) if remote else resolve(model_ref)
    # the run's own prompting (system prompt, label hints, reranking), as serving uses it
    prompting = (
        Prompting.of(resolve(prompt_as) if prompt_as else resolved, system_prompt)
        if use_run_format
        else Prompting(system_prompt=system_prompt)
    )
    if docs is not None:
        from tuneloop.data.retrieval import open_index

        prompting = prompting.with_retrieval(open_index(docs), retrieval_k)
    system_prompt = prompting.system_prompt
    loaded_data.conversations = prompting.with_system(loaded_data.conversations)
    conversations = loaded_data.conversations[:limit] if limit else loaded_data.conversations
    rerank_cfg = prompting.record.get("label_rerank")
    hints_cfg = prompting.record.get("label_hints")
    rerank = prompting.rerank
    # reranking looks up the raw texts (no hints); the prompts get the run's hints
    queries = prompting.queries(conversations) if rerank is not None else None
    hits = prompting.retrieve(conversations) if prompting.retrieval is not None else None
    conversations = prompting.with_hints(prompting.with_context(conversations, hits))
    choices = None
    if constrain_labels:
        choices = (trained or {}).get("labels") or sorted(
            {lab for lab in loaded_data.labels if lab is not None}
        )
        if not choices:
            raise TuneloopError(
                f"--constrain-labels: no label set: {model_ref} recorded none and "
                f"{data_path} has no labels (use classification rows, text + label)"
            )
    dataset = registry.register_dataset(
        data_path.stem, loaded_data.conversations, str(data_path.resolve()), loaded_data.format
    )
    model, tokenizer = (model_ref, None) if remote else load(model_ref)[:2]
    out = evaluate_conversations(
        model,
        tokenizer,
        conversations,
        metrics,
        max_new_tokens,
        batch_size,
        label=label or model_ref,
        choices=None if rerank else choices,
        rerank=rerank,
        queries=queries,
    )
    if hits is not None:
        for example, found in zip(out.examples, hits, strict=True):
            example["sources"] = [h.to_dict() for h in found]
    labelled = all(lab is not None for lab in loaded_data.labels[: len(conversations)])
    generated = any(m != "perplexity" for m in metrics)
    if conversations and labelled and generated:
        # text + label rows: accuracy, macro-F1 and confusions with no extra configuration
        from tuneloop.evaluation.classification import classification_report

        label_set = sorted(
            set((trained or {}).get("labels") or []) | set(loaded_data.labels) - {None}
        )
        out.classification = classification_report(
            [ex["prediction"] for ex in out.examples],
            [ex["reference"] for ex in out.examples],
            label_set,
        )
        out.metrics["accuracy"] = out.classification["accuracy"]
        out.metrics["macro_f1"] = out.classification["macro"]["f1"]
    settings = {
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "limit": limit,
        "system_prompt": system_prompt,
        "decoding": (
            f"label rerank of {rerank.k} candidates"
            if rerank
            else "greedy, constrained to labels"
            if choices
            else "greedy"
        ),
        "label_hints": hints_cfg or None,
        "label_rerank": rerank_cfg or None,
        "retrieval": _retrieval_settings(prompting, docs),
        "choices": choices,
        "generation": out.generation,
        "classification": out.classification,
    }
    record = registry.add_eval(
        model_ref=model_ref,
        metrics=out.metrics,
        examples=out.examples,
        settings={**settings, "prompt_as": prompt_as} if prompt_as else settings,
        run_id=run_id or resolved.run_id,
        dataset_id=dataset.id,
        seconds=out.seconds,
    )
    out.eval_id = record.id
    out.dataset_id = dataset.id
    return out
