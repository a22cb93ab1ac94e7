"""The registry under real concurrent writers (two processes, SQLite and PostgreSQL), dataset
identity by source, and database failures reported as one line."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tuneloop import registry
from tuneloop.errors import RegistryError
from tuneloop.registry import db
from tuneloop.registry.tables import utcnow

PER_WRITER = 40

# Each writer registers PER_WRITER changed versions of one file, as fast as it can, after
# both are ready (a start file), so their read-then-insert steps interleave.
WRITER = """
import os, sys, time
from pathlib import Path
from tuneloop import registry
tag, go = sys.argv[1], Path(sys.argv[2])
registry.get_engine()
Path(str(go) + "." + tag).touch()
while not go.exists():
    time.sleep(0.001)
for k in range(int(sys.argv[3])):
    registry.register_dataset("shared", [{"writer": tag, "k": k}], "/data/shared.jsonl", "text")
"""


def _two_writers(url: str, tmp_path: Path) -> None:
    registry.get_engine(url)  # the schema exists before the writers race
    go = tmp_path / "go"
    env = {**os.environ, "TUNELOOP_DB_URL": url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, tag, str(go), str(PER_WRITER)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for tag in ("a", "b")
    ]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.{t}").exists() for t in "ab") and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    go.touch()
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    versions = [d for d in registry.list_datasets() if d.name == "shared"]
    assert sorted(d.version for d in versions) == list(range(1, 2 * PER_WRITER + 1))
    assert len({d.content_hash for d in versions}) == 2 * PER_WRITER  # none lost
    by_version = {d.version: d for d in versions}
    for v in range(2, 2 * PER_WRITER + 1):  # each version's parent is the one before it
        assert by_version[v].parent_id == by_version[v - 1].id


def test_two_processes_register_80_versions_on_sqlite(
    isolated_registry: str, tmp_path: Path
) -> None:
    _two_writers(isolated_registry, tmp_path)


def test_two_processes_register_80_versions_on_postgres(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_DB_URL", postgres_url)
    with create_engine(postgres_url).begin() as conn:  # a clean schema for this test
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    db._engine_for.cache_clear()
    _two_writers(postgres_url, tmp_path)


def test_files_that_share_a_name_are_different_datasets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a" / "tickets.jsonl", tmp_path / "b" / "tickets.jsonl"
    first = registry.register_dataset("tickets", [{"x": 1}], str(a), "text")
    other = registry.register_dataset("tickets", [{"x": 2}], str(b), "text")
    assert (first.version, other.version, other.parent_id) == (1, 1, None)
    assert other.source == str(b.resolve()) != first.source
    # a changed file at the same place is the next version, also through a relative path
    monkeypatch.chdir(tmp_path)
    changed = registry.register_dataset("tickets", [{"x": 3}], "a/tickets.jsonl", "text")
    assert (changed.version, changed.parent_id) == (2, first.id)
    # a name the user gives groups versions wherever the file is
    named = [
        registry.register_dataset("t", [{"x": i}], str(p), "text", source="name:support")
        for i, p in enumerate((a, b))
    ]
    assert [n.version for n in named] == [1, 2]
    # a curated split is a version of "this name made from that source"
    cur_a = registry.register_dataset("tickets-train", [{"y": 1}], "/h/1.parquet", "m",
                                      parent_id=first.id)  # fmt: skip
    cur_b = registry.register_dataset("tickets-train", [{"y": 2}], "/h/2.parquet", "m",
                                      parent_id=other.id)  # fmt: skip
    again = registry.register_dataset("tickets-train", [{"y": 3}], "/h/3.parquet", "m",
                                      parent_id=changed.id)  # fmt: skip
    assert (cur_a.version, cur_b.version, again.version) == (1, 1, 2)
    assert again.parent_id == changed.id and cur_a.source == f"{first.source}#tickets-train"


def test_migration_keeps_versions_recorded_by_name(tmp_path: Path) -> None:
    """A registry from before dataset sources keeps its version numbers, under the name."""
    from alembic import command

    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(db._alembic_config(conn), "0003")
    with sqlite3.connect(path) as conn:
        for version, where in ((1, "/a/t.jsonl"), (2, "/b/t.jsonl")):
            conn.execute(
                "insert into datasets (name, version, content_hash, path, format, num_rows,"
                " meta, created_at) values ('t', ?, ?, ?, 'text', 1, '{}', '2026-01-01')",
                (version, f"h{version}", where),
            )
    registry.migrate(engine)
    with sqlite3.connect(path) as conn:
        rows = conn.execute("select version, source from datasets order by id").fetchall()
    assert rows == [(1, "name:t"), (2, "name:t")]


def _one_line(err: pytest.ExceptionInfo[RegistryError]) -> str:
    message = str(err.value)
    assert "\n" not in message and "[SQL" not in message, message
    return message


def test_database_errors_are_one_line(
    isolated_registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = registry.start_run("r", "train")
    with pytest.raises(RegistryError) as err:  # a constraint: no such dataset
        registry.link_datasets(run.id, {"train": 999})
    assert "FOREIGN KEY constraint failed" in _one_line(err)

    locked = f"sqlite:///{tmp_path / 'locked.db'}"
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", 0)
    monkeypatch.setenv("TUNELOOP_DB_URL", locked)
    registry.get_engine()
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-write
    try:
        with pytest.raises(RegistryError) as err:
            registry.start_run("r", "train")
    finally:
        holder.close()
    assert "database is locked" in _one_line(err) and "locked.db" in str(err.value)

    monkeypatch.setenv("TUNELOOP_DB_URL", f"postgresql+psycopg://u:secret@/x?host={tmp_path}")
    with pytest.raises(RegistryError) as err:  # no server there
        registry.list_runs()
    assert "cannot open" in _one_line(err) and "secret" not in str(err.value)


def test_cli_reports_an_unreachable_database_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "TUNELOOP_DB_URL": f"postgresql+psycopg://u:pw@/x?host={tmp_path}"}
    proc = subprocess.run(
        [sys.executable, "-c", "from tuneloop.cli import main; main()", "runs", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(lines) == 1 and "cannot open registry database" in lines[0], proc.stderr


def test_run_status_tells_a_dead_process_from_a_live_one() -> None:
    run = registry.start_run("live", "train")
    assert (run.host, run.pid) == (socket.gethostname(), os.getpid())
    assert registry.run_status(run) == "running"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    registry.update_run(run.id, pid=dead.pid)
    assert registry.run_status(registry.get_run(run.id)) == "interrupted"
    # on another host only the heartbeat tells
    remote = registry.update_run(run.id, host="elsewhere", heartbeat_at=utcnow())
    assert registry.run_status(remote) == "running"
    later = utcnow() + registry.STALE_AFTER + timedelta(seconds=1)
    assert registry.run_status(remote, now=later) == "interrupted"
    time.sleep(0.01)
    registry.heartbeat(run.id)
    assert registry.get_run(run.id).heartbeat_at > remote.heartbeat_at
    # a recorded end wins; a run from before processes were recorded keeps its status
    registry.update_run(run.id, status="completed")
    assert registry.run_status(registry.get_run(run.id), now=later) == "completed"
    old = registry.update_run(registry.start_run("old", "train").id, pid=None, host=None)
    assert registry.run_status(old, now=later) == "running"


def _replica(model: Path, url: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    import json
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.cli", "serve", str(model), "--name", "m",
         "--port", str(port), *extra],
        env={**os.environ, "TUNELOOP_DB_URL": url},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "replica exited"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if json.loads(r.read())["status"] == "ok":
                    return proc, base
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("replica did not start")


def _post(base: str, path: str, body: dict, key: str | None = None) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(f"{base}{path}", json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_two_serving_replicas_share_one_postgres_registry(
    postgres_url: str, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas hold no state of their own: two `tuneloop serve --registry-keys` processes
    check keys against one PostgreSQL registry and log every request into it; feedback
    sent to either finds a request the other answered, and a key revoked once is refused by
    both within seconds."""
    from concurrent.futures import ThreadPoolExecutor

    from tuneloop.api import create_api_key, list_api_keys, revoke_api_key

    monkeypatch.setenv("TUNELOOP_DB_URL", postgres_url)
    with create_engine(postgres_url).begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    db._engine_for.cache_clear()
    registry.get_engine(postgres_url)  # the schema exists before the replicas start
    key, record = create_api_key(None, "app")
    assert [k["id"] for k in list_api_keys()] == [record["id"]]
    with create_engine(postgres_url).connect() as conn:  # the table holds a hash, not the key
        stored = conn.execute(text("SELECT hash FROM api_keys")).scalar_one()
    assert stored.startswith("$argon2") and key.split("-", 2)[2] not in stored
    replicas = [_replica(tiny_model, postgres_url, "--registry-keys") for _ in range(2)]
    try:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        assert _post(replicas[0][1], "/v1/chat/completions", body)[0] == 401
        targets = [replicas[i % 2][1] for i in range(40)]
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda b: _post(b, "/v1/chat/completions", body, key), targets))
        assert [s for s, _ in replies] == [200] * 40
        first_on_a = replies[0][1]["id"]
        status, out = _post(replicas[1][1], "/v1/feedback", {"id": first_on_a, "rating": "up"}, key)
        assert status == 200, out
        revoke_api_key(None, "app")
        deadline = time.monotonic() + 10
        refused: set[str] = set()
        while len(refused) < 2 and time.monotonic() < deadline:
            for _, base in replicas:
                if _post(base, "/v1/chat/completions", body, key)[0] == 401:
                    refused.add(base)
            time.sleep(0.2)
        assert len(refused) == 2, "a revoked key still works on a replica"
    finally:
        for proc, _ in replicas:
            proc.terminate()
        for proc, _ in replicas:
            proc.wait(30)
    logged = [r.request_id for r in registry.list_traffic() if r.status == 200]
    # each of the 40 once (requests sent while the revocation was on its way may add more)
    assert len(logged) == len(set(logged)) and {r["id"] for _, r in replies} <= set(logged)
    assert [f.request_id for f in registry.feedback_for()] == [first_on_a]
    assert list_api_keys() == []  # revoked keys are not listed; their record stays
