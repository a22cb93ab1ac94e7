"""`tuneloop serve` as a real process, driven by the official `openai` client and raw HTTP:
keys, streaming, n, sampling, errors, a full queue, hung-up clients and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")

NAME = "tiny"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, key: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _start(model: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.cli", "serve", str(model), "--name", NAME,
         "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "server exited"
        try:
            if json.loads(_get(f"{base}/health")[1]).get("status") == "ok":
                return proc, base
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start")


def _open_post(base: str, path: str, body: dict, key: str | None = None) -> tuple[Any, Any]:
    """POST JSON and return the open connection and response, unread."""
    import http.client

    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request("POST", path, json.dumps(body), headers)
    return conn, conn.getresponse()


def _open_stream(base: str, body: dict, key: str | None = None) -> tuple[Any, Any]:
    """POST a chat completion and return the open connection and response, unread."""
    return _open_post(base, "/v1/chat/completions", body, key)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def _metric(base: str, key: str, name: str) -> float:
    status, text = _get(f"{base}/metrics", key)
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def keyed(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One server with a keys file: a user key and an admin key."""
    from tuneloop.serving.auth import create_key

    keys = tmp_path_factory.mktemp("keys") / "keys.jsonl"
    user, _ = create_key(keys, "alice")
    admin, _ = create_key(keys, "ops", "admin")
    proc, base = _start(tiny_model, "--keys", str(keys), "--max-batch", "4")
    yield {"base": base, "key": user, "admin": admin, "keys": keys, "proc": proc}
    _stop(proc)


def _client(server: dict, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server['base']}/v1", api_key=key or server["key"], max_retries=0, timeout=60
    )


def test_keys_guard_every_route_but_health(keyed: dict) -> None:
    base = keyed["base"]
    assert _get(f"{base}/health")[0] == 200
    for path in ("/v1/models", "/metrics", "/docs", "/openapi.json"):
        assert _get(f"{base}{path}")[0] == 401, path
        assert _get(f"{base}{path}", "tl-00000000-wrong")[0] == 401, path
    assert _get(f"{base}/v1/models", keyed["key"])[0] == 200
    # no interactive docs, even with a key
    assert _get(f"{base}/docs", keyed["key"])[0] == 404
    assert _get(f"{base}/openapi.json", keyed["key"])[0] == 404
    with pytest.raises(openai.AuthenticationError):
        _client(keyed, "tl-abc-nope").models.list()
    assert [m.id for m in _client(keyed).models.list()] == [NAME]
    # the keys file holds hashes only
    text = keyed["keys"].read_text()
    assert keyed["key"].split("-", 2)[2] not in text and "argon2" in text


def test_streaming_adds_up_to_the_plain_answer(keyed: dict) -> None:
    client = _client(keyed)
    messages = [{"role": "user", "content": "Tell me about your shipping policy."}]
    plain = client.chat.completions.create(model=NAME, messages=messages, max_tokens=24)
    pieces, usage, finish = [], None, None
    stream = client.chat.completions.create(
        model=NAME,
        messages=messages,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason
    assert usage is not None
    assert usage.prompt_tokens == plain.usage.prompt_tokens > 0
    assert usage.completion_tokens == plain.usage.completion_tokens > 0


def test_n_sampling_seed_stop_and_text_completions(keyed: dict) -> None:
    client = _client(keyed)
    messages = [{"role": "user", "content": "Say something."}]
    a = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=8, n=3, temperature=1.0, seed=7
    )
    b = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=8, n=3, temperature=1.0, seed=7
    )
    assert [c.index for c in a.choices] == [0, 1, 2]
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices]  # same seed, same samples
    # a different seed for each choice: three samples of a random model differ
    assert len({tuple(c.message.content) for c in a.choices}) > 1
    assert 3 <= a.usage.completion_tokens <= 3 * 8  # the three choices' tokens together
    text = client.completions.create(model=NAME, prompt="The order shipped", max_tokens=6)
    assert text.object == "text_completion" and text.choices[0].finish_reason in ("stop", "length")
    assert text.usage.prompt_tokens > 0
    # a stop string cuts the answer before it and finishes with "stop"
    full = client.completions.create(model=NAME, prompt="x", max_tokens=30)
    body = full.choices[0].text
    if len(body) > 6:
        cut = body[3:6]
        stopped = client.completions.create(model=NAME, prompt="x", max_tokens=30, stop=[cut])
        assert stopped.choices[0].text == body[: body.index(cut)].rstrip()
        assert stopped.choices[0].finish_reason == "stop"


