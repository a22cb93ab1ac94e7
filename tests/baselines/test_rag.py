"""RAG end to end on a tiny model: a run trained with retrieval in its prompts keeps its
index, evaluation and serving add the same passages and cite them, and compare-approaches
puts RAG and fine-tuned + RAG beside the prompt baselines, scored by fact match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tuneloop import api, registry
from tuneloop.evaluation.metrics import fact_match
from tuneloop.workflows.approaches import cites, read_facts

from conftest import chat, serving_in_thread, write_jsonl

POLICY = """# Acme Help

## Shipping
- We ship to France and Spain only. Delivery takes 4 days.

## Warranty
- Every kettle has a 3-year warranty from delivery.

## Support
- Chat is open from 9 am to 5 pm on weekdays.
"""
QUESTIONS = [
    ("Do you ship to Italy?", "No, only to France and Spain.", ["france", "spain"]),
    ("How long is the kettle warranty?", "3 years from delivery.", [["3 year", "3 years"]]),
    ("When is chat open?", "From 9 am to 5 pm on weekdays.", ["9 am"]),
    ("How long does delivery take?", "Delivery takes 4 days.", [["4 days", "four days"]]),
]


def _support(tmp_path: Path) -> tuple[Path, Path, Path]:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "help.md").write_text(POLICY, encoding="utf-8")
    train = write_jsonl(tmp_path / "train.jsonl", [chat(q, a) for q, a, _ in QUESTIONS * 3])
    held = write_jsonl(
        tmp_path / "questions.jsonl", [{**chat(q, a), "facts": f} for q, a, f in QUESTIONS]
    )
    return docs, train, held


def test_fact_match_wants_whole_words_and_accepts_alternatives() -> None:
    mean, per = fact_match(
        ["We offer 12 years.", "Two years, from delivery!", "France or Spain", "anything"],
        [["2 years"], [["2 years", "two years"]], ["france", "spain", "italy"], []],
    )
    assert per == [0.0, 1.0, pytest.approx(2 / 3), 1.0]
    assert mean == pytest.approx(sum(per) / 4)
    assert cites("See [2] and [9].", 3) and not cites("See [4].", 3) and not cites("none", 3)


def test_facts_are_read_in_row_order_and_checked(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{**chat("a", "b"), "facts": ["x"]}, chat("c", "d")])
    assert read_facts(path) == [["x"], []]
    write_jsonl(path, [chat("a", "b")])
    assert read_facts(path) is None
    write_jsonl(path, [{**chat("a", "b"), "facts": "x"}])
    with pytest.raises(Exception, match=r"q\.jsonl:1: facts must be a list"):
        read_facts(path)


def test_a_run_trained_with_retrieval_is_evaluated_and_served_with_its_passages(
    tmp_path: Path, tiny_model: Path
) -> None:
    _, train, held = _support(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "rag",
                "model": str(tiny_model),
                "data": {
                    "train": train.name,
                    "max_length": 384,
                    "retrieval": {"docs": "docs", "k": 2, "max_chars": 200, "overlap": 20},
                },
                "adapter": {"type": "lora", "r": 4, "alpha": 8},
                "training": {"max_steps": 2, "batch_size": 4},
                "output_dir": str(tmp_path / "runs"),
            }
        )
    )
    run = api.train(recipe)
    from tuneloop.models import resolve

    fmt = resolve(f"run:{run.id}").prompt_format["retrieval"]
    assert fmt["k"] == 2 and fmt["documents"] == ["help.md"] and fmt["chunks"] == 3
    assert Path(fmt["index"], "manifest.json").is_file()  # relative docs path resolved, kept

    result = api.evaluate(f"run:{run.id}", held, ["token_f1"], max_new_tokens=8)
    first = result.examples[0]
    assert first["sources"][0]["source"] == "help.md § Shipping"
    assert "[1] (help.md § Shipping)" in first["prompt"][0]["content"]
    (stored,) = [e for e in registry.evals_for_run(run.id) if e.id == result.eval_id]
    assert stored.settings["retrieval"]["k"] == 2

    from openai import OpenAI

    from tuneloop.serving import create_app

    with serving_in_thread(create_app(f"run:{run.id}", name="rag", log_traffic=False)) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model="rag", messages=[{"role": "user", "content": "Do you ship to Italy?"}],
            max_tokens=4,
        )  # fmt: skip
        citations = reply.model_extra["citations"]
        assert [c["index"] for c in citations] == [1, 2]
        assert citations[0]["source"] == "help.md § Shipping"
        assert "France and Spain" in citations[0]["text"]
        stream = client.chat.completions.create(
            model="rag", messages=[{"role": "user", "content": "When is chat open?"}],
            max_tokens=4, stream=True,
        )  # fmt: skip
        chunks = list(stream)
        assert chunks[0].model_extra["citations"][0]["source"] == "help.md § Support"
        assert all("citations" not in (c.model_extra or {}) for c in chunks[1:])


def test_compare_approaches_with_docs_scores_facts_and_records_passages(
    tmp_path: Path, tiny_model: Path
) -> None:
    docs, train, held = _support(tmp_path)
    report = api.compare_approaches(
        train,
        str(tiny_model),
        eval_data=held,
        shots=(1,),
        docs=docs,
        retrieval_k=2,
        topic="Acme",
        max_new_tokens=8,
    )
    names = [r["approach"] for r in report.rows]
    assert names == ["zero-shot", "system prompt", "few-shot k=1", "RAG"]
    assert report.metric == "fact_match"
    tokens = {r["approach"]: r["prompt_tokens"] for r in report.rows}
    assert tokens["RAG"] > tokens["system prompt"]
    rag = report.rows[-1]
    assert 0 <= rag["cited"] <= 1 and rag["metrics"]["fact_match"] == rag["value"]
    examples = registry.eval_examples(rag["eval_id"])
    assert "help.md § Shipping" in examples[0].prompt[0]["content"]
    assert report.retrieval["fact_recall"] == 1.0  # every fact is in the top 2 passages
    table = report.table()
    assert "| RAG |" in table and "cites a passage" in table and "token_f1" in table
    json.loads(report.to_json())


def test_eval_with_docs_adds_passages_to_a_base_model(tmp_path: Path, tiny_model: Path) -> None:
    docs, _, held = _support(tmp_path)
    index = api.rag_index(docs, tmp_path / "index", max_chars=200, overlap=20)
    assert index["chunks"] == 3 and index["kind"] == "flat"
    result = api.evaluate(
        str(tiny_model), held, ["token_f1"], max_new_tokens=4, docs=tmp_path / "index",
        retrieval_k=1,
    )  # fmt: skip
    assert [len(e["sources"]) for e in result.examples] == [1, 1, 1, 1]
    assert result.examples[1]["sources"][0]["source"] == "help.md § Warranty"
    (hits,) = api.rag_search(tmp_path / "index", ["kettle warranty"], k=1)
    assert hits[0]["source"] == "help.md § Warranty"
    quality = api.rag_quality(tmp_path / "index", held, ks=(1, 2))
    assert quality["queries"] == 4 and quality["recall@2"] >= quality["recall@1"] > 0


def test_serving_a_base_model_with_docs_cites_the_passages(
    tmp_path: Path, tiny_model: Path
) -> None:
    from openai import OpenAI

    from tuneloop.serving import create_app

    docs, _, _ = _support(tmp_path)
    app = create_app(str(tiny_model), name="base", log_traffic=False, docs=str(docs), retrieval_k=1)
    with serving_in_thread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "kettle warranty?"}], max_tokens=2
        )
        assert [c["source"] for c in reply.model_extra["citations"]] == ["help.md § Warranty"]
        text = client.completions.create(model="base", prompt="hi", max_tokens=2)
        assert "citations" not in (text.model_extra or {})  # raw completions go as sent


def test_compare_approaches_on_a_suite_from_the_cli(tmp_path: Path, tiny_model: Path) -> None:
    from click.testing import CliRunner

    from tuneloop.cli import cli

    docs, train, held = _support(tmp_path)
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "tasks": [
        {"name": "policy", "data": held.name, "max_new_tokens": 4},
        {"name": "general", "data": "builtin:general", "use_run_format": False},
    ]}))  # fmt: skip
    result = CliRunner().invoke(cli, [
        "compare-approaches", str(suite), "--data", str(train), "--model", str(tiny_model),
        "--k", "0", "--docs", str(docs), "--rag-k", "1", "--out", str(tmp_path / "out"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "## policy" in result.output and "## general" not in result.output
    assert "| RAG |" in result.output and "retrieval: the top 1 passages" in result.output
    saved = json.loads((tmp_path / "out" / "policy" / "approaches.json").read_text())
    assert [r["approach"] for r in saved["rows"]] == ["zero-shot", "system prompt", "RAG"]
    assert (tmp_path / "out" / "policy" / "approaches.png").stat().st_size > 5_000
