"""Public functions for writing and reading registry records.

The CLI, the studio and Python users all go through these; nothing touches tables directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from tuneloop import __version__
from tuneloop.config.home import db_url
from tuneloop.errors import NotFound, RegistryError
from tuneloop.registry.db import database_error, session_scope, transaction
from tuneloop.registry.tables import (
    ApiKey,
    Dataset,
    EvalExample,
    EvalResult,
    Feedback,
    JudgeCall,
    ModelRecord,
    Run,
    RunDataset,
    RunMetric,
    TrafficRecord,
    utcnow,
)


def content_hash(rows: Iterable[Any]) -> str:
    """SHA-256 of the rows as canonical JSON: equal content gives an equal hash.

    Takes any iterable, so a caller streaming rows in batches hashes without holding them.
    """
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the git checkout holding `path` (default: tuneloop's own source)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=path or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


VERSION_ATTEMPTS = 50
"""How often `register_dataset` retries when another writer took the version it chose."""


def dataset_source(path: str) -> str:
    """What versions of a file share by default: its resolved path (`~` expanded)."""
    return str(Path(path).expanduser().resolve())


def _source_key(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def register_dataset(
    name: str,
    rows: list[Any] | None,
    path: str,
    fmt: str,
    meta: dict[str, Any] | None = None,
    parent_id: int | None = None,
    *,
    digest: str | None = None,
    num_rows: int | None = None,
    source: str | None = None,
) -> Dataset:
    """Record a dataset version; identical content from the same source reuses the version.

    `source` is what the versions share: by default the resolved `path`, so two files
    that merely share a name are two datasets; a caller with a name the user chose passes
    e.g. `source="name:support"`. A derived dataset (`parent_id` given, e.g. a curated
    split) is by default a version of "`name` made from the parent's source". Changed
    content becomes version N+1 whose parent is version N, unless `parent_id` names it.
    A caller that streamed its rows passes `rows=None` with their `digest` (`content_hash`)
    and `num_rows` instead.

    Version numbers are safe with concurrent writers (several processes, SQLite or
    PostgreSQL): a writer whose number was taken meanwhile re-reads and tries the next.
    """
    if rows is not None:
        digest, num_rows = content_hash(rows), len(rows)
    if digest is None or num_rows is None:
        raise ValueError("register_dataset needs rows, or both digest and num_rows")
    url = db_url()
    if source is None:
        source = dataset_source(path) if parent_id is None else None
    for _ in range(VERSION_ATTEMPTS):
        version = 0
        try:
            with transaction(url) as s:
                if source is None:  # derived: the parent's lineage, then this name
                    parent = s.get(Dataset, parent_id)
                    if parent is None:
                        raise NotFound(f"no dataset with id {parent_id} (the parent)")
                    source = f"{parent.source}#{name}"
                key = _source_key(source)
                latest = s.scalars(
                    select(Dataset)
                    .where(Dataset.source_key == key)
                    .order_by(Dataset.version.desc())
                    .limit(1)
                ).first()
                if latest is not None and latest.content_hash == digest:
                    return latest
                version = (latest.version + 1) if latest else 1
                previous = latest.id if latest is not None else None
                record = Dataset(
                    name=name,
                    source=source,
                    source_key=key,
                    version=version,
                    content_hash=digest,
                    parent_id=parent_id if parent_id is not None else previous,
                    path=path,
                    format=fmt,
                    num_rows=num_rows,
                    meta=meta or {},
                )
                s.add(record)
                s.flush()
                return record
        except IntegrityError as err:
            if not _version_taken(url, _source_key(source or ""), version):
                raise database_error(err, url) from None
            time.sleep(random.uniform(0.0, 0.02))  # let the other writer commit, then re-read
        except SQLAlchemyError as err:
            raise database_error(err, url) from None
    raise RegistryError(
        f"could not record a new version of dataset {name!r}: {VERSION_ATTEMPTS} attempts "
        "lost to concurrent writers; try again"
    )


def _version_taken(url: str, key: str, version: int) -> bool:
    """Whether another writer holds (source, version): the only conflict worth a retry."""
    if not version:
        return False
    with session_scope(url) as s:
        found = s.scalar(
            select(Dataset.id).where(Dataset.source_key == key, Dataset.version == version)
        )
        return found is not None


def list_datasets() -> list[Dataset]:
    with session_scope() as s:
        return list(s.scalars(select(Dataset).order_by(Dataset.id)))


def get_dataset(dataset_id: int) -> Dataset:
    with session_scope() as s:
        record = s.get(Dataset, dataset_id)
        if record is None:
            raise NotFound(f"no dataset with id {dataset_id} (see `tuneloop data ls`)")
        return record


def _this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat_at": utcnow()}


def start_run(
    name: str,
    kind: str,
    recipe: dict[str, Any] | None = None,
    base_model: str | None = None,
    run_dir: str | None = None,
    datasets: dict[str, int] | None = None,
) -> Run:
    """Create a run in status `running`, stamped with package version, git commit and the
    process (host, pid) doing it."""
    with session_scope() as s:
        run = Run(
            name=name,
            kind=kind,
            status="running",
            base_model=base_model,
            recipe=recipe or {},
            metrics={},
            timings={},
            run_dir=run_dir,
            git_commit=git_commit(),
            package_version=__version__,
            **_this_process(),
        )
        s.add(run)
        s.flush()
        for role, dataset_id in (datasets or {}).items():
            s.add(RunDataset(run_id=run.id, dataset_id=dataset_id, role=role))
        return run


def claim_run(run_id: int) -> Run:
    """Mark the run `running` in this process (a resume, or a launched worker): host, pid
    and heartbeat become this process's, the old error and end time are cleared."""
    return update_run(run_id, status="running", error=None, finished_at=None, **_this_process())


