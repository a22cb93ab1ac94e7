"""`tuneloop iterate` and `rollback` against a real server: corrections from the traffic
log become the next dataset, a candidate is trained and gated against production, promoted
by hot swap only when the gate passes, and rolled back."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneloop import registry
from tuneloop.config import recipe_from_dict
from tuneloop.errors import TuneloopError
from tuneloop.training import train

from conftest import chat, serving_in_thread, write_jsonl


def _post(url: str, body: dict, key: str) -> dict:
    req = urllib.request.Request(
        url,
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


@pytest.fixture
def loop(tiny_model: Path, tmp_path: Path) -> Iterator[dict]:
    from tuneloop.serving import create_app
    from tuneloop.serving.auth import create_key

    rows = [chat(f"Where is order {i}?", "It ships today.") for i in range(12)]
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", rows[:4])
    (tmp_path / "suite.yaml").write_text(
        "name: orders\ntasks:\n  - name: orders\n    data: eval.jsonl\n"
        "    metrics: [rouge_l]\n    max_new_tokens: 4\n    batch_size: 4\n"
    )
    recipe = {
        "name": "orders",
        "model": str(tiny_model),
        "data": {"train": str(train_file), "validation_split": 0.25, "max_length": 64},
        "adapter": {"type": "lora", "r": 4, "alpha": 8},
        "training": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-2},
        "output_dir": str(tmp_path / "runs"),
    }
    production = f"run:{train(recipe_from_dict(recipe)).run_id}"
    keys = tmp_path / "keys.jsonl"
    user, _ = create_key(keys, "app")
    admin, _ = create_key(keys, "ops", "admin")
    app = create_app(str(tiny_model), name="base", keys=str(keys), adapters={"orders": production})
    with serving_in_thread(app) as url:
        yield _with_a_correction(url, user, admin, production, recipe, tmp_path, eval_file)


def _with_a_correction(
    url: str, user: str, admin: str, production: str, recipe: dict, tmp_path: Path, eval_file: Path
) -> dict:
    """One logged answer with a user's correction on it; what the tests need to know."""
    reply = _post(
        f"{url}/v1/chat/completions",
        {"model": "orders", "messages": [{"role": "user", "content": "Where is order 99?"}],
         "max_tokens": 4},
        user,
    )  # fmt: skip
    _post(f"{url}/v1/feedback", {"id": reply["id"], "correction": "Order 99 ships Monday."}, user)
    return {
        "url": url, "admin": admin, "production": production, "recipe": recipe,
        "suite": str(tmp_path / "suite.yaml"), "out": tmp_path / "iterate", "eval": eval_file,
    }  # fmt: skip


def _serving(url: str, admin: str) -> str:
    req = urllib.request.Request(
        f"{url}/v1/admin/adapters", headers={"Authorization": f"Bearer {admin}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        (adapter,) = json.loads(resp.read())["adapters"]
    return adapter["ref"]


def test_a_failed_gate_keeps_production_and_a_passed_one_promotes_then_rolls_back(
    loop: dict,
) -> None:
    from tuneloop.api import iterate, rollback

    recipe = recipe_from_dict(loop["recipe"])
    common = {"serving": loop["url"], "adapter": "orders", "suite": loop["suite"],
              "admin_key": loop["admin"]}  # fmt: skip
    refused = iterate(recipe, gate="orders.rouge_l>=2", out=loop["out"] / "a", **common)
    assert refused["promoted"] is False and "orders.rouge_l" in refused["reason"]
    assert _serving(loop["url"], loop["admin"]) == loop["production"]
    # the next dataset: the training rows plus the one correction, a child version
    assert refused["corrections"] == 1
    next_rows = (loop["out"] / "a" / "next_train.jsonl").read_text().splitlines()
    assert len(next_rows) == 13
    assert json.loads(next_rows[-1])["messages"][-1]["content"] == "Order 99 ships Monday."
    dataset = registry.get_dataset(refused["dataset"])
    assert dataset.parent_id == refused["parent_dataset"]
    assert dataset.meta["corrections"] == 1
    # the candidate's training reused these versions: one record per file, not two
    train_file = str(Path(loop["recipe"]["data"]["train"]).resolve())
    for source in (train_file, str((loop["out"] / "a" / "next_train.jsonl").resolve())):
        assert len([d for d in registry.list_datasets() if d.source == source]) == 1, source

    promoted = iterate(recipe, gate="orders.rouge_l>=0", out=loop["out"] / "b", **common)
    assert promoted["promoted"] is True
    assert _serving(loop["url"], loop["admin"]) == promoted["candidate"]
    saved = json.loads((loop["out"] / "b" / "iterate.json").read_text())
    assert saved["production"] == loop["production"] and saved["candidate"] == promoted["candidate"]
    (recorded,) = [r for r in registry.list_runs(kind="iterate") if r.id == promoted["run_id"]]
    assert recorded.status == "completed" and recorded.recipe["promoted"] is True

    back = rollback(loop["url"], "orders", admin_key=loop["admin"])
    assert back == {**back, "from": promoted["candidate"], "to": loop["production"]}
    assert _serving(loop["url"], loop["admin"]) == loop["production"]
    with pytest.raises(TuneloopError, match="nothing to roll back"):
        rollback(loop["url"], "orders", admin_key=loop["admin"])


def test_iterate_needs_an_admin_key_and_a_well_formed_gate(loop: dict) -> None:
    from tuneloop.api import iterate

    recipe = recipe_from_dict(loop["recipe"])
    common = {"serving": loop["url"], "adapter": "orders", "suite": loop["suite"]}
    with pytest.raises(TuneloopError, match="TUNELOOP_ADMIN_KEY"):
        iterate(recipe, gate="orders.rouge_l>=0", out=loop["out"], **common)
    with pytest.raises(TuneloopError, match="expected KEY OP NUMBER"):
        iterate(recipe, gate="rouge_l is good", out=loop["out"], admin_key=loop["admin"], **common)
    with pytest.raises(TuneloopError, match="no adapter 'nope'"):
        iterate(
            recipe, gate="orders.rouge_l>=0", out=loop["out"], admin_key=loop["admin"],
            serving=loop["url"], adapter="nope", suite=loop["suite"],
        )  # fmt: skip