def test_invalid_requests_are_openai_errors_with_the_numbers(keyed: dict) -> None:
    client = _client(keyed)
    with pytest.raises(openai.BadRequestError, match=r"prompt is \d+ tokens; .*context is 2048"):
        client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "word " * 5000}]
        )
    with pytest.raises(openai.BadRequestError, match="past this model's context"):
        client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2040
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    # the server is still fine
    ok = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_a_client_that_hangs_up_frees_its_rows_at_once(keyed: dict) -> None:
    """A stream asking for ~2,000 tokens, abandoned after its first chunk: the server drops
    the row within a second instead of decoding to the end."""
    base, key = keyed["base"], keyed["key"]
    body = {
        "model": NAME,
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 2000,
        "stream": True,
    }
    conn, resp = _open_stream(base, body, key)
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")
    assert _metric(base, key, "tuneloop_active_sequences") >= 1
    conn.close()
    deadline = time.time() + 5
    while _metric(base, key, "tuneloop_active_sequences") > 0:
        assert time.time() < deadline, "the abandoned stream is still decoding"
        time.sleep(0.1)
    # the same for a plain request whose client times out
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "go"}], max_tokens=2000
        )
    # its 2,000-token budget takes well over 5 s on the tiny model: freed long before
    deadline = time.time() + 5
    while _metric(base, key, "tuneloop_active_sequences") > 0:
        assert time.time() < deadline, "the abandoned request is still decoding"
        time.sleep(0.1)


def test_revoking_a_key_takes_effect_on_the_running_server(keyed: dict) -> None:
    from tuneloop.serving.auth import create_key, revoke_key

    key, _ = create_key(keyed["keys"], "temp")
    base = keyed["base"]
    deadline = time.time() + 5
    while _get(f"{base}/v1/models", key)[0] != 200:  # the file is re-read within a second
        assert time.time() < deadline
        time.sleep(0.2)
    revoke_key(keyed["keys"], "temp")
    deadline = time.time() + 5
    while _get(f"{base}/v1/models", key)[0] != 401:
        assert time.time() < deadline, "a revoked key still works"
        time.sleep(0.2)


def test_a_full_queue_answers_429_and_sigterm_drains_quickly(tiny_model: Path) -> None:
    """One row at a time and two waiting: a burst of long requests gets 429s with
    Retry-After, never a 5xx; SIGTERM then stops the server within seconds."""
    proc, base = _start(tiny_model, "--max-batch", "1", "--max-queue", "2", "--drain", "1")
    try:
        body = {"model": NAME, "messages": [{"role": "user", "content": "go"}], "max_tokens": 400}

        def one(_: int) -> tuple[int, str | None]:
            conn, resp = _open_stream(base, body)
            resp.read()
            conn.close()
            return resp.status, resp.getheader("Retry-After")

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        codes = [c for c, _ in results]
        assert 429 in codes and 200 in codes, codes
        assert all(c in (200, 429) for c in codes), codes
        assert all(int(ra) >= 1 for c, ra in results if c == 429)

        # a long request is running; SIGTERM: drained (1 s) and gone within a few seconds
        long = {**body, "max_tokens": 2000}
        started = threading.Event()

        def running() -> None:
            conn, resp = _open_stream(base, {**long, "stream": True})
            while resp.readline():
                started.set()
            conn.close()

        t = threading.Thread(target=running, daemon=True)
        t.start()
        assert started.wait(30)
        t0 = time.time()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
        assert time.time() - t0 < 10
    finally:
        _stop(proc)


