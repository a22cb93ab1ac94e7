from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from tuneloop import registry
from tuneloop.errors import RegistryError
from tuneloop.registry.tables import Base


def test_migrations_match_the_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    engine = create_engine(url)
    registry.migrate(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn)
        assert ctx.get_current_revision() == registry.head_revision()
        assert compare_metadata(ctx, Base.metadata) == []
    assert set(inspect(engine).get_table_names()) >= {
        "datasets",
        "runs",
        "run_datasets",
        "models",
        "eval_results",
        "eval_examples",
    }


def test_reopening_keeps_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "keep.db"
    url = f"sqlite:///{db}"
    monkeypatch.setenv("TUNELOOP_DB_URL", url)
    run = registry.start_run("keep", "train")
    registry.migrate(create_engine(url))  # a second migrate is a no-op, data intact
    assert registry.get_run(run.id).name == "keep"
    rows = sqlite3.connect(db).execute("select version_num from alembic_version").fetchall()
    assert rows == [(registry.head_revision(),)]


def test_db_url_env_is_respected(isolated_registry: str) -> None:
    registry.start_run("x", "train")
    path = Path(isolated_registry.removeprefix("sqlite:///"))
    count = sqlite3.connect(path).execute("select count(*) from runs").fetchone()[0]
    assert count == 1


def test_dataset_versions_and_parents() -> None:
    v1 = registry.register_dataset("support", [{"a": 1}], "/d.jsonl", "messages")
    same = registry.register_dataset("support", [{"a": 1}], "/d.jsonl", "messages")
    v2 = registry.register_dataset("support", [{"a": 2}], "/d.jsonl", "messages")
    other = registry.register_dataset("other", [{"a": 2}], "/o.jsonl", "messages")
    assert (v1.version, same.id, v2.version, v2.parent_id) == (1, v1.id, 2, v1.id)
    assert v1.content_hash != v2.content_hash and v2.content_hash == other.content_hash
    assert other.version == 1 and other.parent_id is None


def test_run_lifecycle_merges_metrics_and_links_datasets() -> None:
    ds = registry.register_dataset("d", [{"x": 1}], "/d", "messages")
    run = registry.start_run("r", "train", recipe={"k": 1}, datasets={"train": ds.id})
    assert run.status == "running" and run.package_version
    registry.update_run(run.id, metrics={"loss": 1.0}, timings={"a": 1.0})
    registry.update_run(run.id, metrics={"acc": 0.5}, status="completed")
    got = registry.get_run(run.id)
    assert got.metrics == {"loss": 1.0, "acc": 0.5}
    assert got.finished_at is not None and got.status == "completed"
    assert [(d.role, d.dataset.name) for d in got.datasets] == [("train", "d")]
    assert [r.id for r in registry.list_runs()] == [run.id]
    with pytest.raises(RegistryError, match="no run with id 999"):
        registry.get_run(999)


def test_eval_results_keep_every_example() -> None:
    run = registry.start_run("e", "eval")
    examples = [
        {
            "prompt": [{"role": "user", "content": f"q{i}"}],
            "reference": f"r{i}",
            "prediction": f"p{i}",
            "scores": {"rouge_l": i / 10},
        }
        for i in range(5)
    ]
    result = registry.add_eval("m", {"rouge_l": 0.2}, examples, run_id=run.id)
    stored = registry.eval_examples(result.id)
    assert [e.prediction for e in stored] == [f"p{i}" for i in range(5)]
    assert stored[3].scores == {"rouge_l": 0.3}
    assert registry.evals_for_run(run.id)[0].metrics == {"rouge_l": 0.2}
