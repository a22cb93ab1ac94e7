"""Feedback tasks: what people are asked to judge, built from tuneloop's own records.

A task is made from one or more sources, aligned example by example:

- `eval:ID`: an evaluation's per-example answers (one model's answer per prompt). Two or
  more evals of the same prompts (e.g. the quickstart's base and tuned) give each item one
  answer per model: the material of a blind A/B `compare` or a `rank`.
- `dataset:ID` or a file: rows tuneloop reads (SFT rows give their last assistant turn as
  the answer; preference rows give `chosen` and `rejected` as two answers).

Kinds: `rate` (each answer on 1-5 criteria, flags, a comment), `compare` (exactly two
answers: A, B, tie or both bad), `rank` (three or more answers in order), `correct`
(one answer, edited into the answer it should have been).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tuneloop.errors import NotFound, TuneloopError
from tuneloop.feedback.audit import record
from tuneloop.results import Serializable

KINDS = ("rate", "compare", "rank", "correct")
DEFAULT_CRITERIA = ("helpfulness", "accuracy", "safety", "tone")
DEFAULT_FLAGS = ("hallucination", "unsafe", "off-topic", "incomplete")
SCALE = (1, 5)
_ANSWERS = {"rate": (1, None), "compare": (2, 2), "rank": (3, None), "correct": (1, 1)}


@dataclass
class TaskInfo(Serializable):
    id: int
    name: str
    kind: str
    status: str
    created_by: str
    created_at: str
    config: dict[str, Any]
    source: dict[str, Any]
    items: int = 0
    complete: int = 0  # items with `overlap` submitted responses
    submitted: int = 0
    drafts: int = 0
    by_annotator: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def overlap(self) -> int:
        return int(self.config.get("overlap", 1))


def _answers_from_row(row: dict[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(prompt messages, answers) of one normalised row."""
    kind = row["kind"]
    if kind == "sft":
        return row["messages"][:-1], [{"model": "dataset", "text": row["messages"][-1]["content"]}]
    if kind == "preference":
        return row["prompt"], [
            {"model": "chosen", "text": row["chosen"][-1]["content"]},
            {"model": "rejected", "text": row["rejected"][-1]["content"]},
        ]
    if kind == "kto":
        return row["prompt"], [{"model": "dataset", "text": row["completion"][-1]["content"]}]
    if kind == "prompt":
        return row["prompt"], []
    raise TuneloopError(f"{row.get('source', 'a row')}: {kind} rows have no prompt to judge")


