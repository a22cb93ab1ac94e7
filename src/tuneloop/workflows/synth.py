"""`tuneloop synth run CONFIG`: teacher-drafted training examples, filtered, queued for review.

The steps (tuneloop.data.synth has the prompts and filters):

1. read the seeds (registered as a dataset version: the batch's lineage) and index the
   documents (the same retrieval index as RAG);
2. draft questions: `self_instruct` from `shots` random seed questions, `document_qa` from
   one chunk each (chunks taken in a seeded shuffle, round robin), `evolve` from drafted
   questions; sampled at `temperature` / `top_p`, seeded;
3. the teacher answers each question greedily, given the `passages` nearest to it (a
   document question always gets its own chunk), under the seeds' system prompt; the
   stored example is the plain question and answer, so a model tuned on it learns the
   answer, not to read passages;
4. optional scoring: a reward run's score, or a judge model's 1-10 grade;
5. the filters, as curation steps with counted reasons: `synth_clean`, `dedup` (against
   the seeds, which go first and are then removed, and each other: exact, near, semantic),
   `grounded`, `score_threshold`, `decontaminate`;
6. survivors are stored `pending` in the review queue, the rest `filtered` with their
   reason; `tuneloop synth review` / `approve` / `reject` / `edit`, then `synth export`
   makes a dataset version of the accepted ones.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import DataError
from tuneloop.results import Serializable


@dataclass
class SynthReport(Serializable):
    batch_id: int
    name: str
    teacher: str
    drafted: dict[str, int]  # per method
    pending: int
    filtered: dict[str, int]  # per reason
    steps: list[dict[str, Any]] = field(default_factory=list)  # rows in/out per filter
    seconds: float = 0.0
    seeds_dataset_id: int | None = None

    def summary(self) -> str:
        lines = [
            f"batch {self.batch_id} ({self.name}): {sum(self.drafted.values())} drafted by "
            f"{self.teacher} ("
            + ", ".join(f"{k} {v}" for k, v in self.drafted.items())
            + f"), {self.pending} ready for review, {sum(self.filtered.values())} filtered, "
            f"{self.seconds:.0f} s"
        ]
        for s in self.steps:
            why = ", ".join(f"{r} {n}" for r, n in s["dropped"].items()) or "nothing dropped"
            lines.append(f"  {s['step']:<16} {s['rows_in']:>5} -> {s['rows_out']:<5} {why}")
        return "\n".join(lines)


class _Teacher:
    """A local model (loaded once) or an OpenAI-compatible endpoint."""

    def __init__(self, ref: str, batch_size: int = 16) -> None:
        from tuneloop.models.remote import is_remote

        self.ref = ref
        self.batch_size = batch_size
        self.remote = is_remote(ref)
        self.model = self.tokenizer = None
        if not self.remote:
            from tuneloop.models import load

            self.model, self.tokenizer, _ = load(ref)

    def sample(
        self, prompts: list[Any], max_tokens: int, temperature: float, top_p: float, seed: int
    ) -> list[tuple[str, bool]]:
        if not prompts:
            return []
        if self.remote:
            from tuneloop.models.remote import remote_generate

            sampling = {"temperature": temperature, "top_p": top_p, "seed": seed}
            gens, _ = remote_generate(self.ref, prompts, max_tokens, sampling=sampling)
            return [(g.text, g.stopped) for g in gens]
        from tuneloop.models.generate import sample

        out = sample(
            self.model, self.tokenizer, prompts, 1, max_tokens, temperature, top_p, seed,
            self.batch_size,
        )  # fmt: skip
        return [(s[0].text, s[0].stopped) for s in out]

    def answer(self, prompts: list[Any], max_tokens: int) -> list[tuple[str, bool]]:
        if not prompts:
            return []
        if self.remote:
            from tuneloop.models.remote import remote_generate

            gens, _ = remote_generate(self.ref, prompts, max_tokens)
        else:
            from tuneloop.models.generate import generate

            gens, _ = generate(self.model, self.tokenizer, prompts, max_tokens, self.batch_size)
        return [(g.text, g.stopped) for g in gens]


def _plan(config: Any, has_seeds: bool, has_docs: bool) -> dict[str, int]:
    shares = dict(config.methods)
    if not has_docs:
        shares["self_instruct"] = shares.get("self_instruct", 0) + shares.pop("document_qa", 0)
    if not has_seeds:
        shares["document_qa"] = shares.get("document_qa", 0) + shares.pop("self_instruct", 0)
    total = sum(v for v in shares.values() if v > 0)
    if total <= 0:
        raise DataError("synth: methods give no method a positive share")
    plan = {k: int(config.target * v / total) for k, v in shares.items() if v > 0}
    first = next(k for k in ("self_instruct", "document_qa", "evolve") if k in plan)
    plan[first] += config.target - sum(plan.values())  # rounding goes to the first method
    return plan


def synth_run(path: str | Path, progress: bool = True) -> SynthReport:
    """Draft, answer, filter and queue (module docstring); returns the counts."""
    import sys

    from tuneloop import registry
    from tuneloop.data import synth
    from tuneloop.data.hints import query_text
    from tuneloop.data.readers import read_conversations
    from tuneloop.data.retrieval import Hit, RetrievalIndex, with_context
    from tuneloop.data.steps import run_step

    started = time.perf_counter()
    config, _ = synth.load_synth_config(path)
    rnd = random.Random(config.seed)

    def say(text: str) -> None:
        if progress:
            print(f"synth: {text}", file=sys.stderr, flush=True)

    seeds: list[Any] = []
    seeds_id = None
    if config.seeds:
        loaded = read_conversations(config.seeds)
        seeds = loaded.conversations[: config.seed_limit]
        seeds_id = registry.register_dataset(
            f"{config.name}-seeds", seeds, str(Path(config.seeds).resolve()), loaded.format,
            meta={"role": "synth seeds", "limit": config.seed_limit},
        ).id  # fmt: skip
    seed_questions = [query_text(c[:-1]) for c in seeds]
    system = config.system_prompt or next(
        (c[0]["content"] for c in seeds if c and c[0]["role"] == "system"), None
    )
    index = None
    if config.documents:
        index = RetrievalIndex.build(
            config.documents, max_chars=700, overlap=100, progress=progress
        )
    plan = _plan(config, bool(seeds), index is not None)
    say(f"drafting {config.target} questions with {config.teacher}: {plan}")
    teacher = _Teacher(config.teacher)

    drafts: list[dict[str, Any]] = []  # method, question, origin
    prompts: list[Any] = []
    for _ in range(plan.get("self_instruct", 0)):
        picks = rnd.sample(range(len(seed_questions)), min(config.shots, len(seed_questions)))
        prompts.append(synth.self_instruct_prompt([seed_questions[i] for i in picks]))
        drafts.append({"method": "self_instruct", "seeds": picks})
    if plan.get("document_qa") and index is not None:
        order = list(range(len(index.chunks)))
        rnd.shuffle(order)
        for j in range(plan["document_qa"]):
            chunk = index.chunks[order[j % len(order)]]
            prompts.append(synth.document_question_prompt(chunk.text))
            drafts.append({"method": "document_qa", "chunk": chunk.id})
    texts = teacher.sample(
        prompts, config.max_question_tokens, config.temperature, config.top_p, config.seed
    )
    for d, (text, _) in zip(drafts, texts, strict=True):
        d["question"] = synth.clean_question(text)
    if plan.get("evolve"):
        bases = [d for d in drafts if d["question"]]
        chosen = [rnd.choice(bases) for _ in range(plan["evolve"])] if bases else []
        evolved = teacher.sample(
            [synth.evolve_prompt(d["question"]) for d in chosen], config.max_question_tokens,
            config.temperature, config.top_p, config.seed + 1,
        )  # fmt: skip
        for base, (text, _) in zip(chosen, evolved, strict=True):
            drafts.append(
                {"method": "evolve", "from": base["question"],
                 "question": synth.clean_question(text),
                 **({"chunk": base["chunk"]} if "chunk" in base else {})}
            )  # fmt: skip
    say(f"answering {len(drafts)} questions")
    asked = [
        ([{"role": "system", "content": system}] if system else [])
        + [{"role": "user", "content": d["question"] or "?"}]
        for d in drafts
    ]
    contexts: list[str | None] = [None] * len(drafts)
    if index is not None and config.passages:
        hits = index.search([d["question"] or "?" for d in drafts], config.passages)
        for i, d in enumerate(drafts):
            if "chunk" in d and all(h.chunk.id != d["chunk"] for h in hits[i]):
                own = Hit(index.chunks[d["chunk"]], 1.0, 1)
                rest = [Hit(h.chunk, h.score, h.rank + 1) for h in hits[i]][:-1]
                hits[i] = [own, *rest]
            contexts[i] = "\n".join(h.chunk.text for h in hits[i])
        asked = with_context(asked, hits)
    if config.answerer and config.answerer != config.teacher:
        del teacher  # one model in memory at a time
        teacher = _Teacher(config.answerer)
    answers = teacher.answer(asked, config.max_answer_tokens)

    rows = []
    for pos, (d, (answer, stopped), context) in enumerate(
        zip(drafts, answers, contexts, strict=True)
    ):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": d["question"]},
            {"role": "assistant", "content": answer.strip()},
        ]
        origin = {k: v for k, v in d.items() if k in ("seeds", "chunk", "from")}
        if "chunk" in origin and index is not None:
            origin["chunk"] = index.chunks[origin["chunk"]].cite() + f" (chunk {origin['chunk']})"
        meta = {"position": pos, "method": d["method"], "stopped": stopped, **origin}
        # only document questions must be grounded in their own chunk
        if d["method"] == "document_qa" and context is not None:
            meta["context"] = context
        rows.append({"kind": "sft", "messages": messages, "source": f"draft {pos}", "synth": meta})

    if config.scorer:
        _score(rows, config.scorer)
    f = config.filters
    seed_rows = [
        {"kind": "sft", "messages": c, "source": f"seed {i}", "synth": {"seed": True}}
        for i, c in enumerate(seeds)
    ]
    steps: list[tuple[str, dict[str, Any]]] = [
        ("synth_clean", {"min_question_chars": f.min_question_chars,
                         "max_question_chars": f.max_question_chars,
                         "min_answer_chars": f.min_answer_chars,
                         "max_answer_chars": f.max_answer_chars}),
        ("dedup", {"field": "prompt", "threshold": f.near_threshold, "semantic": True,
                   "semantic_threshold": f.semantic_threshold}),
        ("grounded", {"min_share": f.grounded}),
    ]  # fmt: skip
    if config.scorer and f.score_threshold is not None:
        steps.append(("score_threshold", {"threshold": f.score_threshold}))
    if f.decontaminate:
        steps.append(("decontaminate", {"eval_files": f.decontaminate}))
    dropped: list[tuple[Any, str]] = []
    logs = []
    current = rows
    for name, params in steps:
        say(f"filter {name} ({len(current)} rows)")

        def watch(row: Any, reason: str, step_name: str = name) -> None:
            if not row.get("synth", {}).get("seed"):
                dropped.append((row, f"{step_name}: {reason}"))

        # dedup sees the seeds first, so a draft that repeats a seed is the one dropped
        given = seed_rows + current if name == "dedup" else current
        current, log = run_step(name, given, watch=watch, **params)
        current = [r for r in current if not r["synth"].get("seed")]
        entry = log.to_dict()
        if name == "dedup":
            entry["rows_in"], entry["rows_out"] = len(given) - len(seed_rows), len(current)
            entry["details"]["seeds_compared"] = len(seed_rows)
        logs.append(entry)
    kept = current
    for log in logs:
        log["samples"] = {}  # drafts are all in the queue; no need to copy them here
    documents = index.documents if index is not None else []
    who = config.teacher + (f" (answers: {config.answerer})" if config.answerer else "")
    batch_id = synth.create_batch(
        config.name, who, config.model_dump(mode="json"), seeds_id, documents,
        logs, kept, dropped,
    )  # fmt: skip
    filtered: dict[str, int] = {}
    for _, why in dropped:
        filtered[why] = filtered.get(why, 0) + 1
    drafted: dict[str, int] = {}
    for d in drafts:
        drafted[d["method"]] = drafted.get(d["method"], 0) + 1
    return SynthReport(
        batch_id=batch_id,
        name=config.name,
        teacher=who,
        drafted=drafted,
        pending=len(kept),
        filtered=filtered,
        steps=[
            {k: log[k] for k in ("step", "rows_in", "rows_out", "dropped", "details")}
            for log in logs
        ],
        seconds=time.perf_counter() - started,
        seeds_dataset_id=seeds_id,
    )


def _score(rows: list[Any], scorer: str) -> None:
    """Each row's `synth.score`: a reward run's reward, or a judge's 1-10 grade."""
    from tuneloop.evaluation.reward import is_reward_ref

    if is_reward_ref(scorer):
        from tuneloop.models.reward import load_reward_model

        rm = load_reward_model(scorer)
        values = rm.score([r["messages"] for r in rows])
    else:
        from tuneloop.evaluation.judge import Judge

        grades = Judge(scorer).grade(
            [r["messages"][-2]["content"] for r in rows],
            [r["messages"][-1]["content"] for r in rows],
        )
        values = [g.score for g in grades]
    for row, value in zip(rows, values, strict=True):
        row["synth"]["score"] = None if value is None else float(value)


