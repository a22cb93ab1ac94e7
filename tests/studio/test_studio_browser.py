"""The studio in real headless Chromium, as people use it: log in through the form, rate
three answers, compare two blind, rank three, correct one (keyboard shortcuts throughout),
a second annotator on the same items, a draft that survives a reload, agreement on the
admin's page, an export whose rows and lineage are checked. The screenshots in docs/ come
from here (TUNELOOP_SCREENSHOTS=1)."""

from __future__ import annotations

import json
from pathlib import Path

from tuneloop import feedback, registry
from tuneloop.studio.app import create_app

from conftest import browser_page, screenshot, serving_in_thread, write_jsonl

QUESTIONS = ["How do I reset my password?", "Where is my invoice?", "Can I change my plan?"]
GOOD = [
    "Open Settings > Security and choose Reset password; a link arrives by email.",
    "Invoices are under Billing > History; each one downloads as a PDF.",
    "Yes: Billing > Plan lets you switch at any time; the change is prorated.",
]
BAD = ["Try turning it off and on.", "No idea.", "Plans cannot be changed, ever."]


def _setup(tmp_path: Path) -> dict:
    _, admin_pw = feedback.ensure_admin()
    people = {"admin": admin_pw}
    for name in ("alice", "bob"):
        people[name] = feedback.create_user(name)[1]
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": q, "chosen": g, "rejected": b}
            for q, g, b in zip(QUESTIONS, GOOD, BAD, strict=True)
        ],
    )
    answers = write_jsonl(
        tmp_path / "answers.jsonl",
        [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": b}]}
            for q, b in zip(QUESTIONS, BAD, strict=True)
        ],
    )
    prompt = [{"role": "user", "content": QUESTIONS[0]}]
    evals = [
        registry.add_eval(model, {}, [{"prompt": prompt, "reference": "", "prediction": text}])
        for model, text in (("small", BAD[0]), ("tuned", GOOD[0]), ("base", "Ask support."))
    ]
    tasks = {
        "rate": feedback.create_task(
            "support answers", "rate", [str(answers)], criteria=["helpfulness", "accuracy"]
        ),
        "compare": feedback.create_task(
            "base vs tuned", "compare", [str(pairs)], overlap=2, limit=2
        ),
        "rank": feedback.create_task("three models", "rank", [f"eval:{e.id}" for e in evals]),
        "correct": feedback.create_task("fix answers", "correct", [str(answers)], limit=1),
    }
    return {"people": people, "tasks": tasks}


def _login(page, url: str, name: str, password: str) -> None:
    page.goto(url + "/")
    assert "/login" in page.url  # no session: the login page
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("#whoami")
    assert name in page.inner_text("#whoami")


def _logout(page) -> None:
    page.click("header button[type=submit]")
    page.wait_for_selector("#password")


def _submit(page) -> None:
    """Ctrl+Enter, then wait for the next page (the next item or the task page)."""
    before = page.url
    page.keyboard.press("Control+Enter")
    page.wait_for_function("u => window.location.href !== u", arg=before)
    page.wait_for_load_state()


def _tiny_run(tiny_model: Path, tmp_path: Path) -> int:
    """A few steps of LoRA on the tiny model, for the run page."""
    import yaml

    from tuneloop import api

    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": g}]}
        for q, g in zip(QUESTIONS * 3, GOOD * 3, strict=True)
    ]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "support-lora",
                "model": str(tiny_model),
                "data": {
                    "train": str(write_jsonl(tmp_path / "train.jsonl", rows)),
                    "max_length": 64,
                    "validation_split": 0.34,
                },
                "adapter": {"type": "lora", "r": 4, "alpha": 8},
                "training": {
                    "max_steps": 12,
                    "batch_size": 2,
                    "learning_rate": 0.01,
                    "logging_steps": 1,
                    "eval_steps": 3,
                },
                "output_dir": str(tmp_path / "runs"),
            }
        )
    )
    return api.train(recipe).id