def heartbeat(run_id: int) -> None:
    """Note that the run's process is alive now (a no-op for a run no longer running)."""
    with session_scope() as s:
        s.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == "running")
            .values(heartbeat_at=utcnow())
        )


STALE_AFTER = timedelta(minutes=10)
"""A running run on another host whose heartbeat is older than this is taken as dead.

Training beats at every log step (default every 5 steps), far more often than this.
"""


def run_status(run: Run, now: datetime | None = None) -> str:
    """The run's status as a user should see it: a `running` run whose process is gone is
    `interrupted`.

    On this host the recorded pid tells (a process killed by `kill -9` or a power loss never
    recorded its end); on another host, a heartbeat older than `STALE_AFTER` does. A run
    recorded before processes were (no pid) keeps its stored status.
    """
    if run.status != "running" or run.pid is None:
        return run.status
    if run.host == socket.gethostname():
        return "running" if pid_alive(run.pid) else "interrupted"
    beat = run.heartbeat_at or run.created_at
    return "interrupted" if (now or utcnow()) - beat > STALE_AFTER else "running"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host and is not a zombie (dead, unreaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal test is all there is
    return state not in ("Z", "X")


def link_datasets(run_id: int, datasets: dict[str, int]) -> None:
    """Record which dataset versions a run used (role -> dataset id); existing links stay."""
    with session_scope() as s:
        for role, dataset_id in datasets.items():
            if s.get(RunDataset, (run_id, dataset_id, role)) is None:
                s.add(RunDataset(run_id=run_id, dataset_id=dataset_id, role=role))


def update_run(run_id: int, **fields: Any) -> Run:
    """Set fields on a run; `metrics` and `timings` are merged into what is there."""
    with session_scope() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise NotFound(f"no run with id {run_id}")
        for key, value in fields.items():
            if key in ("metrics", "timings"):
                value = {**getattr(run, key), **value}
            setattr(run, key, value)
        if fields.get("status") in ("completed", "failed", "interrupted"):
            run.finished_at = utcnow()
        return run


def add_run_metrics(run_id: int, values: dict[str, Any]) -> None:
    """Record one metrics entry of a run (it must carry its "step"); it also beats the
    run's heartbeat.

    Entries after this step are removed first: they can only exist if the run was resumed
    from an earlier checkpoint, and the resumed curve replaces them.
    """
    from sqlalchemy import delete

    step = int(values["step"])
    with session_scope() as s:
        s.execute(delete(RunMetric).where(RunMetric.run_id == run_id, RunMetric.step > step))
        s.add(RunMetric(run_id=run_id, step=step, values=values))
        # a log entry is proof of life: the heartbeat rides in the same transaction, free
        s.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == "running")
            .values(heartbeat_at=utcnow())
        )