def synth_export(batch_id: int, out: str | Path | None = None) -> dict[str, Any]:
    """The accepted candidates (approved, and edited with the edit) as a registered
    dataset version (`dataset:ID`, source `synth:batch:N`) whose meta names the teacher,
    the seeds' dataset and the documents. The rows are written as chat JSONL to `out`, or
    under the tuneloop home (synth/batchN-DIGEST.jsonl), which the dataset points to."""
    from tuneloop import registry
    from tuneloop.data import synth
    from tuneloop.errors import TuneloopError
    from tuneloop.files import atomic_write_jsonl

    info = synth.batch(batch_id)
    rows = synth.accepted_rows(batch_id)
    counts = next(b["counts"] for b in synth.batches() if b["id"] == batch_id)
    if not rows:
        raise TuneloopError(
            f"synth batch {batch_id} has no approved or edited candidates yet: review it "
            f"first (tuneloop synth review {batch_id})"
        )
    from tuneloop.config.home import tuneloop_home
    from tuneloop.registry import content_hash

    digest = content_hash(rows)
    path = (
        Path(out).resolve()
        if out
        else tuneloop_home() / "synth" / f"batch{batch_id}-{digest[:12]}.jsonl"
    )
    atomic_write_jsonl(path, ({"messages": m} for m in rows))
    meta = {
        "synth_batch": batch_id,
        "teacher": info["teacher"],
        "seeds_dataset_id": info["seeds_dataset_id"],
        "documents": info["documents"],
        "counts": {st: counts.get(st, 0) for st in synth.STATUSES},
    }
    dataset = registry.register_dataset(
        f"{info['name']}-synth", rows, str(path), "messages", meta=meta,
        parent_id=info["seeds_dataset_id"], source=f"synth:batch:{batch_id}",
    )  # fmt: skip
    return {"dataset_id": dataset.id, "version": dataset.version, "rows": len(rows),
            "path": str(path), **meta}  # fmt: skip