def test_annotators_and_an_admin_in_a_browser(tmp_path: Path, tiny_model: Path) -> None:
    run_id = _tiny_run(tiny_model, tmp_path)
    setup = _setup(tmp_path)
    tasks, people = setup["tasks"], setup["people"]
    with serving_in_thread(create_app()) as url, browser_page() as page:
        _login(page, url, "alice", people["alice"])
        screenshot(page, "studio-tasks.png", tmp_path)

        # rate three answers: digits score the highlighted criterion, q flags it
        page.goto(f"{url}/tasks/{tasks['rate'].id}")
        page.click("#start")
        for i in range(3):
            page.wait_for_selector(".criteria .row.current")
            page.keyboard.press("2")  # helpfulness of the (bad) answer
            page.keyboard.press("1")  # accuracy
            page.keyboard.press("q")  # flag: hallucination
            if i == 0:
                page.fill("#comment", "does not answer the question")
                screenshot(page, "studio-rate.png", tmp_path)
            _submit(page)
        assert "Nothing left for you" in page.inner_text("#error")

        # compare two, blind: no model names on the page; a draft survives a reload
        page.goto(f"{url}/tasks/{tasks['compare'].id}")
        page.click("#start")
        page.wait_for_selector("#choices")
        body = page.inner_text("main")
        assert "chosen" not in body and "rejected" not in body
        good_side = "a" if "Settings" in page.inner_text("#answer-A") else "b"
        page.keyboard.press(good_side)
        page.wait_for_selector("#status.ok:has-text('draft saved')")
        page.reload()
        pressed = page.get_attribute(f"button[data-choice={good_side}]", "aria-pressed")
        assert pressed == "true"  # the draft came back from the server
        screenshot(page, "studio-compare.png", tmp_path)
        _submit(page)
        page.wait_for_selector("#choices")
        text_a = page.inner_text("#answer-A")
        page.keyboard.press("a" if any(g[:20] in text_a for g in GOOD) else "b")
        _submit(page)

        # rank three: letters best first (the last one goes last by itself)
        page.goto(f"{url}/tasks/{tasks['rank'].id}")
        page.click("#start")
        page.wait_for_selector("#ranking", state="attached")
        letters = {}
        for label in "ABC":
            text = page.inner_text(f"#answer-{label}")
            letters[
                "tuned" if GOOD[0][:20] in text else "base" if "Ask support" in text else "small"
            ] = label.lower()
        page.keyboard.press(letters["tuned"])
        page.keyboard.press(letters["base"])
        assert page.locator("#ranking li").count() == 3
        screenshot(page, "studio-rank.png", tmp_path)
        _submit(page)

        # correct one: edit the answer; the edit is the SFT example
        page.goto(f"{url}/tasks/{tasks['correct'].id}")
        page.click("#start")
        page.fill("#correction", GOOD[0])
        _submit(page)
        _logout(page)

        # a second annotator on the compare items (overlap 2), disagreeing on one
        _login(page, url, "bob", people["bob"])
        page.goto(f"{url}/")
        page.click(f"#annotate-{tasks['compare'].id}")  # from the task list
        for i in range(2):
            page.wait_for_selector("#choices")
            good = "a" if any(g[:20] in page.inner_text("#answer-A") for g in GOOD) else "b"
            page.keyboard.press(good if i == 0 else {"a": "b", "b": "a"}[good])
            _submit(page)
        _logout(page)

        # the admin: agreement, the disagreement, the leaderboard, the export
        _login(page, url, "admin", people["admin"])
        page.goto(f"{url}/tasks/{tasks['compare'].id}")
        assert "2 of 2 items complete" in page.inner_text("#progress")
        assert page.locator("#agreement tr").count() == 2  # header + "choice"
        assert page.locator("#leaderboard tr").count() == 3  # header + chosen + rejected
        assert page.locator("[id^=disagreement-]").count() == 1
        screenshot(page, "studio-task.png", tmp_path)
        page.click("[id^=disagreement-] button[value='0']")  # answer 0 (the good one) wins
        page.wait_for_selector("[id^=disagreement-] .ok")
        page.goto(f"{url}/runs/{run_id}")
        assert page.locator("#loss-curve polyline").count() == 2  # training and validation
        screenshot(page, "studio-run.png", tmp_path)
        page.goto(f"{url}/tasks/{tasks['compare'].id}")
        page.select_option("#export-kind", "preference")
        page.click("#export button[type=submit]")
        notice = page.inner_text("#exported")
        assert "Exported 2 rows" in notice

    dataset_id = int(notice.split("dataset:")[1].split()[0])
    record = registry.get_dataset(dataset_id)
    assert record.meta["studio_task"] == tasks["compare"].id and record.num_rows == 2
    rows = [json.loads(x) for x in Path(record.path).read_text().splitlines()]
    assert [r["chosen"] for r in rows] == GOOD[:2] and [r["rejected"] for r in rows] == BAD[:2]
    # alice and bob agreed on one item (margin 1), the admin resolved the other
    assert sorted(r["margin"] for r in rows) == [1.0, 1.0]
    rated = feedback.get_task(tasks["rate"].id)
    assert rated.complete == 3 and rated.by_annotator["alice"]["submitted"] == 3
    sft = feedback.export_task(tasks["correct"].id, "sft")
    first = json.loads(Path(sft.path).read_text().splitlines()[0])
    assert first["messages"][-1]["content"] == GOOD[0]
    ranked = feedback.human_leaderboard([tasks["rank"].id])["leaderboard"]
    assert [r["model"] for r in ranked] == ["tuned", "base", "small"]
    flags = feedback.task_agreement(tasks["rate"].id)
    assert set(flags) >= {"helpfulness", "accuracy", "flag:hallucination"}