def test_listening_beyond_loopback_without_keys_is_refused(tiny_model: Path) -> None:
    from conftest import assert_one_line_error, run_cli

    proc = run_cli("serve", str(tiny_model), "--host", "0.0.0.0", "--port", str(_free_port()))
    assert_one_line_error(proc, "no keys")


def test_keys_commands(tmp_path: Path) -> None:
    from conftest import run_cli

    keys = tmp_path / "keys.jsonl"
    made = run_cli("keys", "create", "--file", str(keys), "bob", "--admin")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("tl-") and key not in keys.read_text()
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    listed = json.loads(run_cli("keys", "list", "--file", str(keys), "--json").stdout)
    assert [(r["name"], r["scope"]) for r in listed] == [("bob", "admin")]
    assert run_cli("keys", "create", "--file", str(keys), "bob").returncode != 0
    assert run_cli("keys", "revoke", "--file", str(keys), "bob").returncode == 0
    assert json.loads(run_cli("keys", "list", "--file", str(keys), "--json").stdout) == []

    # without --file the keys live in the registry (this test's SQLite one)
    made = run_cli("keys", "create", "carol")
    assert made.returncode == 0 and "in the registry" in made.stderr, made.stderr
    listed = json.loads(run_cli("keys", "list", "--json").stdout)
    assert [(r["name"], r["scope"]) for r in listed] == [("carol", "user")]
    assert run_cli("keys", "create", "carol").returncode != 0  # one active key per name
    revoked = run_cli("keys", "revoke", listed[0]["id"])
    assert revoked.returncode == 0 and "carol" in revoked.stdout
    assert json.loads(run_cli("keys", "list", "--json").stdout) == []
    assert run_cli("keys", "create", "carol").returncode == 0  # the name is free again
    proc = run_cli("keys", "revoke", "nobody")
    assert proc.returncode != 0 and "no active key" in proc.stderr


def test_traffic_is_logged_redacted_and_takes_feedback(tiny_model: Path) -> None:
    """Every answer reaches the registry's traffic table (PII redacted with --redact-pii);
    POST /v1/feedback attaches a rating and a correction to a logged response."""
    from tuneloop import registry

    proc, base = _start(tiny_model, "--redact-pii")  # this test's registry (TUNELOOP_DB_URL)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        asked = "My email is jane.doe@example.com, where is my order?"
        reply = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": asked}], max_tokens=6
        )
        streamed = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
        (stream_id,) = {chunk.id for chunk in streamed}  # every chunk carries the id
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": "word " * 5000}]
            )

        def feedback(body: dict) -> tuple[int, dict]:
            conn, resp = _open_post(base, "/v1/feedback", body)
            out = json.loads(resp.read())
            conn.close()
            return resp.status, out

        status, out = feedback({"id": reply.id, "rating": "down", "correction": "It shipped."})
        assert status == 200 and out["rating"] == -1
        assert feedback({"id": "chatcmpl-nope", "rating": "up"})[0] == 404
        assert feedback({"id": reply.id})[0] == 400  # nothing to record
        assert feedback({"id": reply.id, "rating": "meh"})[0] == 400
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)  # the writer flushes on shutdown
    logged = {r.request_id: r for r in registry.list_traffic()}
    first = logged[reply.id]
    assert first.status == 200 and first.route == "/v1/chat/completions"
    assert first.messages == [
        {"role": "user", "content": asked.replace("jane.doe@example.com", "[EMAIL]")}
    ]
    assert first.answers == [reply.choices[0].message.content]
    assert first.prompt_tokens == reply.usage.prompt_tokens
    assert first.completion_tokens == reply.usage.completion_tokens
    assert first.latency_s > 0 and first.finish_reasons == [reply.choices[0].finish_reason]
    assert logged[stream_id].status == 200 and logged[stream_id].params["stream"] is True
    assert [r.status for r in logged.values()].count(400) == 1
    (fb,) = registry.feedback_for([reply.id])
    assert fb.rating == -1 and fb.correction == "It shipped."
