"""The studio over real HTTP (uvicorn on a loopback port): every route needs a session,
CSRF on every post, login rate limiting, path traversal refused, dataset content escaped,
roles and blindness, a stale edit answered 409, and the work flowing to an export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tuneloop import feedback
from tuneloop.studio.app import create_app

from conftest import serving_in_thread, studio_login, write_jsonl

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'
ROWS = [
    {"prompt": f"question {i}? {EVIL}", "chosen": f"good {i}", "rejected": f"bad {i} {EVIL}"}
    for i in range(3)
]


@pytest.fixture
def studio(tmp_path: Path) -> Iterator[dict]:
    _, admin_pw = feedback.ensure_admin()
    people = {"admin": admin_pw}
    for name, role in (("alice", "annotator"), ("bob", "annotator"), ("vera", "viewer")):
        people[name] = feedback.create_user(name, role)[1]
    source = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    task = feedback.create_task("pairs", "compare", [str(source)], overlap=2)
    app = create_app()
    with serving_in_thread(app) as url:
        yield {"url": url, "passwords": people, "task": task, "app": app}


def login(studio: dict, name: str) -> tuple[requests.Session, str]:
    """A logged-in client and its CSRF token."""
    return studio_login(studio["url"], name, studio["passwords"][name])


def test_every_route_needs_a_session(studio: dict) -> None:
    open_routes = {"/login", "/health", "/static/{name}"}
    checked = 0
    for route in studio["app"].routes:
        path = getattr(route, "path", None)
        if path is None or path in open_routes:
            continue
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        for method in route.methods - {"HEAD"}:
            r = requests.request(
                method, studio["url"] + concrete, allow_redirects=False, data={"x": "1"}
            )
            assert r.status_code in (401, 303), (method, path, r.status_code)
            if r.status_code == 303:
                assert r.headers["location"].startswith("/login"), (path, r.headers)
            checked += 1
    assert checked >= 20
    assert requests.get(studio["url"] + "/health").json() == {"status": "ok"}
    css = requests.get(studio["url"] + "/static/studio.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]


def test_login_needs_its_csrf_token_and_is_rate_limited(studio: dict) -> None:
    url = studio["url"]
    s = requests.Session()
    s.get(url + "/login")
    r = s.post(url + "/login", data={"name": "alice", "password": studio["passwords"]["alice"]})
    assert r.status_code == 403 and "CSRF" in r.text  # no token in the form
    token = re.search(r'name="csrf" value="([^"]+)"', s.get(url + "/login").text).group(1)
    for _ in range(5):
        r = s.post(url + "/login", data={"csrf": token, "name": "alice", "password": "wrong" * 3})
        assert r.status_code == 401 and "wrong name or password" in r.text
    right = {"csrf": token, "name": "alice", "password": studio["passwords"]["alice"]}
    r = s.post(url + "/login", data=right, allow_redirects=False)
    assert r.status_code == 429 and "too many failed logins" in r.text
    # this client address is locked out too, whatever name it tries next
    assert s.post(url + "/login", data={**right, "name": "bob"}).status_code == 429


def test_posts_without_the_csrf_token_are_refused(studio: dict) -> None:
    url, task = studio["url"], studio["task"]
    s, csrf = login(studio, "admin")
    # the session cookie: HttpOnly and SameSite=Strict (no page script reads it, no other
    # site's form sends it); Secure only over https, and this test server is plain http
    cookie = next(c for c in s.cookies if c.name == "tuneloop_studio")
    assert cookie.has_nonstandard_attr("HttpOnly") and not cookie.secure
    assert cookie.get_nonstandard_attr("SameSite").lower() == "strict"
    r = s.post(url + "/tasks", data={"name": "x", "kind": "compare", "sources": "eval:1"})
    assert r.status_code == 403 and "CSRF" in r.text
    assert s.post(f"{url}/api/tasks/{task.id}/next").status_code == 403  # no token
    item = s.post(f"{url}/api/tasks/{task.id}/next", headers={"X-CSRF-Token": csrf}).json()
    item = item["item_id"]
    body = {"value": {"choice": "a"}, "version": 1, "submit": True}
    r = s.post(f"{url}/api/tasks/{task.id}/items/{item}", json=body)
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    r = s.post(
        f"{url}/api/tasks/{task.id}/items/{item}", json=body, headers={"X-CSRF-Token": "forged"}
    )
    assert r.status_code == 403
    r = s.post(f"{url}/api/tasks/{task.id}/items/{item}", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["status"] == "submitted"
    assert s.post(url + "/logout", data={"x": "1"}).status_code == 403  # even logging out
    assert s.post(url + "/logout", data={"csrf": csrf}, allow_redirects=False).status_code == 303
    assert s.get(url + "/api/me").status_code == 401


TRAVERSALS = [
    "../app.py",
    "..%2Fapp.py",
    "%2e%2e%2fapp.py",
    "..%252Fapp.py",
    "%2Fetc%2Fpasswd",
    "....//....//etc/passwd",
    "..\\app.py",
    "%C2%B2",  # a digit to str.isdigit, not to int()
    "1%00",
]


def test_path_traversal_in_every_file_like_parameter(studio: dict, tmp_path: Path) -> None:
    url, task = studio["url"], studio["task"]
    s, csrf = login(studio, "admin")
    for evil in TRAVERSALS:
        for path in (
            f"/static/{evil}",
            f"/tasks/{task.id}/exports/{evil}",
            f"/tasks/{task.id}/exports/{evil}.jsonl",
            f"/tasks/{evil}",
            f"/api/tasks/{task.id}/items/{evil}",
            f"/runs/{evil}",
            f"/datasets/{evil}",
            f"/datasets/1?offset={evil}",
            f"/evals/{evil}",
            f"/jobs/{evil}",
            f"/api/jobs/{evil}/log",
        ):
            r = s.get(url + path, allow_redirects=False)
            assert r.status_code in (400, 404), (path, r.status_code)
            assert "root:" not in r.text and "def create_app" not in r.text
    # task sources from the web are registry references, never paths on the server
    secret = write_jsonl(tmp_path / "secret.jsonl", ROWS)
    for source in (str(secret), "../../etc/passwd", "/etc/passwd", "dataset:../1", "eval:1/.."):
        r = s.post(
            url + "/tasks",
            data={"csrf": csrf, "name": "x", "kind": "compare", "sources": source, "overlap": "1"},
        )
        assert r.status_code == 400 and "eval:ID, run:ID or dataset:ID" in r.text, source
    assert len(feedback.list_tasks()) == 1


def test_dataset_content_is_escaped_and_cannot_run(studio: dict) -> None:
    url, task = studio["url"], studio["task"]
    s, csrf = login(studio, "alice")
    assert s.get(f"{url}/tasks/{task.id}/annotate").status_code == 405  # taking is a POST
    r = s.post(f"{url}/tasks/{task.id}/annotate", data={"csrf": csrf})
    assert r.status_code == 200 and "question" in r.text
    assert "<script>alert" not in r.text and "<img src=x" not in r.text
    assert "&lt;script&gt;alert" in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    # the item's data block is JSON that cannot close its script element
    block = re.search(r'id="item-data">(.*?)</script>', r.text, re.S).group(1)
    assert "</script" not in block and json.loads(block)["kind"] == "compare"


def test_roles_blindness_and_a_stale_edit(studio: dict) -> None:
    url, task = studio["url"], studio["task"]
    alice, alice_csrf = login(studio, "alice")
    bob, bob_csrf = login(studio, "bob")
    vera, vera_csrf = login(studio, "vera")
    # a viewer reads but cannot write
    assert vera.get(f"{url}/tasks/{task.id}").status_code == 200
    next_url = f"{url}/api/tasks/{task.id}/next"
    assert vera.post(next_url, headers={"X-CSRF-Token": vera_csrf}).status_code == 403
    r = vera.post(
        url + "/tasks",
        data={"csrf": vera_csrf, "name": "x", "kind": "compare", "sources": "eval:1"},
    )
    assert r.status_code == 403
    assert vera.get(url + "/users").status_code == 403
    # an annotator sees no model names and not another's item or responses
    item = alice.post(next_url, headers={"X-CSRF-Token": alice_csrf}).json()["item_id"]
    view = alice.get(f"{url}/api/tasks/{task.id}/items/{item}").json()
    assert all(set(a) == {"label", "text"} for a in view["answers"])
    assert "chosen" not in alice.get(f"{url}/tasks/{task.id}/items/{item}").text
    save = f"{url}/api/tasks/{task.id}/items/{item}"
    h = {"X-CSRF-Token": alice_csrf}
    first = alice.post(save, json={"value": {"choice": "a"}, "version": 1}, headers=h)
    assert first.status_code == 200 and first.json()["version"] == 2
    # bob takes the item's second place and sees nothing of alice's work
    assert bob.post(next_url, headers={"X-CSRF-Token": bob_csrf}).json()["item_id"] == item
    assert bob.get(save).json()["value"] == {}
    untaken = max(i for i in range(1, 4) if i != item)
    assert bob.get(f"{url}/api/tasks/{task.id}/items/{untaken}").status_code == 403
    assert alice.get(f"{url}/api/tasks/{task.id}/items/{item}/responses").status_code == 403
    # nothing else names the models or carries the others' votes
    for path in (
        "/runs",
        "/datasets",
        "/evals/1",
        "/leaderboard",
        "/api/leaderboard",
        f"/tasks/{task.id}/exports/1.jsonl",
        "/runs/1",
        "/datasets/1",
    ):
        assert alice.get(url + path).status_code == 403, path
    listed = alice.get(url + "/api/tasks").json()[0]
    assert listed["source"] == {} and "pairs.jsonl" not in json.dumps(listed)
    detail = alice.get(f"{url}/api/tasks/{task.id}").json()
    assert detail["agreement"] == {} and detail["task"]["source"] == {}
    task_page = alice.get(f"{url}/tasks/{task.id}").text
    assert "Agreement" not in task_page and "chosen" not in task_page
    # a stale edit: a second tab saved first, so this tab's save is refused
    stale = alice.post(save, json={"value": {"choice": "b"}, "version": 1}, headers=h)
    assert stale.status_code == 409 and "reload" in stale.json()["error"]
    assert alice.get(save).json()["value"]["choice"] == "a"
    bad = alice.post(save, json={"value": {"choice": "maybe"}, "version": 2}, headers=h)
    assert bad.status_code == 400 and "choice must be one of" in bad.json()["error"]
    assert alice.post(save, data="not json", headers=h).status_code == 400


def test_two_annotators_then_agreement_export_and_download(studio: dict, tiny_model: Path) -> None:
    url, task = studio["url"], studio["task"]
    for name in ("alice", "bob"):
        s, csrf = login(studio, name)
        take = f"{url}/api/tasks/{task.id}/next"
        while (item := s.post(take, headers={"X-CSRF-Token": csrf}).json()["item_id"]) is not None:
            view = s.get(f"{url}/api/tasks/{task.id}/items/{item}").json()
            good = "a" if view["answers"][0]["text"].startswith("good") else "b"
            r = s.post(
                f"{url}/api/tasks/{task.id}/items/{item}",
                json={"value": {"choice": good}, "version": view["version"], "submit": True},
                headers={"X-CSRF-Token": csrf},
            )
            assert r.status_code == 200, r.text
    admin, csrf = login(studio, "admin")
    info = admin.get(f"{url}/api/tasks/{task.id}").json()
    assert info["task"]["complete"] == 3 and info["agreement"]["choice"]["percent_agreement"] == 1
    feedback.judge_task(task.id, str(tiny_model))  # the judge's side, shown beside
    page = admin.get(f"{url}/tasks/{task.id}").text
    assert "Krippendorff" in page and "rejected" in page  # admins see the models
    assert 'id="judge-leaderboard"' in page and 'id="judge-kappa"' in page
    r = admin.post(f"{url}/tasks/{task.id}/export", data={"csrf": csrf, "kind": "preference"})
    assert r.status_code == 200 and "Exported 3 rows" in r.text
    dataset = int(re.search(r"dataset:(\d+)", r.text).group(1))
    download = admin.get(f"{url}/tasks/{task.id}/exports/{dataset}.jsonl")
    rows = [json.loads(x) for x in download.text.splitlines()]
    assert [r["chosen"] for r in rows] == ["good 0", "good 1", "good 2"]
    assert download.headers["content-disposition"].startswith("attachment")
    assert admin.get(f"{url}/tasks/{task.id + 1}/exports/{dataset}.jsonl").status_code == 404
    board = admin.get(url + "/api/leaderboard").json()["leaderboard"]
    assert [b["model"] for b in board] == ["chosen", "rejected"]
    actions = [e["action"] for e in feedback.audit_log(limit=50)]
    assert actions.count("submit") == 6 and "export" in actions


def test_a_huge_body_is_refused_before_it_is_read(studio: dict) -> None:
    url = studio["url"]
    r = requests.post(
        url + "/login",
        data=b"x" * 2_000_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400 and "larger than" in r.text


def test_tuneloop_studio_prints_a_first_password_that_logs_in(tmp_path: Path) -> None:
    """The command a new user runs: a real `tuneloop studio` process on loopback; the
    password it prints once logs in; a second start prints none."""
    import os
    import socket
    import subprocess
    import sys
    import time

    def start() -> tuple[subprocess.Popen, str, int]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuneloop.cli", "studio", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ.copy(),
        )
        lines = []
        while not (lines and lines[-1].startswith("tuneloop studio on")):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        deadline = time.time() + 30
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except requests.ConnectionError:
                assert time.time() < deadline
                time.sleep(0.2)
        return proc, "".join(lines), port

    proc, out, port = start()
    try:
        password = re.search(r"with password (\S+)", out).group(1)
        s, _ = studio_login(f"http://127.0.0.1:{port}", "admin", password)
        assert "Feedback tasks" in s.get(f"http://127.0.0.1:{port}/").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proc, out, _ = start()
    proc.terminate()
    proc.wait(timeout=30)
    assert "password" not in out  # no second admin, no reset
