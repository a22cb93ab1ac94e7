"""`tuneloop monitor` and `tuneloop traffic export` on a real registry of logged traffic,
with the bundled MiniLM embeddings."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tuneloop import registry
from tuneloop.errors import TuneloopError

from conftest import browser_page, chat, run_cli, screenshot, write_jsonl

CITIES = ["Boston", "Toronto", "Denver", "Seattle", "Austin", "Chicago"]
SUPPORT = [
    "Where is my order {n}?",
    "My package {n} has not arrived yet",
    "Can I return the shoes from order {n}?",
    "How long does shipping to {c} take?",
    "I was charged twice for order {n}",
    "Please change the delivery address for order {n} to {c}",
]
OFF = [
    "Give me a recipe for {d} with garlic",
    "Write a short poem about the {d} moon",
    "Who won the football world cup in {n}?",
    "Explain quantum entanglement to a {d} child",
]
DISHES = ["lasagna", "curry", "risotto", "ramen", "paella", "tacos"]


def _texts(templates: list[str], count: int, seed: int) -> list[str]:
    """Draws from one generating process (template, number, city, dish at random), so two
    seeds give two samples of the same distribution."""
    rng = random.Random(seed)
    return [
        rng.choice(templates).format(
            n=rng.randint(1000, 9999), c=rng.choice(CITIES), d=rng.choice(DISHES)
        )
        for _ in range(count)
    ]


def _log(model: str, texts: list[str], status: int = 200) -> list[str]:
    ids = [f"chatcmpl-{model}-{status}-{i}" for i in range(len(texts))]
    registry.add_traffic(
        [
            {
                "request_id": rid,
                "model": model,
                "served_by": "tiny",
                "route": "/v1/chat/completions",
                "status": status,
                "key_id": None,
                "messages": [{"role": "user", "content": t}],
                "answers": ["I'm sorry, I cannot help." if i % 4 == 0 else "It is on its way."],
                "finish_reasons": ["stop"],
                "params": {},
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "latency_s": 0.5 + i / 100,
                "ttft_s": 0.1,
                "error": None,
            }
            for i, (rid, t) in enumerate(zip(ids, texts, strict=True))
        ]
    )
    return ids


@pytest.fixture
def traffic(tmp_path: Path) -> dict:
    reference = write_jsonl(
        tmp_path / "train.jsonl", [chat(t, "We will look into it.") for t in _texts(SUPPORT, 40, 0)]
    )
    support = _log("support", _texts(SUPPORT, 24, 1))
    off = _log("offtopic", [*_texts(OFF, 20, 2), "<script>alert(1)</script> recipe for soup"])
    _log("support", ["Where is order 77?"], status=429)
    return {"reference": str(reference), "support": support, "off": off}


def test_drift_alerts_on_off_domain_traffic_only(traffic: dict, tmp_path: Path) -> None:
    from tuneloop.api import monitor

    same = monitor("1h", model="support", reference=[traffic["reference"]])
    assert same["drift"]["alert"] is False, same["drift"]["line"]
    assert same["overall"]["requests"] == 25
    assert same["overall"]["statuses"] == {"200": 24, "429": 1}
    assert same["overall"]["error_rate"] == pytest.approx(1 / 25)
    assert same["overall"]["refusal_rate"] == pytest.approx(6 / 24)
    assert 0.5 <= same["overall"]["latency_p50"] <= 0.75
    shifted = monitor("1h", model="offtopic", reference=[traffic["reference"]], out=tmp_path / "m")
    assert shifted["drift"]["alert"] is True, shifted["drift"]["line"]
    assert shifted["drift"]["auc"] > 0.9
    # nearly every off-domain prompt is uncovered, with its nearest support examples
    assert len(shifted["uncovered"]) >= 15
    assert all(u["neighbours"] for u in shifted["uncovered"])
    html = (tmp_path / "m" / "monitor.html").read_text()
    assert "DRIFT" in html and "&lt;script&gt;" in html and "<script>alert" not in html
    saved = json.loads((tmp_path / "m" / "monitor.json").read_text())
    assert saved["drift"]["alert"] is True


def test_monitor_report_in_a_browser(traffic: dict, tmp_path: Path) -> None:
    """The report as a user opens it: the alert, the plot drawn, user text shown as text."""
    from tuneloop.api import monitor

    monitor("1h", model="offtopic", reference=[traffic["reference"]], out=tmp_path / "m")
    with browser_page() as page:
        page.goto((tmp_path / "m" / "monitor.html").as_uri())
        drift = page.locator("#drift")
        assert drift.get_attribute("class") == "flag" and "DRIFT" in drift.inner_text()
        plot = page.locator("img").first
        assert plot.evaluate("i => i.complete && i.naturalWidth > 400"), "the plot did not load"
        # the injected prompt is on the page as the text the user sent, not as markup
        assert page.get_by_text("<script>alert(1)</script> recipe for soup").count() == 1
        assert page.locator("script").count() == 0
        screenshot(page, "monitor-report.png", tmp_path)


def test_monitor_and_export_from_the_command_line(traffic: dict, tmp_path: Path) -> None:
    proc = run_cli(
        "monitor", "--since", "1h", "--model", "offtopic", "--reference", traffic["reference"]
    )
    assert proc.returncode == 0, proc.stderr
    assert "DRIFT" in proc.stdout and "uncovered prompts" in proc.stdout
    out = tmp_path / "uncovered.jsonl"
    proc = run_cli(
        "traffic", "export", "--uncovered", "--out", str(out), "--since", "1h",
        "--model", "offtopic", "--reference", traffic["reference"],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) >= 15 and all(r["prompt"][-1]["role"] == "user" for r in rows)
    assert {r["meta"]["request_id"] for r in rows} <= set(traffic["off"])
    # the export reads back as prompt rows, for compare --data and the RL methods
    from tuneloop.data.readers import read_rows

    assert {r["kind"] for r in read_rows(out).rows} == {"prompt"}
    dataset = registry.list_datasets()[-1]
    assert dataset.meta["traffic"]["kind"] == "uncovered"
    assert dataset.meta["traffic"]["request_ids"] == [r["meta"]["request_id"] for r in rows]
    assert run_cli("monitor", "--since", "soon").returncode != 0


def test_downvoted_and_corrected_answers_become_datasets(traffic: dict, tmp_path: Path) -> None:
    from tuneloop.api import export_traffic

    first, second = traffic["support"][:2]
    registry.add_feedback(first, rating=-1, comment="wrong order")
    registry.add_feedback(second, rating=1, correction="Order 1501 ships on Monday.")
    down = export_traffic("downvoted", tmp_path / "down.jsonl", since="1h")
    assert down["request_ids"] == [first]
    (row,) = [json.loads(x) for x in (tmp_path / "down.jsonl").read_text().splitlines()]
    assert row["meta"]["comment"] == "wrong order"
    fixed = export_traffic("corrected", tmp_path / "fixed.jsonl", since="1h")
    (row,) = [json.loads(x) for x in (tmp_path / "fixed.jsonl").read_text().splitlines()]
    assert row["messages"][-1] == {"role": "assistant", "content": "Order 1501 ships on Monday."}
    assert fixed["rows"] == 1
    from tuneloop.data.readers import read_conversations

    assert len(read_conversations(tmp_path / "fixed.jsonl").conversations) == 1  # SFT rows
    with pytest.raises(TuneloopError, match="no corrected traffic"):
        export_traffic("corrected", tmp_path / "none.jsonl", since="1h", model="offtopic")
    assert not (tmp_path / "none.jsonl").exists()
    with pytest.raises(TuneloopError, match="no logged request"):
        registry.add_feedback("chatcmpl-unknown", rating=1)
