"""The registry's tables: datasets, runs, models and eval results (per example).

Changing anything here needs a new Alembic revision in `migrations/versions/`; a test
compares these tables with the migrated schema so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Dataset(Base):
    """One immutable version of a dataset; changed content from the same source is a new version.

    `source` is what the versions share (a file's resolved path, or a name the user gave):
    two files that merely share a name are two datasets. `source_key` (its SHA-256) carries
    the unique version number, so any source length indexes on any database.
    """

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("source_key", "version", name="uq_dataset_source_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    source: Mapped[str] = mapped_column(Text)
    source_key: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), nullable=True)
    path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(40))
    num_rows: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    parent: Mapped[Dataset | None] = relationship(remote_side="Dataset.id")


class Run(Base):
    """A unit of work (train, eval, quickstart) with its recipe, status, metrics and timings."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True, default="running")
    base_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    run_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    git_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    package_version: Mapped[str] = mapped_column(String(40))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # the process doing the work, so a run killed without a chance to record it (kill -9,
    # power loss) can be told from a live one: see `records.run_status`
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    datasets: Mapped[list[RunDataset]] = relationship(back_populates="run")


class RunDataset(Base):
    """Which dataset versions a run used, and in which role (train, eval)."""

    __tablename__ = "run_datasets"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(20), primary_key=True)

    run: Mapped[Run] = relationship(back_populates="datasets")
    dataset: Mapped[Dataset] = relationship()


class ModelRecord(Base):
    """A model artifact on disk: a cached base model, a trained adapter, a full model."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    path: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class EvalResult(Base):
    """Aggregate metrics of one model on one dataset version."""

    __tablename__ = "eval_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_ref: Mapped[str] = mapped_column(Text)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    examples: Mapped[list[EvalExample]] = relationship(
        back_populates="result", order_by="EvalExample.index"
    )


class EvalExample(Base):
    """One evaluated example: prompt, reference, the model's answer and its scores."""

    __tablename__ = "eval_examples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    eval_id: Mapped[int] = mapped_column(ForeignKey("eval_results.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[list[Any]] = mapped_column(JSON)
    reference: Mapped[str] = mapped_column(Text)
    prediction: Mapped[str] = mapped_column(Text)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    result: Mapped[EvalResult] = relationship(back_populates="examples")


class RunMetric(Base):
    """One metrics entry of a run (a training log line or a validation), as written to
    the run's `metrics.jsonl`; a resumed run replaces the entries after its checkpoint."""

    __tablename__ = "run_metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class JudgeCall(Base):
    """One judge completion, keyed by a hash of (judge, request): judging is slow and,
    for remote judges, paid, so a repeated request is answered from here."""

    __tablename__ = "judge_calls"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    judge: Mapped[str] = mapped_column(Text)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    response: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TrafficRecord(Base):
    """One request a `tuneloop serve` process answered (or refused): the raw material of
    monitoring, drift checks and the next dataset. Several replicas write to one table."""

    __tablename__ = "traffic"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    model: Mapped[str] = mapped_column(Text)  # the name clients asked for
    served_by: Mapped[str] = mapped_column(Text)  # the reference actually answering
    route: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    messages: Mapped[list[Any]] = mapped_column(JSON)  # redacted when the server redacts
    answers: Mapped[list[Any]] = mapped_column(JSON)  # one text per choice
    finish_reasons: Mapped[list[Any]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    ttft_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Feedback(Base):
    """A user's verdict on a logged response: thumbs up or down, a comment, a correction."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("traffic.request_id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)  # +1 up, -1 down
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class ApiKey(Base):
    """An API key of `tuneloop serve --registry-keys`: the argon2 hash of its secret, never
    the secret. Revoked keys stay (with `revoked_at`) so the traffic log's key ids keep a
    name."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(String(16))
    hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


# --- the studio: accounts, feedback tasks, responses, and the audit log ---------------------


class StudioUser(Base):
    """A studio account: only the argon2 hash of its password is stored. Disabled accounts
    stay (with `disabled_at`) so the audit log's names keep meaning someone."""

    __tablename__ = "studio_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin, annotator, viewer
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class FeedbackTask(Base):
    """A unit of human feedback work: rate, compare, rank or correct the answers of its
    items. `config` holds the criteria, flags, overlap (k annotators per item), named
    annotators and blindness; `source` is its lineage (the evals or dataset it came from)."""

    __tablename__ = "feedback_tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class FeedbackItem(Base):
    """One prompt of a task with the answers to judge (each `{"model", "text"}`); the
    model names never leave the server for a blind task. `resolution` is an admin's final
    label where the annotators disagreed."""

    __tablename__ = "feedback_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("feedback_tasks.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[list[Any]] = mapped_column(JSON)
    answers: Mapped[list[Any]] = mapped_column(JSON)
    reference: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    resolution: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class FeedbackResponse(Base):
    """One annotator's work on one item: a draft until submitted. `order` is the
    permutation of the answers this annotator was shown (sides randomised per item and
    annotator); `value` is stored in the item's own answer indices. `version` rises on
    every save, so a stale edit is refused instead of overwriting."""

    __tablename__ = "feedback_responses"
    __table_args__ = (UniqueConstraint("item_id", "annotator", name="uq_response_item_annotator"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("feedback_tasks.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("feedback_items.id"), index=True)
    annotator: Mapped[str] = mapped_column(String(100), index=True)
    status: Mapped[str] = mapped_column(String(16), default="draft")  # draft, submitted
    order: Mapped[list[Any]] = mapped_column(JSON)
    value: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class AuditEntry(Base):
    """Append-only: who changed what, when, from what to what. Nothing updates or deletes
    these rows."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(40))
    entity: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class SynthBatch(Base):
    """One `tuneloop synth run`: its config, the teacher, the seeds' dataset version and the
    documents (with their SHA-256) it drew from, and the filter counts (`log`: one curation
    step log per filter)."""

    __tablename__ = "synth_batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    teacher: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seeds_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), nullable=True)
    documents: Mapped[list[Any]] = mapped_column(JSON, default=list)
    log: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SynthCandidate(Base):
    """One generated example in the review queue: `pending` until a reviewer approves,
    edits (the edited answer is kept beside the teacher's) or rejects it; `filtered` when
    a filter dropped it (`reason`), kept so every count can be checked."""

    __tablename__ = "synth_candidates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("synth_batches.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(20))  # self_instruct, document_qa, evolved
    messages: Mapped[list[Any]] = mapped_column(JSON)  # system?, user, assistant (teacher's)
    origin: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # seeds / chunk used
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    edited: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    reviewer: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
