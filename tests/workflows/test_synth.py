"""Synthetic data: the teacher's drafts are cleaned and filtered with counted reasons, every
draft is kept in the review queue (pending or filtered, with why), reviews change only
what they name, and an export is a dataset version with lineage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tuneloop import api, registry
from tuneloop.data import synth
from tuneloop.data.steps import run_step
from tuneloop.errors import DataError, TuneloopError

from conftest import chat, serving_in_thread, write_jsonl

POLICY = (
    "# Help\n\n## Shipping\n- We ship to France and Spain only.\n\n"
    "## Warranty\n- Kettles: 3 years.\n"
)
SEEDS = [
    ("Do you ship to Italy?", "No, we ship only to France and Spain."),
    ("How long is the kettle warranty?", "Kettles have a 3-year warranty."),
    ("Can I pay with cash?", "No, we take cards only."),
]


def _row(pos: int, question: str, answer: str, method: str = "self_instruct", **meta):
    return {
        "kind": "sft",
        "messages": [{"role": "user", "content": question},
                     {"role": "assistant", "content": answer}],
        "source": f"draft {pos}",
        "synth": {"position": pos, "method": method, **meta},
    }  # fmt: skip


def test_questions_lose_the_wrapping_small_models_add() -> None:
    assert synth.clean_question('Question: "Do you ship to Peru?"\nAnswer: no') == (
        "Do you ship to Peru?"
    )
    assert synth.clean_question("1. Can I return a bulb?") == "Can I return a bulb?"
    assert synth.clean_question("- New question: Where is my order?") == "Where is my order?"
    assert synth.clean_question("\n\n") == ""


def test_config_paths_are_relative_to_it_and_bad_configs_say_why(tmp_path: Path) -> None:
    (tmp_path / "seeds.jsonl").write_text("")
    path = tmp_path / "synth.yaml"
    path.write_text(yaml.safe_dump({"teacher": "x", "seeds": "seeds.jsonl",
                                    "filters": {"decontaminate": ["eval.jsonl"]}}))  # fmt: skip
    config, _ = synth.load_synth_config(path)
    assert config.seeds == str(tmp_path / "seeds.jsonl")
    assert config.filters.decontaminate == [str(tmp_path / "eval.jsonl")]
    path.write_text(yaml.safe_dump({"teacher": "x"}))
    with pytest.raises(DataError, match="give seeds, documents or both"):
        synth.load_synth_config(path)
    path.write_text(yaml.safe_dump({"teacher": "x", "seeds": "s", "targett": 3}))
    with pytest.raises(DataError, match="targett"):
        synth.load_synth_config(path)


def test_filters_drop_with_reasons() -> None:
    rows = [
        _row(0, "Do you ship to Peru?", "No, only to France and Spain."),
        _row(1, "Hi", "A long enough answer here."),
        _row(2, "Write one new question a customer could ask?", "Something long enough."),
        _row(3, "Is the warranty long?", "Yes it is long enough", stopped=False),
    ]
    kept, log = run_step("synth_clean", rows)
    assert [r["source"] for r in kept] == ["draft 0"]
    assert dict(log.dropped) == {
        "question too short": 1,
        "question repeats the instruction": 1,
        "answer cut off at the token limit": 1,
    }
    context = "We ship to France and Spain only."
    grounded_rows = [
        _row(0, "Where do you ship?", "France and Spain only.", context=context),
        _row(1, "Where do you ship?", "Everywhere in the galaxy, quickly.", context=context),
        _row(2, "A seed-style question?", "No context to check."),
    ]
    kept, log = run_step("grounded", grounded_rows, min_share=0.5)
    assert [r["source"] for r in kept] == ["draft 0", "draft 2"]
    assert sum(log.dropped.values()) == 1
    scored = [_row(0, "q?", "a", score=7.0), _row(1, "q?", "a", score=2.0), _row(2, "q?", "a")]
    kept, log = run_step("score_threshold", scored, threshold=5)
    assert [r["source"] for r in kept] == ["draft 0", "draft 2"]
    assert log.details["flagged"] == {"no score": 1}


def test_review_queue_and_export_with_lineage(tmp_path: Path) -> None:
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [chat(q, a) for q, a in SEEDS])
    seeds_id = registry.register_dataset("s", [[]], str(seeds), "messages").id
    kept = [_row(i, f"Question number {i}?", f"Answer number {i}.") for i in range(4)]
    dropped = [(_row(4, "Hi", "x"), "synth_clean: question too short")]
    bid = synth.create_batch("t", "teacher-x", {}, seeds_id, [{"source": "help.md"}], [],
                             kept, dropped)  # fmt: skip
    pending = api.synth_candidates(bid, "pending")
    assert [c["position"] for c in pending] == [0, 1, 2, 3]
    (filtered,) = api.synth_candidates(bid, "filtered")
    assert filtered["reason"] == "synth_clean: question too short"
    with pytest.raises(TuneloopError, match="was filtered"):
        api.synth_review(bid, [filtered["id"]], "approve", reviewer="ana")
    with pytest.raises(TuneloopError, match="no approved or edited"):
        api.synth_export(bid)

    ids = [c["id"] for c in pending]
    assert api.synth_review(bid, ids[:1], "approve", reviewer="ana") == 1
    assert api.synth_review(bid, [ids[1]], "edit", reviewer="ana", answer="Better answer.") == 1
    assert api.synth_review(bid, [ids[2]], "reject", reviewer="bo") == 1
    with pytest.raises(TuneloopError, match="has no candidate 999"):
        api.synth_review(bid, [999], "approve", reviewer="ana")
    with pytest.raises(TuneloopError, match="needs a new answer"):
        api.synth_review(bid, [ids[3]], "edit", reviewer="ana", answer="  ")

    out = api.synth_export(bid, tmp_path / "accepted.jsonl")
    assert out["rows"] == 2 and out["teacher"] == "teacher-x"
    assert out["counts"] == {"pending": 1, "approved": 1, "edited": 1, "rejected": 1,
                             "filtered": 1}  # fmt: skip
    written = [json.loads(line) for line in (tmp_path / "accepted.jsonl").read_text().splitlines()]
    assert written[1]["messages"][-1]["content"] == "Better answer."  # the edit, not the draft
    dataset = registry.get_dataset(out["dataset_id"])
    assert dataset.parent_id == seeds_id and dataset.meta["synth_batch"] == bid
    assert dataset.meta["documents"] == [{"source": "help.md"}]
    again = api.synth_export(bid)
    assert again["dataset_id"] == out["dataset_id"]  # same rows: the same version

    # the CLI walk-through: approve the one left
    from tuneloop.cli import cli

    result = CliRunner().invoke(cli, ["synth", "review", str(bid), "--reviewer", "cy"], input="a\n")
    assert result.exit_code == 0, result.output
    assert "1 reviewed" in result.output
    assert api.synth_candidates(bid, "pending") == []
    listed = CliRunner().invoke(cli, ["synth", "list"])
    assert listed.output.splitlines()[1].split()[:7] == [str(bid), "t", "teacher-x", "0", "3",
                                                         "1", "1"]  # fmt: skip


def test_synth_run_keeps_every_draft_and_counts_match_the_logs(
    tmp_path: Path, tiny_model: Path
) -> None:
    docs = tmp_path / "help.md"
    docs.write_text(POLICY)
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [chat(q, a, "Be brief.") for q, a in SEEDS])
    evals = write_jsonl(tmp_path / "eval.jsonl", [chat("Do you ship to Italy?", "No.")])
    config = tmp_path / "synth.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "teacher": str(tiny_model), "seeds": seeds.name, "documents": docs.name,
        "target": 10, "shots": 2, "max_question_tokens": 12, "max_answer_tokens": 12,
        "filters": {"min_question_chars": 1, "min_answer_chars": 1,
                    "decontaminate": [evals.name]},
    }))  # fmt: skip
    report = api.synth(config, progress=False)
    assert report.drafted == {"self_instruct": 5, "document_qa": 4, "evolve": 1}
    everything = api.synth_candidates(report.batch_id)
    assert len(everything) == 10 and [c["position"] for c in everything] == list(range(10))
    assert report.pending + sum(report.filtered.values()) == 10
    logged = sum(sum(s["dropped"].values()) for s in report.steps)
    assert logged == sum(report.filtered.values())
    assert [s["step"] for s in report.steps] == [
        "synth_clean", "dedup", "grounded", "decontaminate"
    ]  # fmt: skip
    assert all(c["messages"][0]["content"] == "Be brief." for c in everything)
    doc_qa = [c for c in everything if c["method"] == "document_qa"]
    assert all(c["origin"]["chunk"].startswith("help.md § ") for c in doc_qa)
    info = synth.batch(report.batch_id)
    assert info["seeds_dataset_id"] == report.seeds_dataset_id
    assert info["documents"][0]["source"] == "help.md"
    assert "batch" in report.summary() and "synth_clean" in report.summary()


def test_an_endpoint_drafts_the_questions_and_a_local_model_answers(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.serving import create_app

    seeds = write_jsonl(tmp_path / "seeds.jsonl", [chat(q, a) for q, a in SEEDS])
    config = tmp_path / "synth.yaml"
    config.write_text(yaml.safe_dump({
        "teacher": "openai:teacher", "answerer": str(tiny_model), "seeds": seeds.name,
        "target": 4, "methods":
        {"self_instruct": 1.0}, "max_question_tokens": 8, "max_answer_tokens": 8,
        "filters": {"min_question_chars": 1, "min_answer_chars": 1},
    }))  # fmt: skip
    with serving_in_thread(create_app(str(tiny_model), name="teacher", log_traffic=False)) as url:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{url}/v1")
        report = api.synth(config, progress=False)
    assert report.drafted == {"self_instruct": 4}
    assert len(api.synth_candidates(report.batch_id)) == 4
    assert report.teacher == f"openai:teacher (answers: {tiny_model})"  # local answers
    assert os.environ["OPENAI_BASE_URL"].endswith("/v1")
