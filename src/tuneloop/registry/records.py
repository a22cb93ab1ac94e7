"""Public functions for writing and reading registry records.

The CLI, the studio and Python users all go through these; nothing touches tables directly.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tuneloop import __version__
from tuneloop.errors import RegistryError
from tuneloop.registry.db import session_scope
from tuneloop.registry.tables import (
    Dataset,
    EvalExample,
    EvalResult,
    JudgeCall,
    ModelRecord,
    Run,
    RunDataset,
    RunMetric,
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
) -> Dataset:
    """Record a dataset version; identical content under the same name reuses the version.

    A changed file with a known name becomes version N+1 whose parent is version N, unless
    `parent_id` names the parent explicitly (a curated dataset's parent is its raw input).
    A caller that streamed its rows passes `rows=None` with their `digest` (`content_hash`)
    and `num_rows` instead.
    """
    if rows is not None:
        digest, num_rows = content_hash(rows), len(rows)
    if digest is None or num_rows is None:
        raise ValueError("register_dataset needs rows, or both digest and num_rows")
    with session_scope() as s:
        latest = s.scalars(
            select(Dataset).where(Dataset.name == name).order_by(Dataset.version.desc()).limit(1)
        ).first()
        if latest is not None and latest.content_hash == digest:
            return latest
        record = Dataset(
            name=name,
            version=(latest.version + 1) if latest else 1,
            content_hash=digest,
            parent_id=parent_id if parent_id is not None else (latest.id if latest else None),
            path=path,
            format=fmt,
            num_rows=num_rows,
            meta=meta or {},
        )
        s.add(record)
        s.flush()
        return record


def list_datasets() -> list[Dataset]:
    with session_scope() as s:
        return list(s.scalars(select(Dataset).order_by(Dataset.id)))


def get_dataset(dataset_id: int) -> Dataset:
    with session_scope() as s:
        record = s.get(Dataset, dataset_id)
        if record is None:
            raise RegistryError(f"no dataset with id {dataset_id} (see `tuneloop data ls`)")
        return record


def start_run(
    name: str,
    kind: str,
    recipe: dict[str, Any] | None = None,
    base_model: str | None = None,
    run_dir: str | None = None,
    datasets: dict[str, int] | None = None,
) -> Run:
    """Create a run in status `running`, stamped with package version and git commit."""
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
        )
        s.add(run)
        s.flush()
        for role, dataset_id in (datasets or {}).items():
            s.add(RunDataset(run_id=run.id, dataset_id=dataset_id, role=role))
        return run


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
            raise RegistryError(f"no run with id {run_id}")
        for key, value in fields.items():
            if key in ("metrics", "timings"):
                value = {**getattr(run, key), **value}
            setattr(run, key, value)
        if fields.get("status") in ("completed", "failed", "interrupted"):
            run.finished_at = utcnow()
        return run


def add_run_metrics(run_id: int, values: dict[str, Any]) -> None:
    """Record one metrics entry of a run (it must carry its "step").

    Entries after this step are removed first: they can only exist if the run was resumed
    from an earlier checkpoint, and the resumed curve replaces them.
    """
    from sqlalchemy import delete

    step = int(values["step"])
    with session_scope() as s:
        s.execute(delete(RunMetric).where(RunMetric.run_id == run_id, RunMetric.step > step))
        s.add(RunMetric(run_id=run_id, step=step, values=values))


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
            raise RegistryError(f"no run with id {run_id} (see `tuneloop runs list`)")
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