def run_metrics(run_id: int) -> list[dict[str, Any]]:
    """A run's metrics entries in step order (training log lines and validations)."""
    with session_scope() as s:
        query = select(RunMetric).where(RunMetric.run_id == run_id).order_by(RunMetric.id)
        return [m.values for m in s.scalars(query)]


def get_run(run_id: int) -> Run:
    """A run with its dataset links loaded."""
    with session_scope() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise NotFound(f"no run with id {run_id} (see `tuneloop runs list`)")
        for link in run.datasets:
            _ = link.dataset
        return run


def list_runs(limit: int = 50, kind: str | None = None) -> list[Run]:
    with session_scope() as s:
        query = select(Run).order_by(Run.id.desc()).limit(limit)
        if kind:
            query = query.where(Run.kind == kind)
        return list(s.scalars(query))


def add_model(
    name: str,
    kind: str,
    path: str,
    base_model: str | None = None,
    run_id: int | None = None,
    step: int | None = None,
    meta: dict[str, Any] | None = None,
) -> ModelRecord:
    """Record a model artifact (base, adapter, full, checkpoint)."""
    with session_scope() as s:
        record = ModelRecord(
            name=name,
            kind=kind,
            path=path,
            base_model=base_model,
            run_id=run_id,
            step=step,
            meta=meta or {},
        )
        s.add(record)
        s.flush()
        return record


def models_for_run(run_id: int) -> list[ModelRecord]:
    with session_scope() as s:
        return list(
            s.scalars(
                select(ModelRecord).where(ModelRecord.run_id == run_id).order_by(ModelRecord.id)
            )
        )


def add_eval(
    model_ref: str,
    metrics: dict[str, float],
    examples: list[dict[str, Any]],
    settings: dict[str, Any] | None = None,
    run_id: int | None = None,
    dataset_id: int | None = None,
    seconds: float | None = None,
) -> EvalResult:
    """Store aggregate metrics and every per-example output and score."""
    with session_scope() as s:
        result = EvalResult(
            model_ref=model_ref,
            run_id=run_id,
            dataset_id=dataset_id,
            metrics=metrics,
            settings=settings or {},
            seconds=seconds,
        )
        s.add(result)
        s.flush()
        s.add_all(
            EvalExample(
                eval_id=result.id,
                index=i,
                prompt=ex["prompt"],
                reference=ex["reference"],
                prediction=ex["prediction"],
                scores=ex.get("scores", {}),
            )
            for i, ex in enumerate(examples)
        )
        return result


def evals_for_run(run_id: int) -> list[EvalResult]:
    with session_scope() as s:
        return list(
            s.scalars(select(EvalResult).where(EvalResult.run_id == run_id).order_by(EvalResult.id))
        )


def eval_examples(eval_id: int) -> list[EvalExample]:
    with session_scope() as s:
        return list(
            s.scalars(
                select(EvalExample)
                .where(EvalExample.eval_id == eval_id)
                .order_by(EvalExample.index)
            )
        )


