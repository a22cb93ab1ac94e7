"""The feedback functions the studio's pages call: tasks from evaluations and files, blind
randomised sides stored in the item's own order, overlap, stale edits, agreement, exports
with lineage (and training on one), the human leaderboard, and several annotators writing
at once on PostgreSQL."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from tuneloop import feedback, registry
from tuneloop.errors import Conflict, Forbidden, NotFound, TuneloopError

from conftest import use_postgres, write_jsonl

PAIRS = [
    {"prompt": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}
    for i in range(6)
]


def _people(*names: str, role: str = "annotator") -> list[feedback.User]:
    return [feedback.create_user(n, role)[0] for n in names]


def _pairs_file(tmp_path: Path, rows: list[dict] | None = None) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", rows or PAIRS)


def _do_all(task_id: int, user: feedback.User, answer) -> int:
    """Take items until none is left, answering each with answer(view) -> value."""
    done = 0
    while (item := feedback.next_item(task_id, user)) is not None:
        view = feedback.item_view(task_id, item, user)
        feedback.save_response(task_id, item, user, answer(view), view["version"], submit=True)
        done += 1
    return done


def _pick_good(view: dict) -> dict:
    side = "a" if view["answers"][0]["text"].startswith("good") else "b"
    return {"choice": side}


def test_admin_is_created_once_with_a_random_password() -> None:
    made = feedback.ensure_admin()
    assert made is not None
    user, password = made
    assert user.role == "admin" and len(password) >= 12
    assert feedback.ensure_admin() is None  # never a second one, never a reset
    assert feedback.verify_login("admin", password) == user
    assert feedback.verify_login("admin", password + "x") is None
    assert feedback.verify_login("nobody", password) is None
    with pytest.raises(TuneloopError, match="at least 12"):
        feedback.create_user("short", password="abc")
    with pytest.raises(Conflict, match="already exists"):
        feedback.create_user("admin")
    feedback.disable_user("admin")
    assert feedback.verify_login("admin", password) is None


def test_blind_compare_randomises_sides_and_stores_item_order(tmp_path: Path) -> None:
    alice, bob = _people("alice", "bob")
    task = feedback.create_task("pairs", "compare", [str(_pairs_file(tmp_path))], overlap=2)
    assert (task.items, task.overlap, task.config["blind"]) == (6, 2, True)
    shown_first = []
    for user in (alice, bob):
        while (item := feedback.next_item(task.id, user)) is not None:
            view = feedback.item_view(task.id, item, user)
            assert all("model" not in a for a in view["answers"])  # blind: no model names
            shown_first.append(view["answers"][0]["text"].startswith("good"))
            feedback.save_response(task.id, item, user, _pick_good(view), view["version"], True)
    # 12 views: each side must have come first sometimes (chance of failing: 2 / 4096)
    assert 0 < sum(shown_first) < 12
    info = feedback.get_task(task.id)
    assert (info.complete, info.submitted, info.drafts) == (6, 12, 0)
    # whatever side each saw, every stored verdict is "answer 0 (chosen) wins"
    agreement = feedback.task_agreement(task.id)["choice"]
    assert agreement["percent_agreement"] == 1.0 and agreement["units"] == 6
    board = feedback.human_leaderboard([task.id])
    assert [r["model"] for r in board["leaderboard"]] == ["chosen", "rejected"]
    assert board["games"] == 12 and board["leaderboard"][0]["wins"] == 12


def test_overlap_completes_items_and_refuses_a_third(tmp_path: Path) -> None:
    alice, bob, carol = _people("alice", "bob", "carol")
    task = feedback.create_task("pairs", "compare", [str(_pairs_file(tmp_path))], overlap=2)
    assert _do_all(task.id, alice, _pick_good) == 6
    assert _do_all(task.id, bob, _pick_good) == 6
    assert feedback.next_item(task.id, carol) is None  # every item has its two
    # an item someone else's draft holds is not handed out beyond the overlap
    t2 = feedback.create_task("one", "compare", [str(_pairs_file(tmp_path, PAIRS[:1]))])
    assert feedback.next_item(t2.id, alice) is not None
    assert feedback.next_item(t2.id, bob) is None


def test_stale_edit_is_refused_and_nothing_overwritten(tmp_path: Path) -> None:
    (alice,) = _people("alice")
    task = feedback.create_task("pairs", "compare", [str(_pairs_file(tmp_path))])
    item = feedback.next_item(task.id, alice)
    view = feedback.item_view(task.id, item, alice)
    first = feedback.save_response(task.id, item, alice, {"choice": "a"}, view["version"])
    assert first == {"version": view["version"] + 1, "status": "draft"}
    with pytest.raises(Conflict, match="changed since you loaded it"):  # a second tab
        feedback.save_response(task.id, item, alice, {"choice": "b"}, view["version"])
    again = feedback.item_view(task.id, item, alice)
    assert again["value"]["choice"] == "a" and again["version"] == first["version"]
    # bad input names the field and changes nothing
    with pytest.raises(TuneloopError, match="choice must be one of"):
        feedback.save_response(task.id, item, alice, {"choice": "c"}, again["version"], True)
    with pytest.raises(TuneloopError, match="choice must be one of"):
        feedback.save_response(task.id, item, alice, {}, again["version"], submit=True)
    log = feedback.audit_log("response")
    assert [e["action"] for e in log] == ["save", "take"]  # newest first
    assert log[0]["before"]["version"] == 1 and log[0]["after"]["value"]["winner"] in (0, 1)


def test_roles_and_blindness_are_enforced(tmp_path: Path) -> None:
    (alice, bob), (viewer,) = _people("alice", "bob"), _people("vera", role="viewer")
    admin = feedback.ensure_admin()[0]
    task = feedback.create_task(
        "pairs", "compare", [str(_pairs_file(tmp_path))], annotators=["alice"]
    )
    with pytest.raises(Forbidden, match="cannot annotate"):
        feedback.next_item(task.id, viewer)
    with pytest.raises(Forbidden, match="assigned to alice"):
        feedback.next_item(task.id, bob)
    item = feedback.next_item(task.id, alice)
    with pytest.raises(Forbidden, match="not assigned"):
        feedback.item_view(task.id, item, bob)
    with pytest.raises(Forbidden, match="only admins"):
        feedback.item_responses(task.id, item, alice)
    assert "model" in feedback.item_view(task.id, item, admin)["answers"][0]
    info = feedback.get_task(task.id)
    assert feedback.visible_to(info, alice).source == {} and info.source["sources"]
    assert feedback.visible_to(info, admin) is info
    with pytest.raises(NotFound):
        feedback.item_view(task.id, 9999, alice)
    with pytest.raises(NotFound, match="unknown"):
        feedback.create_task("x", "compare", [str(_pairs_file(tmp_path))], annotators=["unknown"])


def test_task_from_two_evaluations_and_checks_on_sources(tmp_path: Path) -> None:
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    base = registry.add_eval(
        "base-model",
        {},
        [{"prompt": p, "reference": "r", "prediction": f"base {i}"} for i, p in enumerate(prompts)],
    )
    tuned = registry.add_eval(
        "run:7",
        {},
        [
            {"prompt": p, "reference": "r", "prediction": f"tuned {i}"}
            for i, p in enumerate(prompts)
        ],
    )
    task = feedback.create_task("ab", "compare", [f"eval:{base.id}", f"eval:{tuned.id}"])
    admin = feedback.ensure_admin()[0]
    item = feedback.next_item(task.id, admin)
    view = feedback.item_view(task.id, item, admin)
    assert sorted(a["model"] for a in view["answers"]) == ["base-model", "run:7"]
    assert [e["id"] for e in feedback.recent_evals()] == [tuned.id, base.id]
    other = registry.add_eval("m", {}, [{"prompt": prompts[0], "reference": "", "prediction": ""}])
    with pytest.raises(TuneloopError, match="same prompts"):
        feedback.create_task("bad", "compare", [f"eval:{base.id}", f"eval:{other.id}"])
    with pytest.raises(TuneloopError, match="exactly 2 answer"):
        feedback.create_task("bad", "compare", [f"eval:{base.id}"])
    with pytest.raises(TuneloopError, match="at least 3"):
        feedback.create_task("bad", "rank", [f"eval:{base.id}", f"eval:{tuned.id}"])
    with pytest.raises(NotFound):
        feedback.create_task("bad", "rate", ["eval:999"])


def test_rate_and_rank_exports_and_agreement(tmp_path: Path) -> None:
    alice, bob = _people("alice", "bob")
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]
    task = feedback.create_task(
        "rate", "rate", [str(_pairs_file(tmp_path, rows))], overlap=2, criteria=["accuracy"]
    )

    def rate(view: dict, generous: int) -> dict:
        scores = [5 if a["text"].startswith("good") else 1 for a in view["answers"]]
        return {
            "ratings": [{"accuracy": min(5, s + generous)} for s in scores],
            "flags": [["hallucination"] if s == 1 else [] for s in scores],
        }

    _do_all(task.id, alice, lambda v: rate(v, 0))
    _do_all(task.id, bob, lambda v: rate(v, 1))  # bob is one point kinder to bad answers
    agreement = feedback.task_agreement(task.id)
    assert agreement["accuracy"]["level"] == "ordinal" and agreement["accuracy"]["units"] == 8
    assert agreement["flag:hallucination"]["percent_agreement"] == 1.0
    pairs = feedback.export_task(task.id, "preference")
    lines = [json.loads(x) for x in Path(pairs.path).read_text().splitlines()]
    assert len(lines) == 4 and all(r["chosen"].startswith("good") for r in lines)
    assert lines[0]["margin"] == pytest.approx((5 - 1.5) / 4)
    labels = feedback.export_task(task.id, "kto")
    kto = [json.loads(x) for x in Path(labels.path).read_text().splitlines()]
    assert sorted(r["label"] for r in kto) == [False] * 4 + [True] * 4
    with pytest.raises(TuneloopError, match="no sft rows"):
        feedback.export_task(task.id, "sft")
    # an admin's resolution of a rated item overrides the votes (indices arrive as text)
    admin = feedback.ensure_admin()[0]
    first_item = feedback.disagreements(task.id, admin) or None
    items = sorted(pairs.items)
    feedback.resolve(task.id, items[0], {"mean_score": {"0": 1, "1": 5}}, admin)
    with pytest.raises(TuneloopError, match="scores 1-5"):
        feedback.resolve(task.id, items[0], {"mean_score": {"0": 9}}, admin)
    flipped = [
        json.loads(x)
        for x in Path(feedback.export_task(task.id, "preference").path).read_text().splitlines()
    ]
    assert flipped[0]["chosen"].startswith("bad") and flipped[0]["margin"] == 1.0
    assert first_item is None  # bob was kinder, but never two points apart

    three = [
        {"prompt": [{"role": "user", "content": f"q{i}"}], "reference": "", "prediction": p}
        for i, p in enumerate(["best", "mid", "worst"])
    ]
    evals = [
        registry.add_eval(f"m{j}", {}, [dict(three[j], prompt=three[0]["prompt"])])
        for j in range(3)
    ]
    rank = feedback.create_task("rank", "rank", [f"eval:{e.id}" for e in evals])
    order = {"best": 0, "mid": 1, "worst": 2}
    taken = feedback.next_item(rank.id, alice)
    for bad in (["a", 1, 2], [0, 1], [0, 0, 1], [True, 1, 2]):  # a 400, never a crash
        with pytest.raises(TuneloopError, match="order all 3 answers"):
            feedback.save_response(rank.id, taken, alice, {"ranking": bad}, 1)
    _do_all(
        rank.id,
        alice,
        lambda v: {"ranking": sorted(range(3), key=lambda pos: order[v["answers"][pos]["text"]])},
    )
    ranked = [
        json.loads(x)
        for x in Path(feedback.export_task(rank.id, "preference").path).read_text().splitlines()
    ]
    assert {(r["chosen"], r["rejected"]) for r in ranked} == {
        ("best", "mid"),
        ("best", "worst"),
        ("mid", "worst"),
    }
    board = feedback.human_leaderboard([rank.id])["leaderboard"]
    assert [r["model"] for r in board] == ["m0", "m1", "m2"]


def test_corrections_export_with_lineage_and_train(tmp_path: Path, tiny_model: Path) -> None:
    """The export is a dataset version that names its task; SFT trains on it as is."""
    from tuneloop.api import get_run, train

    alice, bob = _people("alice", "bob")
    admin = feedback.ensure_admin()[0]
    sft = [
        {
            "messages": [
                {"role": "user", "content": f"say {w}"},
                {"role": "assistant", "content": "no"},
            ]
        }
        for w in ("apple", "river", "stone")
    ]
    source = write_jsonl(tmp_path / "answers.jsonl", sft)
    task = feedback.create_task("fix", "correct", [str(source)], overlap=2)
    _do_all(task.id, alice, lambda v: {"correction": v["prompt"][-1]["content"][4:]})
    _do_all(task.id, bob, lambda v: {"correction": v["prompt"][-1]["content"][4:] + "!"})
    assert len(feedback.disagreements(task.id, admin)) == 3
    first = feedback.disagreements(task.id, admin)[0]
    feedback.resolve(task.id, first["item_id"], {"correction": "APPLE"}, admin)
    with pytest.raises(Forbidden):
        feedback.resolve(task.id, first["item_id"], {"correction": "x"}, alice)
    done = feedback.export_task(task.id, "sft")
    rows = [json.loads(x) for x in Path(done.path).read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in rows] == ["APPLE", "river", "stone"]
    record = registry.get_dataset(done.dataset_id)
    assert record.meta["studio_task"] == task.id and record.meta["items"] == done.items
    assert record.source == f"studio:task:{task.id}:sft" and record.num_rows == 3
    # the same outcome again is the same version; the file behind --out is kept
    assert feedback.export_task(task.id, "sft").dataset_id == done.dataset_id
    kept = tmp_path / "mine.jsonl"
    kept.write_text("keep me")
    with pytest.raises(TuneloopError, match="exists"):
        feedback.export_task(task.id, "sft", out=kept)
    assert kept.read_text() == "keep me"
    assert feedback.export_file(task.id, done.dataset_id) == Path(done.path)
    with pytest.raises(NotFound):
        feedback.export_file(task.id + 1, done.dataset_id)

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "from-studio",
                "model": str(tiny_model),
                "data": {"train": f"dataset:{done.dataset_id}", "max_length": 64},
                "adapter": {"type": "lora", "r": 4, "alpha": 8},
                "training": {"max_steps": 2, "batch_size": 2},
                "output_dir": str(tmp_path / "runs"),
            }
        )
    )
    result = train(recipe)
    assert result.status == "completed"
    used = get_run(result.id).datasets
    assert {"role": "train", "id": done.dataset_id} in [
        {"role": d["role"], "id": d["id"]} for d in used
    ], used


def _save_all_at_once(task_id: int, users: list[feedback.User]) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(len(users))

    def work(user: feedback.User) -> None:
        try:
            start.wait()
            _do_all(task_id, user, _pick_good)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return errors


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_several_annotators_at_once_lose_nothing(
    database: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch
) -> None:
    from tuneloop.registry import db

    if database == "postgresql":
        use_postgres(request, monkeypatch)
    users = _people(*[f"annotator{i}" for i in range(4)])
    rows = [dict(p, prompt=f"{p['prompt']} {k}") for k in range(5) for p in PAIRS]  # 30 items
    task = feedback.create_task("busy", "compare", [str(_pairs_file(tmp_path, rows))], overlap=3)
    errors = _save_all_at_once(task.id, users)
    assert not errors, errors
    info = feedback.get_task(task.id)
    assert (info.items, info.complete, info.submitted, info.drafts) == (30, 30, 90, 0)
    assert sum(e["submitted"] for e in info.by_annotator.values()) == 90
    actions = [e["action"] for e in feedback.audit_log("response", limit=1000)]
    assert actions.count("take") == actions.count("submit") == 90
    if database == "postgresql":
        db._engine_for.cache_clear()


def test_a_judge_beside_the_people(tmp_path: Path, tiny_model: Path) -> None:
    """The judge's verdicts on a compare task become a leaderboard of the same fit, with
    its agreement and kappa against the annotators' majority, stored for the page."""
    (alice,) = _people("alice")
    task = feedback.create_task("pairs", "compare", [str(_pairs_file(tmp_path, PAIRS[:3]))])
    _do_all(task.id, alice, _pick_good)
    out = feedback.judge_task(task.id, str(tiny_model))
    assert out["items"] == 3 and out["judged_by_people"] == 3
    assert sum(out["verdicts"].values()) == 3
    # the people always said "answer 0": agreement is the judge's share of "a" verdicts
    assert out["agreement"] == pytest.approx(out["verdicts"]["a"] / 3)
    assert feedback.get_task(task.id).config["judge"]["kappa"] == out["kappa"]
    assert {r["model"] for r in out["leaderboard"]} <= {"chosen", "rejected"}
    rank = feedback.create_task("r", "rate", [str(_pairs_file(tmp_path, PAIRS[:1]))])
    with pytest.raises(TuneloopError, match="a judge compares pairs"):
        feedback.judge_task(rank.id, str(tiny_model))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_audit_log_refuses_updates_and_deletes(
    database: str, request: pytest.FixtureRequest, monkeypatch
) -> None:
    from sqlalchemy.exc import DBAPIError

    from tuneloop.registry import db

    if database == "postgresql":
        use_postgres(request, monkeypatch)
    feedback.create_user("alice")
    engine = registry.get_engine()
    for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    assert [e["actor"] for e in feedback.audit_log()] == ["cli"]
    if database == "postgresql":
        db._engine_for.cache_clear()


def test_a_draft_whose_item_others_completed_is_let_go(tmp_path: Path, monkeypatch) -> None:
    """A draft left past ABANDONED gives its place away; when the item then completes, the
    next item is handed out instead of the one that can no longer be submitted."""
    from datetime import timedelta

    from tuneloop.feedback import work

    alice, bob = _people("alice", "bob")
    task = feedback.create_task("one", "compare", [str(_pairs_file(tmp_path, PAIRS[:2]))])
    first = feedback.next_item(task.id, alice)
    monkeypatch.setattr(work, "ABANDONED", timedelta(seconds=-1))  # every draft is stale
    assert feedback.next_item(task.id, bob) == first  # alice's place went to bob
    view = feedback.item_view(task.id, first, bob)
    feedback.save_response(task.id, first, bob, _pick_good(view), view["version"], True)
    second = feedback.next_item(task.id, alice)
    assert second is not None and second != first
    with pytest.raises(Conflict, match="completed by others"):
        feedback.save_response(task.id, first, alice, {"choice": "a"}, 1, submit=True)
    assert feedback.get_task(task.id).by_annotator["alice"]["drafts"] == 1  # the new one
