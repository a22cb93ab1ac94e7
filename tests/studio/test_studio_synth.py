"""The synth review queue in the studio, in real headless Chromium: an admin approves one
candidate, corrects another, rejects a third, sees the filtered ones with their reasons,
and exports the accepted ones as a dataset version. Rendered drafts are escaped; an
annotator cannot reach the queue."""

from __future__ import annotations

from pathlib import Path

from tuneloop import api, feedback, registry
from tuneloop.data import synth
from tuneloop.studio.app import create_app

from conftest import browser_page, screenshot, serving_in_thread, studio_login

EVIL = "<script>alert(1)</script>"


def _row(pos: int, question: str, answer: str) -> dict:
    return {
        "kind": "sft",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": question},
                     {"role": "assistant", "content": answer}],
        "synth": {"position": pos, "method": "document_qa",
                  "chunk": "help.md § Shipping (chunk 1)"},
    }  # fmt: skip


def _batch() -> int:
    kept = [
        _row(0, "Do you ship to Peru?", "No, we ship only to France and Spain."),
        _row(1, "How long is the kettle warranty?", "Kettles have a 5-year warranty."),
        _row(2, f"Tell me a joke {EVIL}", f"Sure {EVIL}"),
    ]
    dropped = [(_row(3, "Hi", "x"), "synth_clean: question too short")]
    log = [{"step": "synth_clean", "rows_in": 4, "rows_out": 3,
            "dropped": {"question too short": 1}}]  # fmt: skip
    return synth.create_batch("support-synth", "smollm2-135m-instruct", {}, None,
                              [{"source": "help.md"}], log, kept, dropped)  # fmt: skip


def test_an_admin_reviews_a_synth_batch_in_a_browser(tmp_path: Path) -> None:
    _, admin_pw = feedback.ensure_admin()
    _, annotator_pw = feedback.create_user("ann")
    bid = _batch()
    with serving_in_thread(create_app()) as url:
        s, _ = studio_login(url, "ann", annotator_pw)
        assert s.get(f"{url}/synth").status_code == 403
        assert s.get(f"{url}/synth/{bid}").status_code == 403
        raw = studio_login(url, "admin", admin_pw)[0].get(f"{url}/synth/{bid}").text
        assert EVIL not in raw and "Sure &lt;script&gt;" in raw  # drafts are escaped
        with browser_page() as page:
            page.goto(url + "/")
            page.fill("#name", "admin")
            page.fill("#password", admin_pw)
            page.click("button[type=submit]")
            page.wait_for_selector("#whoami")
            page.click("nav a:has-text('Synthetic data')")
            page.wait_for_selector("#batches")
            page.click(f"#batches a[href='/synth/{bid}']")
            page.wait_for_selector("#filters")
            assert "question too short: 1" in page.inner_text("#filters")
            ids = [c["id"] for c in api.synth_candidates(bid, "pending")]
            screenshot(page, "studio-synth.png", tmp_path)

            page.click(f"#c{ids[0]} button[value=approve]")
            page.wait_for_selector(f"#c{ids[1]}")
            assert page.locator(f"#c{ids[0]}").count() == 0  # left the pending list
            page.fill(f"#c{ids[1]} textarea[name=answer]", "Kettles have a 3-year warranty.")
            page.click(f"#c{ids[1]} button[value=edit]")
            page.wait_for_selector(f"#c{ids[2]}")
            page.click(f"#c{ids[2]} button[value=reject]")
            page.wait_for_selector("text=No pending candidates.")
            page.click("#tabs a:has-text('filtered')")
            page.wait_for_selector("text=synth_clean: question too short")
            assert page.locator("button[value=approve]").count() == 0  # filtered: not approvable
            page.click("#export")
            page.wait_for_url("**/datasets/*")
            dataset_id = int(page.url.rsplit("/", 1)[1])
    by_status = {c["id"]: c["status"] for c in api.synth_candidates(bid)}
    assert [by_status[i] for i in ids] == ["approved", "edited", "rejected"]
    edited = next(c for c in api.synth_candidates(bid, "edited"))
    assert (
        edited["edited_answer"] == "Kettles have a 3-year warranty."
        and edited["reviewer"] == "admin"
    )
    rows = api.dataset_rows(dataset_id)
    assert [r["messages"][-1]["content"] for r in rows] == [
        "No, we ship only to France and Spain.", "Kettles have a 3-year warranty."
    ]  # fmt: skip
    assert registry.get_dataset(dataset_id).meta["synth_batch"] == bid
    actions = [e["action"] for e in feedback.audit_log()]
    assert {"synth approve", "synth edit", "synth reject", "synth export"} <= set(actions)
