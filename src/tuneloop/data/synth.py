"""Synthetic training data: what a teacher is asked, how its drafts are cleaned and
filtered, and the review queue they wait in.

`tuneloop synth run CONFIG` (workflows/synth.py) asks a teacher model for new examples in
three ways, all from the user's own material:

- `self_instruct`: a few seed questions shown, one new question asked for;
- `document_qa`: one chunk of the documents shown, a question it answers asked for;
- `evolve`: a generated question rewritten to be more specific (complexity evolution).

The teacher then answers each question, with the passages of the documents nearest to it
(so answers are grounded in the policies, not the teacher's guesses). Drafts go through
curation steps registered here and in the data layer, each counted with reasons in the
same step logs as `tuneloop data curate`: `synth_clean` (strip "Question:" prefixes,
quotes and numbering, drop empty, cut-off or over-long drafts), `dedup` against the seeds
and each other (exact, near and semantic), `grounded` (document QA answers must use the
words of their chunk), `score_threshold` (a judge or reward model's score) and
`decontaminate` against eval sets. Survivors wait as `pending` in the registry's review
queue; filtered drafts are kept with their reason, so every count can be checked. Approved
and edited candidates become a dataset version whose lineage names the teacher, the seeds'
dataset version and the documents.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneloop.data.hints import query_text
from tuneloop.data.records import Row, answer_of, prompt_of
from tuneloop.data.steps import StepLog, step
from tuneloop.errors import DataError, TuneloopError

STATUSES = ("pending", "approved", "edited", "rejected", "filtered")


class SynthFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_question_chars: int = Field(default=10, ge=1)
    max_question_chars: int = Field(default=300, ge=1)
    min_answer_chars: int = Field(default=15, ge=1)
    max_answer_chars: int = Field(default=1200, ge=1)
    near_threshold: float = Field(
        default=0.7, gt=0, le=1, description="Character 5-gram Jaccard for near duplicates."
    )
    semantic_threshold: float = Field(
        default=0.92,
        gt=0,
        le=1,
        description="MiniLM cosine above which two questions are paraphrases (one is dropped).",
    )
    grounded: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Document QA: the least share of the answer's content words found in "
        "its chunk (0 turns the check off).",
    )
    score_threshold: float | None = Field(
        default=None,
        description="With `scorer`: drop candidates whose score is below this (a reward "
        "model's score, or a judge's 1-10 rating).",
    )
    decontaminate: list[str] = Field(
        default_factory=list,
        description="Eval files the candidates must not overlap (13-word n-grams); relative "
        "to the config.",
    )


class SynthConfig(BaseModel):
    """A synth.yaml: the teacher, the material, how many candidates, the filters."""

    model_config = ConfigDict(extra="forbid")

    name: str = "synth"
    teacher: str = Field(
        description="Any model tuneloop runs (a bundled name, a folder, run:ID) or "
        "openai:MODEL for an OpenAI-compatible endpoint (OPENAI_BASE_URL, OPENAI_API_KEY)."
    )
    answerer: str | None = Field(
        default=None,
        description="The model that answers the drafted questions (default: the teacher), "
        "e.g. a run tuned on the domain while a general model writes the questions.",
    )
    seeds: str | None = Field(
        default=None, description="Seed examples (chat or prompt/response rows)."
    )
    seed_limit: int | None = Field(default=None, ge=1, description="Use the first N seeds.")
    documents: str | None = Field(
        default=None,
        description="A folder or file of documents (.txt, .md, .html, .pdf): questions are "
        "drawn from its chunks and every answer is given with the nearest passages.",
    )
    system_prompt: str | None = Field(
        default=None,
        description="The system message of the generated rows (default: the seeds' own).",
    )
    target: int = Field(default=200, ge=1, description="Questions to draft before filtering.")
    methods: dict[Literal["self_instruct", "document_qa", "evolve"], float] = Field(
        default_factory=lambda: {"self_instruct": 0.5, "document_qa": 0.4, "evolve": 0.1},
        description="Share of the target per method (normalised). Without documents, "
        "document_qa's share goes to self_instruct.",
    )
    shots: int = Field(default=4, ge=1, le=20, description="Seed questions shown per draft.")
    passages: int = Field(default=2, ge=0, le=10, description="Passages given to each answer.")
    temperature: float = Field(default=0.9, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_question_tokens: int = Field(default=64, ge=8)
    max_answer_tokens: int = Field(default=160, ge=8)
    scorer: str | None = Field(
        default=None,
        description="A reward run (run:ID of method reward) or a judge model that rates each "
        "answer 1-10; with `filters.score_threshold`.",
    )
    filters: SynthFilters = Field(default_factory=SynthFilters)
    seed: int = 0


def load_synth_config(path: str | Path) -> tuple[SynthConfig, Path]:
    """Read a synth.yaml; relative paths in it are relative to it."""
    from pydantic import ValidationError

    from tuneloop.config.load import format_validation_error
    from tuneloop.data.config import read_yaml_mapping

    path = Path(path)
    raw = read_yaml_mapping(path, "synth config")
    base = path.resolve().parent
    for key in ("seeds", "documents"):
        if isinstance(raw.get(key), str) and not Path(raw[key]).is_absolute():
            raw[key] = str((base / raw[key]).resolve())
    filters = raw.get("filters")
    if isinstance(filters, dict) and isinstance(filters.get("decontaminate"), list):
        filters["decontaminate"] = [
            str((base / f).resolve()) if isinstance(f, str) and not Path(f).is_absolute() else f
            for f in filters["decontaminate"]
        ]
    try:
        config = SynthConfig.model_validate(raw)
    except ValidationError as err:
        raise DataError(format_validation_error(err, str(path), model=SynthConfig)) from None
    if not config.seeds and not config.documents:
        raise DataError(f"{path}: give seeds, documents or both: there is nothing to draw from")
    return config, base


# --- what the teacher is asked -------------------------------------------------------------


def self_instruct_prompt(examples: list[str]) -> list[dict[str, str]]:
    listed = "\n".join(f"{i}. {q}" for i, q in enumerate(examples, start=1))
    return [
        {
            "role": "user",
            "content": "Here are questions customers asked:\n"
            f"{listed}\n\nWrite one new question a customer could ask, on a different "
            "detail than these. Reply with the question only.",
        }
    ]


def document_question_prompt(passage: str) -> list[dict[str, str]]:
    return [
        {
            "role": "user",
            "content": f"Here is a passage from our documentation:\n\n{passage}\n\n"
            "Write one question a customer could ask that this passage answers. Reply "
            "with the question only.",
        }
    ]


def evolve_prompt(question: str) -> list[dict[str, str]]:
    return [
        {
            "role": "user",
            "content": "Rewrite this customer question so it is more specific: add one "
            f"concrete detail or condition, keep it one question.\n\nQuestion: {question}\n\n"
            "Reply with the rewritten question only.",
        }
    ]


_PREFIX = re.compile(
    r"^\s*(?:(?:new |rewritten )?question\s*\d*\s*[:.\-]|q\s*[:.]|\d+\s*[.)]|[-*•])\s*", re.I
)


def clean_question(text: str) -> str:
    """The question a teacher wrote, without the wrapping small models add: a leading
    "Question:" / "1." / "-", surrounding quotes, and anything after its first line."""
    lines = [line for line in text.strip().split("\n") if line.strip()]
    first = lines[0] if lines else ""
    while True:  # "- New question: ..." carries two
        stripped = _PREFIX.sub("", first, count=1).strip()
        if stripped == first:
            break
        first = stripped
    return first.strip("\"'“”‘’ ").strip()


# --- filters: curation steps ---------------------------------------------------------------


@step("synth_clean")
def synth_clean(
    rows: list[Row],
    log: StepLog,
    min_question_chars: int = 10,
    max_question_chars: int = 300,
    min_answer_chars: int = 15,
    max_answer_chars: int = 1200,
) -> list[Row]:
    """Drop drafts that are not usable examples: a question that is too short or too
    long, or that repeats the instruction it was made from; an answer that is too short,
    too long, or was cut off at the token limit (`synth.stopped` false)."""
    kept = []
    for row in rows:
        q, a = query_text(prompt_of(row)), answer_of(row).strip()
        meta = row.get("synth", {})
        if len(q) < min_question_chars:
            log.drop(row, "question too short")
        elif len(q) > max_question_chars:
            log.drop(row, "question too long")
        elif re.search(r"\b(reply with|write one|passage from our documentation)\b", q, re.I):
            log.drop(row, "question repeats the instruction")
        elif len(a) < min_answer_chars:
            log.drop(row, "answer too short")
        elif len(a) > max_answer_chars:
            log.drop(row, "answer too long")
        elif meta.get("stopped") is False:
            log.drop(row, "answer cut off at the token limit")
        else:
            kept.append(row)
    return kept


_STOP = frozenset(
    {
        "a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "for", "by",
        "with", "from", "as", "is", "are", "was", "were", "be", "been", "it", "its", "this",
        "that", "these", "those", "you", "your", "we", "our", "us", "i", "my", "me", "they",
        "them", "their", "can", "could", "will", "would", "should", "do", "does", "did", "not",
        "no", "yes", "so", "than", "then", "there", "here", "what", "which", "who", "how",
        "when", "where", "why", "all", "any", "each", "more", "most", "some", "such", "only",
        "also", "just", "about", "into", "out", "up",
    }
)  # fmt: skip


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP]


@step("grounded")
def grounded(rows: list[Row], log: StepLog, min_share: float = 0.5) -> list[Row]:
    """Document QA drafts whose answer uses too few words of its chunk are dropped: the
    teacher answered from its own beliefs, not the documents (share of the answer's
    content words found in the chunk and the passages it was given)."""
    kept = []
    shares = []
    for row in rows:
        meta = row.get("synth", {})
        source = meta.get("context")
        if not source or min_share <= 0:
            kept.append(row)
            continue
        words = content_words(answer_of(row))
        have = set(content_words(source))
        share = sum(w in have for w in words) / len(words) if words else 0.0
        shares.append(share)
        if share < min_share:
            log.drop(row, f"answer not grounded in its passage (< {min_share:.0%} of words)")
        else:
            kept.append(row)
    if shares:
        log.details["grounded_share_mean"] = round(sum(shares) / len(shares), 3)
    return kept


@step("score_threshold")
def score_threshold(rows: list[Row], log: StepLog, threshold: float = 0.0) -> list[Row]:
    """Drop drafts whose `synth.score` (a reward model's or a judge's) is below
    `threshold`; drafts without a score are kept and flagged."""
    kept = []
    for row in rows:
        value = row.get("synth", {}).get("score")
        if value is None:
            log.flag(row, "no score")
            kept.append(row)
        elif value < threshold:
            log.drop(row, f"score below {threshold}")
        else:
            kept.append(row)
    return kept


# --- the review queue ----------------------------------------------------------------------


def create_batch(
    name: str,
    teacher: str,
    config: dict[str, Any],
    seeds_dataset_id: int | None,
    documents: list[dict[str, Any]],
    log: list[dict[str, Any]],
    kept: list[Row],
    dropped: list[tuple[Row, str]],
) -> int:
    """Store a batch and its candidates (kept: pending; dropped: filtered, with reason)."""
    from tuneloop.registry import session_scope
    from tuneloop.registry.tables import SynthBatch, SynthCandidate

    with session_scope() as s:
        batch = SynthBatch(
            name=name,
            teacher=teacher,
            config=config,
            seeds_dataset_id=seeds_dataset_id,
            documents=documents,
            log=log,
        )
        s.add(batch)
        s.flush()
        everything = [(r, "pending", None) for r in kept] + [
            (r, "filtered", why) for r, why in dropped
        ]
        everything.sort(key=lambda x: x[0]["synth"]["position"])
        for row, status, why in everything:
            meta = row["synth"]
            s.add(
                SynthCandidate(
                    batch_id=batch.id,
                    position=meta["position"],
                    method=meta["method"],
                    messages=row["messages"],
                    origin={k: v for k, v in meta.items() if k in ("seeds", "chunk", "from")},
                    status=status,
                    reason=why,
                )
            )
        return batch.id


def batches() -> list[dict[str, Any]]:
    """Every batch with its counts per status, newest first."""
    from sqlalchemy import func, select

    from tuneloop.registry import session_scope
    from tuneloop.registry.tables import SynthBatch, SynthCandidate

    with session_scope() as s:
        counts: dict[int, dict[str, int]] = {}
        q = select(SynthCandidate.batch_id, SynthCandidate.status, func.count()).group_by(
            SynthCandidate.batch_id, SynthCandidate.status
        )
        for bid, status, n in s.execute(q):
            counts.setdefault(bid, {})[status] = n
        out = []
        for b in s.scalars(select(SynthBatch).order_by(SynthBatch.id.desc())):
            out.append(
                {
                    "id": b.id,
                    "name": b.name,
                    "teacher": b.teacher,
                    "created_at": b.created_at.isoformat(timespec="seconds"),
                    "counts": counts.get(b.id, {}),
                }
            )
        return out


def batch(batch_id: int) -> dict[str, Any]:
    from tuneloop.errors import NotFound
    from tuneloop.registry import session_scope
    from tuneloop.registry.tables import SynthBatch

    with session_scope() as s:
        b = s.get(SynthBatch, batch_id)
        if b is None:
            raise NotFound(f"no synth batch with id {batch_id}")
        return {
            "id": b.id,
            "name": b.name,
            "teacher": b.teacher,
            "config": b.config,
            "seeds_dataset_id": b.seeds_dataset_id,
            "documents": b.documents,
            "log": b.log,
        }


def _candidate_dict(c: Any) -> dict[str, Any]:
    return {
        "id": c.id,
        "position": c.position,
        "method": c.method,
        "status": c.status,
        "reason": c.reason,
        "question": next(m["content"] for m in reversed(c.messages) if m["role"] == "user"),
        "answer": c.messages[-1]["content"],
        "edited_answer": c.edited[-1]["content"] if c.edited else None,
        "messages": c.edited or c.messages,
        "origin": c.origin,
        "reviewer": c.reviewer,
    }


def candidates(
    batch_id: int, status: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """A batch's candidates in order, optionally of one status."""
    from sqlalchemy import select

    from tuneloop.registry import session_scope
    from tuneloop.registry.tables import SynthCandidate

    batch(batch_id)  # NotFound for an unknown batch
    if status is not None and status not in STATUSES:
        raise TuneloopError(f"unknown status {status!r}; use {', '.join(STATUSES)}")
    with session_scope() as s:
        q = select(SynthCandidate).where(SynthCandidate.batch_id == batch_id)
        if status is not None:
            q = q.where(SynthCandidate.status == status)
        q = q.order_by(SynthCandidate.position).limit(limit)
        return [_candidate_dict(c) for c in s.scalars(q)]