def _read_source(ref: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """([{prompt, answers, reference}], lineage) of one source."""
    from tuneloop import registry
    from tuneloop.data.readers import read_rows

    if ref.startswith("eval:"):
        from tuneloop.registry.tables import EvalResult

        try:
            eval_id = int(ref.split(":", 1)[1])
        except ValueError:
            raise TuneloopError(f"bad eval reference {ref!r}; expected eval:ID") from None
        with registry.session_scope() as s:
            result = s.get(EvalResult, eval_id)
            model = _model_name(result.model_ref) if result is not None else None
        examples = registry.eval_examples(eval_id) if model is not None else []
        if not examples:
            raise NotFound(f"no evaluation {eval_id} with per-example answers")
        items = [
            {
                "prompt": ex.prompt,
                "answers": [{"model": model, "text": ex.prediction}],
                "reference": ex.reference or None,
            }
            for ex in examples
        ]
        return items, {"ref": ref, "eval_id": eval_id, "model": model}
    lineage: dict[str, Any] = {"ref": ref}
    path = ref
    if ref.startswith("dataset:"):
        try:
            dataset = registry.get_dataset(int(ref.split(":", 1)[1]))
        except ValueError:
            raise TuneloopError(f"bad dataset reference {ref!r}; expected dataset:ID") from None
        path = dataset.path
        lineage["dataset_id"] = dataset.id
    read = read_rows(path, strict=True)
    items = []
    for row in read.rows:
        prompt, answers = _answers_from_row(row)
        items.append({"prompt": prompt, "answers": answers, "reference": None})
    return items, lineage


def _expand_runs(sources: list[str]) -> list[str]:
    """`run:ID` stands for every evaluation that run recorded (the quickstart's base and
    tuned answers, a compare's models), in the order they were made."""
    from tuneloop import registry

    out = []
    for ref in sources:
        if not ref.startswith("run:"):
            out.append(ref)
            continue
        try:
            run_id = int(ref.split(":", 1)[1])
        except ValueError:
            raise TuneloopError(f"bad run reference {ref!r}; expected run:ID") from None
        evals = registry.evals_for_run(run_id)
        if not evals:
            raise NotFound(f"run {run_id} recorded no evaluations")
        # the run's first evaluation set: the quickstart also evaluates forgetting probes,
        # another set of prompts, which `eval:ID` names when wanted
        first = evals[0].dataset_id
        out += [f"eval:{e.id}" for e in evals if e.dataset_id == first]
    return out


def _model_name(ref: str) -> str:
    """How an answer's model is shown to admins and on leaderboards: a trained model's
    folder as `run:ID` (what users type), anything else as recorded."""
    from sqlalchemy import select

    from tuneloop import registry
    from tuneloop.registry.tables import ModelRecord

    with registry.session_scope() as s:
        run_id = s.scalar(
            select(ModelRecord.run_id).where(ModelRecord.path == ref).order_by(ModelRecord.id)
        )
    return f"run:{run_id}" if run_id is not None else ref


def recent_evals(limit: int = 20) -> list[dict[str, Any]]:
    """The newest evaluations with per-example answers: what a task can be made from."""
    from sqlalchemy import func, select

    from tuneloop import registry
    from tuneloop.registry.tables import EvalExample, EvalResult, Run

    with registry.session_scope() as s:
        counts = (
            select(EvalExample.eval_id, func.count().label("n"))
            .group_by(EvalExample.eval_id)
            .subquery()
        )
        rows = s.execute(
            select(EvalResult, counts.c.n, Run.name)
            .join(counts, counts.c.eval_id == EvalResult.id)
            .outerjoin(Run, Run.id == EvalResult.run_id)
            .order_by(EvalResult.id.desc())
            .limit(limit)
        )
        return [
            {
                "id": e.id,
                "model": e.model_ref,
                "run_id": e.run_id,
                "run_name": run_name,
                "examples": n,
                "created_at": e.created_at.isoformat(timespec="seconds"),
            }
            for e, n, run_name in rows
        ]


def _merge(sources: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Items whose answers come from every source, aligned by position; the prompts must
    match, else the error names the first position that differs."""
    merged: list[dict[str, Any]] | None = None
    lineage = []
    sources = _expand_runs(sources)
    for ref in sources:
        items, origin = _read_source(ref)
        lineage.append(origin)
        if merged is None:
            merged = items
            continue
        if len(items) != len(merged):
            raise TuneloopError(
                f"{ref} has {len(items)} examples but {sources[0]} has {len(merged)}: "
                "the sources of one task must answer the same prompts"
            )
        for i, (into, item) in enumerate(zip(merged, items, strict=True)):
            if into["prompt"] != item["prompt"]:
                raise TuneloopError(
                    f"example {i}: {ref} answers a different prompt than {sources[0]}"
                )
            into["answers"] += item["answers"]
            into["reference"] = into["reference"] or item["reference"]
    assert merged is not None
    # the same model twice (an eval repeated) would make its answers indistinguishable
    names = [a["model"] for a in merged[0]["answers"]] if merged else []
    if len(set(names)) < len(names):
        for item in merged:
            for j, answer in enumerate(item["answers"]):
                answer["model"] = f"{answer['model']} ({sources[j] if j < len(sources) else j})"
    return merged, lineage


def create_task(
    name: str,
    kind: str,
    sources: list[str],
    *,
    criteria: list[str] | None = None,
    flags: list[str] | None = None,
    overlap: int = 1,
    annotators: list[str] | None = None,
    blind: bool = True,
    instructions: str = "",
    limit: int | None = None,
    actor: str = "cli",
) -> TaskInfo:
    """Create a feedback task from `sources` (see the module docstring).

    overlap: how many annotators judge each item (an item completes at that many
    submitted responses); annotators: only these accounts may work on it (default: every
    annotator and admin); blind: annotators never see which model wrote which answer.
    """
    from tuneloop import registry
    from tuneloop.registry.tables import FeedbackItem, FeedbackTask

    if kind not in KINDS:
        raise TuneloopError(f"task kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not name.strip() or len(name) > 200:
        raise TuneloopError("a task needs a name of 1-200 characters")
    if not sources:
        raise TuneloopError("a task needs at least one source (eval:ID, dataset:ID or a file)")
    if limit is not None and limit < 1:
        raise TuneloopError(f"limit must be at least 1, got {limit}")
    if overlap < 1:
        raise TuneloopError(f"overlap must be at least 1, got {overlap}")
    items, lineage = _merge(sources)
    if limit is not None:
        items = items[:limit]
    if not items:
        raise TuneloopError("the sources hold no examples")
    low, high = _ANSWERS[kind]
    for i, item in enumerate(items):
        n = len(item["answers"])
        if kind == "correct" and n == 0:
            item["answers"] = [{"model": "none", "text": ""}]  # write the answer from scratch
            n = 1
        if n < low or (high is not None and n > high):
            wanted = f"exactly {low}" if low == high else f"at least {low}"
            raise TuneloopError(
                f"example {i}: a {kind} task needs {wanted} answer(s) per prompt, the sources "
                f"give {n}" + (" (use rank for more than two)" if kind == "compare" else "")
            )
    if annotators is not None:
        from tuneloop.feedback.accounts import get_user

        for who in annotators:
            get_user(who)  # NotFound names an unknown account
        if len(annotators) < overlap:
            raise TuneloopError(
                f"overlap {overlap} needs at least that many annotators, got {len(annotators)}"
            )
    config = {
        "criteria": list(criteria or DEFAULT_CRITERIA) if kind == "rate" else [],
        "flags": list(flags if flags is not None else DEFAULT_FLAGS) if kind == "rate" else [],
        "scale": list(SCALE),
        "overlap": overlap,
        "annotators": annotators,
        "blind": blind,
        "instructions": instructions,
    }
    with registry.session_scope() as s:
        task = FeedbackTask(
            name=name, kind=kind, config=config, source={"sources": lineage}, created_by=actor
        )
        s.add(task)
        s.flush()
        s.add_all(
            FeedbackItem(
                task_id=task.id,
                position=i,
                prompt=item["prompt"],
                answers=item["answers"],
                reference=item["reference"],
                meta={},
            )
            for i, item in enumerate(items)
        )
        record(
            s,
            actor,
            "create",
            "task",
            task.id,
            None,
            {
                "name": name,
                "kind": kind,
                "items": len(items),
                "config": config,
                "source": task.source,
            },
        )
        task_id = task.id
    return get_task(task_id)


def _info(task: Any, s: Any) -> TaskInfo:
    from sqlalchemy import func, select

    from tuneloop.registry.tables import FeedbackItem, FeedbackResponse

    items = s.scalar(select(func.count()).where(FeedbackItem.task_id == task.id)) or 0
    overlap = int(task.config.get("overlap", 1))
    per_item = (
        select(FeedbackResponse.item_id, func.count().label("n"))
        .where(FeedbackResponse.task_id == task.id, FeedbackResponse.status == "submitted")
        .group_by(FeedbackResponse.item_id)
        .subquery()
    )
    complete = s.scalar(select(func.count()).select_from(per_item).where(per_item.c.n >= overlap))
    by: dict[str, dict[str, Any]] = {}
    rows = s.execute(
        select(
            FeedbackResponse.annotator,
            FeedbackResponse.status,
            func.count(),
            func.avg(FeedbackResponse.seconds),
        )
        .where(FeedbackResponse.task_id == task.id)
        .group_by(FeedbackResponse.annotator, FeedbackResponse.status)
    )
    for who, status, n, seconds in rows:
        entry = by.setdefault(who, {"submitted": 0, "drafts": 0, "seconds_per_item": None})
        if status == "submitted":
            entry["submitted"] = n
            entry["seconds_per_item"] = round(float(seconds), 1) if seconds is not None else None
        elif status == "draft":
            entry["drafts"] = n
    return TaskInfo(
        id=task.id,
        name=task.name,
        kind=task.kind,
        status=task.status,
        created_by=task.created_by,
        created_at=task.created_at.isoformat(timespec="seconds"),
        config=task.config,
        source=task.source,
        items=items,
        complete=complete or 0,
        submitted=sum(e["submitted"] for e in by.values()),
        drafts=sum(e["drafts"] for e in by.values()),
        by_annotator=by,
    )


def get_task(task_id: int) -> TaskInfo:
    from tuneloop import registry
    from tuneloop.registry.tables import FeedbackTask

    with registry.session_scope() as s:
        task = s.get(FeedbackTask, task_id)
        if task is None:
            raise NotFound(f"no feedback task {task_id}")
        return _info(task, s)


def list_tasks() -> list[TaskInfo]:
    from sqlalchemy import select

    from tuneloop import registry
    from tuneloop.registry.tables import FeedbackTask

    with registry.session_scope() as s:
        return [_info(t, s) for t in s.scalars(select(FeedbackTask).order_by(FeedbackTask.id))]


def set_status(task_id: int, status: str, actor: str = "cli") -> TaskInfo:
    """Close a task (no more responses) or reopen it."""
    from tuneloop import registry
    from tuneloop.registry.tables import FeedbackTask

    if status not in ("open", "closed"):
        raise TuneloopError(f"status must be open or closed, got {status!r}")
    with registry.session_scope() as s:
        task = s.get(FeedbackTask, task_id)
        if task is None:
            raise NotFound(f"no feedback task {task_id}")
        record(s, actor, "set-status", "task", task_id, {"status": task.status}, {"status": status})
        task.status = status
    return get_task(task_id)


def visible_to(task: TaskInfo, user: Any) -> TaskInfo:
    """`task` as `user` may see it: an annotator gets its progress and their own pace, not
    its sources (which name the evaluations, hence the models), a judge's verdicts or
    other annotators' counts, so blind work stays blind. Others see it whole."""
    if user.role != "annotator":
        return task
    return dataclasses.replace(
        task,
        source={},
        config={k: v for k, v in task.config.items() if k != "judge"},
        by_annotator={k: v for k, v in task.by_annotator.items() if k == user.name},
    )
