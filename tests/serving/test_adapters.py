"""Several LoRA adapters over one base in one server: per-request choice, mixed batches,
hot swap, removal and traffic splits through the admin routes."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tuneloop import registry
from tuneloop.config import recipe_from_dict
from tuneloop.training import train

from conftest import serving_in_thread, ticket_run_recipe

QUESTIONS = ["the printer is jammed", "my invoice is wrong", "reset my password please"]


def _call(base: str, method: str, path: str, body: object | None, key: str) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{base}{path}",
        json.dumps(body).encode() if body is not None else None,
        {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _ask(base: str, key: str, model: str, text: str) -> str:
    status, reply = _call(
        base,
        "POST",
        "/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 6},
        key,
    )
    assert status == 200, reply
    return reply["choices"][0]["message"]["content"]


def _scramble(run_dir: Path, seed: int) -> None:
    """Give the adapter large random LoRA weights, so its answers surely differ from the
    base's and the other run's (two training steps on a random model barely move them)."""
    import torch
    from safetensors.torch import load_file, save_file

    (path,) = run_dir.rglob("adapter_model.safetensors")
    weights = load_file(path)
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in weights.items():
        if "lora_B" in name:
            weights[name] = torch.randn(tensor.shape, generator=gen) * 0.5
    save_file(weights, path)


@pytest.fixture
def runs(tiny_model: Path, tmp_path: Path) -> dict:
    """Two LoRA runs on the tiny model, trained hard enough to answer differently (in this
    test's registry, so per test)."""
    from tuneloop import Model

    out = {}
    for name, seed in (("first", 0), ("second", 1)):
        where = tmp_path / name
        where.mkdir()
        recipe = ticket_run_recipe(tiny_model, where, name, ["hardware", "billing", "accounts"])
        result = train(recipe_from_dict(recipe))
        _scramble(result.run_dir, seed)
        model = Model(f"run:{result.run_id}")
        out[name] = {"ref": f"run:{result.run_id}", "answers": model.generate(
            [[{"role": "user", "content": q}] for q in QUESTIONS], max_new_tokens=6
        )}  # fmt: skip
    plain = [[{"role": "user", "content": q}] for q in QUESTIONS]
    out["base"] = {"answers": Model(str(tiny_model)).generate(plain, max_new_tokens=6)}
    return out


@pytest.fixture
def server(tiny_model: Path, runs: dict, tmp_path: Path) -> Iterator[dict]:
    from tuneloop.serving import create_app
    from tuneloop.serving.auth import create_key

    keys = tmp_path / "keys.jsonl"
    user, _ = create_key(keys, "app")
    admin, _ = create_key(keys, "ops", "admin")
    app = create_app(
        str(tiny_model), name="base", keys=str(keys), adapters={"a": runs["first"]["ref"]}
    )
    with serving_in_thread(app) as url:
        yield {"base": url, "user": user, "admin": admin}


def test_each_name_answers_as_its_run_alone_even_in_one_batch(server: dict, runs: dict) -> None:
    base, key = server["base"], server["user"]
    _, listing = _call(base, "GET", "/v1/models", None, key)
    assert [m["id"] for m in listing["data"]] == ["base", "a"]
    # the two names, asked at once: rows of both share decoding steps
    jobs = [(name, q) for q in QUESTIONS for name in ("base", "a")]
    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(lambda j: _ask(base, key, *j), jobs))
    answers = dict(zip(jobs, got, strict=True))
    assert [answers[("a", q)] for q in QUESTIONS] == runs["first"]["answers"]
    assert [answers[("base", q)] for q in QUESTIONS] == runs["base"]["answers"]
    assert runs["first"]["answers"] != runs["base"]["answers"], runs  # the adapter matters


def test_admin_routes_swap_split_and_remove_adapters(server: dict, runs: dict) -> None:
    base, user, admin = server["base"], server["user"], server["admin"]
    body = {"name": "a", "ref": runs["second"]["ref"]}
    assert _call(base, "POST", "/v1/admin/adapters", body, user)[0] == 403
    status, listing = _call(base, "POST", "/v1/admin/adapters", body, admin)
    assert status == 200 and listing["adapters"][0]["ref"] == runs["second"]["ref"]
    # hot swap: the same name now answers with the second run's weights and prompting
    assert [_ask(base, user, "a", q) for q in QUESTIONS] == runs["second"]["answers"]
    # a canary: all of base's traffic to "a", then none
    status, _ = _call(
        base, "POST", "/v1/admin/split", {"model": "base", "candidate": "a", "share": 1.0}, admin
    )
    assert status == 200
    assert _ask(base, user, "base", QUESTIONS[0]) == runs["second"]["answers"][0]
    _call(base, "POST", "/v1/admin/split", {"model": "base", "candidate": "a", "share": 0}, admin)
    assert _ask(base, user, "base", QUESTIONS[0]) == runs["base"]["answers"][0]
    # bad requests are clear
    status, reply = _call(
        base, "POST", "/v1/admin/adapters", {"name": "b", "ref": "run:999"}, admin
    )
    assert status == 400 and "999" in reply["error"]["message"]
    taken = {"name": "base", "ref": runs["first"]["ref"]}
    status, reply = _call(base, "POST", "/v1/admin/adapters", taken, admin)
    assert status == 400 and "base model's name" in reply["error"]["message"]
    # removal: the name is gone, the base keeps answering
    assert _call(base, "DELETE", "/v1/admin/adapters/a", None, admin)[0] == 200
    status, reply = _call(
        base, "POST", "/v1/chat/completions",
        {"model": "a", "messages": [{"role": "user", "content": "x"}]}, user,
    )  # fmt: skip
    assert status == 404 and "'base'" in reply["error"]["message"]
    assert _call(base, "DELETE", "/v1/admin/adapters/a", None, admin)[0] == 404
    assert _ask(base, user, "base", QUESTIONS[1]) == runs["base"]["answers"][1]


def test_traffic_records_which_adapter_answered(server: dict, runs: dict) -> None:
    base, user, admin = server["base"], server["user"], server["admin"]
    _call(base, "POST", "/v1/admin/split", {"model": "base", "candidate": "a", "share": 1.0}, admin)
    _ask(base, user, "base", QUESTIONS[2])
    status, text = 0, ""
    req = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {user}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        status, text = resp.status, resp.read().decode()
    assert status == 200
    assert 'tuneloop_adapter_requests_total{adapter="a",status="200"} 1.0' in text
    deadline = time.time() + 10
    while not registry.list_traffic():
        assert time.time() < deadline
        time.sleep(0.2)
    (record,) = registry.list_traffic()
    assert record.model == "base" and record.served_by == runs["first"]["ref"]