def review(
    batch_id: int,
    candidate_ids: list[int] | None,
    decision: Literal["approve", "reject", "edit", "reset"],
    reviewer: str,
    answer: str | None = None,
    question: str | None = None,
) -> int:
    """Approve, reject, edit (a new answer and/or question) or reset to pending the given
    candidates of a batch (None: every pending one, for approve/reject). Filtered
    candidates cannot be approved: a filter said why. Returns how many changed."""
    from sqlalchemy import select

    from tuneloop.registry import session_scope
    from tuneloop.registry.tables import SynthCandidate, utcnow

    batch(batch_id)
    if decision == "edit":
        if not candidate_ids or len(candidate_ids) != 1:
            raise TuneloopError("edit one candidate at a time")
        if not (answer and answer.strip()) and not (question and question.strip()):
            raise TuneloopError("an edit needs a new answer or a new question")
    elif candidate_ids is None and decision not in ("approve", "reject"):
        raise TuneloopError(f"{decision} needs candidate ids")
    with session_scope() as s:
        q = select(SynthCandidate).where(SynthCandidate.batch_id == batch_id)
        if candidate_ids is None:
            q = q.where(SynthCandidate.status == "pending")
        else:
            q = q.where(SynthCandidate.id.in_(candidate_ids))
        found = list(s.scalars(q))
        missing = set(candidate_ids or []) - {c.id for c in found}
        if missing:
            raise TuneloopError(f"batch {batch_id} has no candidate {sorted(missing)[0]}")
        for c in found:
            if c.status == "filtered" and decision != "reject":
                raise TuneloopError(
                    f"candidate {c.id} was filtered ({c.reason}); it cannot be {decision}d"
                )
            if decision == "edit":
                messages = [dict(m) for m in (c.edited or c.messages)]
                if question and question.strip():
                    for m in reversed(messages):
                        if m["role"] == "user":
                            m["content"] = question.strip()
                            break
                if answer and answer.strip():
                    messages[-1]["content"] = answer.strip()
                c.edited, c.status = messages, "edited"
            elif decision == "reset":
                c.status = "pending" if c.status != "filtered" else "filtered"
            else:
                c.status = "approved" if decision == "approve" else "rejected"
            c.reviewer, c.reviewed_at = reviewer, utcnow()
        return len(found)


def accepted_rows(batch_id: int) -> list[list[dict[str, str]]]:
    """The approved and edited candidates' conversations (an edit replaces the teacher's)."""
    rows = candidates(batch_id, "approved") + candidates(batch_id, "edited")
    rows.sort(key=lambda c: c["position"])
    return [c["messages"] for c in rows]