def judge_call_key(judge: str, request: dict[str, Any]) -> str:
    """The cache key of one judge request (sha256 of the judge and the canonical request)."""
    blob = json.dumps({"judge": judge, "request": request}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def cached_judge_calls(keys: list[str]) -> dict[str, str]:
    """The stored responses among `keys` (key -> response)."""
    if not keys:
        return {}
    with session_scope() as s:
        found = s.scalars(select(JudgeCall).where(JudgeCall.key.in_(keys)))
        return {c.key: c.response for c in found}


def store_judge_calls(judge: str, calls: list[tuple[str, dict[str, Any], str]]) -> None:
    """Store (key, request, response) triples of one judge; existing keys are kept."""
    if not calls:
        return
    with session_scope() as s:
        have = set(
            s.scalars(select(JudgeCall.key).where(JudgeCall.key.in_([k for k, _, _ in calls])))
        )
        for key, request, response in calls:
            if key not in have:
                s.add(JudgeCall(key=key, judge=judge, request=request, response=response))
                have.add(key)


def add_traffic(records: list[dict[str, Any]], url: str | None = None) -> None:
    """Store served requests (dicts of `TrafficRecord` columns) in one transaction; a
    request id already stored is skipped (a retried batch never duplicates)."""
    if not records:
        return
    with session_scope(url) as s:
        ids = [r["request_id"] for r in records]
        have = set(
            s.scalars(select(TrafficRecord.request_id).where(TrafficRecord.request_id.in_(ids)))
        )
        for r in records:
            if r["request_id"] not in have:
                s.add(TrafficRecord(**r))
                have.add(r["request_id"])


def get_traffic(request_id: str) -> TrafficRecord | None:
    with session_scope() as s:
        return s.scalars(
            select(TrafficRecord).where(TrafficRecord.request_id == request_id)
        ).first()


def list_traffic(
    since: datetime | None = None, model: str | None = None, limit: int | None = None
) -> list[TrafficRecord]:
    """Logged requests, oldest first (since: created at or after; model: the name asked)."""
    query = select(TrafficRecord).order_by(TrafficRecord.id)
    if since is not None:
        query = query.where(TrafficRecord.created_at >= since)
    if model is not None:
        query = query.where(TrafficRecord.model == model)
    if limit is not None:
        query = query.limit(limit)
    with session_scope() as s:
        return list(s.scalars(query))


def add_feedback(
    request_id: str,
    rating: int | None = None,
    comment: str | None = None,
    correction: str | None = None,
    key_id: str | None = None,
) -> Feedback:
    """Feedback on a logged response; the request must be in the traffic log."""
    with session_scope() as s:
        known = s.scalars(
            select(TrafficRecord.id).where(TrafficRecord.request_id == request_id)
        ).first()
        if known is None:
            raise NotFound(f"no logged request {request_id!r}")
        record = Feedback(
            request_id=request_id,
            rating=rating,
            comment=comment,
            correction=correction,
            key_id=key_id,
        )
        s.add(record)
        s.flush()
        s.refresh(record)
        return record


def feedback_for(request_ids: list[str] | None = None) -> list[Feedback]:
    """Feedback records, oldest first (all, or those on these requests)."""
    query = select(Feedback).order_by(Feedback.id)
    if request_ids is not None:
        query = query.where(Feedback.request_id.in_(request_ids))
    with session_scope() as s:
        return list(s.scalars(query))


def add_api_key(key_id: str, name: str, scope: str, hash: str) -> ApiKey:
    """Store a key's hash; a name an active key already has is refused."""
    with session_scope() as s:
        taken = s.scalars(
            select(ApiKey.id).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
        ).first()
        if taken is not None:
            raise RegistryError(f"the registry already has a key named {name!r}; revoke it first")
        record = ApiKey(key_id=key_id, name=name, scope=scope, hash=hash)
        s.add(record)
        try:
            s.flush()
        except IntegrityError:
            raise RegistryError(f"key id {key_id!r} is taken") from None
        s.refresh(record)
        s.expunge(record)
        return record


def active_api_keys() -> list[ApiKey]:
    """The keys not revoked, oldest first."""
    with session_scope() as s:
        rows = list(
            s.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None)).order_by(ApiKey.id))
        )
        for row in rows:
            s.expunge(row)
        return rows


def revoke_api_key(which: str) -> ApiKey:
    """Revoke the active key with this id or name (the record stays, marked revoked)."""
    with session_scope() as s:
        hits = list(
            s.scalars(
                select(ApiKey).where(
                    ApiKey.revoked_at.is_(None), (ApiKey.key_id == which) | (ApiKey.name == which)
                )
            )
        )
        if not hits:
            raise RegistryError(f"the registry has no active key with id or name {which!r}")
        now = utcnow()
        for hit in hits:
            hit.revoked_at = now
        s.flush()
        s.expunge(hits[0])
        return hits[0]
