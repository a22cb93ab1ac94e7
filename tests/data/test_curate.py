"""The curation pipeline end to end: accounting, versions, card, CLI errors, real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tuneloop import registry
from tuneloop.data import read_rows
from tuneloop.data.config import CurateConfig, load_curate_config
from tuneloop.data.curate import curate, inspect
from tuneloop.data.diff import diff_versions
from tuneloop.data.steps import run_step
from tuneloop.errors import DataError

from conftest import REPO, chat, write_jsonl

SHARED = REPO.parent / "shared" / "data"
BANKING = SHARED / "banking77" / "train.csv"
HH = SHARED / "hh-rlhf-harmless" / "pairs.jsonl"


TOPICS = [
    "How do I reset my router password?",
    "What are your opening hours on Sunday?",
    "Can I return shoes bought online?",
    "Why was my card declined at the store?",
    "How long does international shipping take?",
    "Where can I download my invoice?",
    "Is there a student discount for the yearly plan?",
    "My parcel arrived damaged, what now?",
    "How do I change the e-mail on my account?",
    "Do you deliver to Alaska?",
    "Can I pause my subscription for a month?",
    "The app crashes when I open settings.",
    "How do I add a second user to my plan?",
    "What payment methods do you accept?",
    "Can I pick up my order in a store?",
    "How do I turn on two-factor authentication?",
    "Why is my bill higher this month?",
    "Can I change my delivery address?",
    "How do I cancel an order I just placed?",
    "Does the warranty cover water damage?",
    "How can I track my refund?",
    "What does the blinking red light mean?",
    "Can I use the device without Wi-Fi?",
    "How do I update the firmware?",
    "Is my data sold to third parties?",
    "How do I close my account for good?",
    "What is the weight limit for free shipping?",
    "How do I redeem a gift card?",
    "Can I get a paper receipt by post?",
    "Who do I contact about a broken charger?",
]


def _messy_file(tmp_path: Path) -> Path:
    rows = [
        chat(q, f"Answer number {i}: please see the help page for details.")
        for i, q in enumerate(TOPICS)
    ]
    rows += [
        chat(TOPICS[3], "Answer number 3: please see the help page for details."),  # exact dup
        chat(TOPICS[3].lower().rstrip("?"), "answer number 3 please see the help page for details"),
        chat("Email me at jane.doe@example.com please", "Sure, noted."),  # PII
        chat("<p>What is <b>the</b> warranty?</p>", "Two years."),  # HTML
        chat("Tell me a joke", "\u0007\u0008 "),  # empty after cleaning
    ]
    path = write_jsonl(tmp_path / "messy.jsonl", rows)
    with path.open("a", encoding="utf-8") as fh:
        fh.write("{broken json\n")
    return path


def test_curate_accounts_for_every_row(tmp_path: Path) -> None:
    path = _messy_file(tmp_path)
    config = CurateConfig(
        steps=[
            {"validate": {"model": None}},
            {"clean": {}},
            {"redact_pii": {"mode": "redact"}},
            {"dedup": {}},
            {"score": {}},
            {"split": {"validation": 0.2, "test": 0.0, "seed": 1}},
        ]
    )
    result = curate(path, config, tmp_path / "out", name="messy")
    card = result.card
    assert card["input"]["rows_read"] == 35 and card["input"]["malformed"] == 1
    assert card["input"]["malformed_examples"][0]["where"] == "line 36"
    by_step = {s["step"]: s for s in card["steps"]}
    assert by_step["clean"]["dropped"] == {"empty after cleaning": 1}
    assert sum(by_step["clean"]["changed"].values()) >= 1
    assert card["pii"]["counts"] == {"email": 1}
    assert by_step["dedup"]["dropped"].get("exact duplicate") == 2
    # every step's books balance
    for s in card["steps"]:
        assert s["rows_in"] - sum(s["dropped"].values()) == s["rows_out"]
    assert card["output"]["rows"] == 35 - 1 - 2
    # splits: validation holds about 20% and files exist for both
    splits = card["output"]["splits"]
    assert splits["validation"] == round(32 * 0.2) and splits["train"] == 32 - splits["validation"]
    assert (tmp_path / "out" / "train.parquet").is_file()
    assert (tmp_path / "out" / "validation.parquet").is_file()
    html = (tmp_path / "out" / "card.html").read_text()
    assert 'id="steps"' in html and "PII found in 1 rows" in html
    assert any("below the 1,000-10,000" in w for w in card["warnings"])
    # registry: each split is a version whose parent is the raw input
    train = registry.get_dataset(result.dataset_ids["train"])
    assert train.parent_id == result.raw_dataset_id and train.name == "messy-train"
    assert train.meta["steps"][0]["step"] == "validate"
    # the redacted text is what got stored
    stored = (
        read_rows(tmp_path / "out" / "train.parquet").rows
        + read_rows(tmp_path / "out" / "validation.parquet").rows
    )
    texts = json.dumps(stored)
    assert "jane.doe@example.com" not in texts and "[EMAIL]" in texts
    assert "<b>" not in texts
    # diff raw -> curated train
    diff = diff_versions(result.raw_dataset_id, result.dataset_ids["train"])
    assert diff["removed"] >= 3 and diff["new"]["rows"] == splits["train"]


def test_same_curation_twice_reuses_versions(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [chat(f"q{i} about things", f"a{i}") for i in range(5)]
    )
    config = CurateConfig(steps=[{"clean": {}}])
    first = curate(path, config, tmp_path / "o1")
    second = curate(path, config, tmp_path / "o2")
    assert first.dataset_ids == second.dataset_ids


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "curate.yaml"
    bad.write_text(yaml.safe_dump({"steps": [{"dedupe": {}}]}))
    with pytest.raises(DataError, match=r"unknown step 'dedupe' \(did you mean 'dedup'\?\)"):
        load_curate_config(bad)
    bad.write_text(yaml.safe_dump({"steps": [{"dedup": {"treshold": 0.5}}]}))
    with pytest.raises(DataError, match=r"unknown parameter 'treshold' \(did you mean 'threshold'"):
        load_curate_config(bad)
    bad.write_text(yaml.safe_dump({"input": {"fromat": "auto"}}))
    with pytest.raises(DataError, match=r"did you mean 'input.format'"):
        load_curate_config(bad)


def test_inspect_reports_without_dropping(tmp_path: Path) -> None:
    card = inspect(_messy_file(tmp_path), model=None)
    assert card["output"]["rows"] == 35  # nothing removed
    assert card["pii"]["rows_with_pii"] == 1
    assert card["duplicates"]["num_clusters"] >= 1


def test_score_flags_kept_rows_with_samples_and_drops_unknown_labels() -> None:
    def row(text: str, label: str) -> dict[str, object]:
        return {"kind": "sft", "messages": chat(text, label)["messages"], "label": label}

    rows = [row("Is my card blocked?", "card"), row("is my card blocked", "fees")]
    rows += [row("Where is my refund?", "refund"), row("Open an account", "nonsense")]
    kept, log = run_step("score", rows, labels=["card", "fees", "refund"])
    # the unknown label is dropped; the two conflicting rows are kept but flagged
    assert [r["label"] for r in kept] == ["card", "fees", "refund"]
    assert log.dropped == {"label outside the label set": 1}
    assert log.details["flagged"] == {
        "conflicting answers to the same prompt": 2,
        "label outside the label set": 1,
    }
    assert log.samples["flagged: conflicting answers to the same prompt"] == rows[:2]


def test_every_shipped_curate_config_parses() -> None:
    configs = sorted(REPO.glob("examples/**/curate.yaml"))
    assert configs
    for path in configs:
        config, _ = load_curate_config(path)
        assert config.steps


@pytest.mark.skipif(not BANKING.is_file(), reason="../shared/data/banking77 not present")
def test_banking77_becomes_chat_pairs_with_77_labels(tmp_path: Path) -> None:
    config, _ = load_curate_config(REPO / "examples" / "banking77" / "curate.yaml")
    config.input.labels_file = str(BANKING.parent / "categories.json")
    result = curate(BANKING, config, tmp_path / "bank", name="banking77")
    card = result.card
    assert card["input"]["rows_read"] == 10003 and card["input"]["format"] == "classification"
    assert len(card["labels"]) == 77
    first = read_rows(tmp_path / "bank" / "train.parquet").rows[0]
    assert first["messages"][-1]["content"] == first["label"]
    dedup = {s["step"]: s for s in card["steps"]}["dedup"]
    # measured on this file (prompt field, template stripped, Jaccard 0.8): 30 exact
    # duplicates after normalisation and 141 near duplicates, each of the row kept for it
    # (151 when clusters were chained by union-find); the template shared by every prompt
    # must not make rows look alike (it once merged 4,220 rows)
    assert dedup["dropped"] == {"exact duplicate": 30, "near duplicate": 141}
    split = {s["step"]: s for s in card["steps"]}["split"]["details"]
    assert split["stratified_by"] == "label"
    # every label appears in validation, in proportion
    assert len(split["per_label"]) == 77
    assert all(v.get("validation", 0) >= 1 for v in split["per_label"].values())
    html = (tmp_path / "bank" / "card.html").read_text()
    assert html.count("<rect") >= 77 and 'id="label-chart"' in html


@pytest.mark.skipif(not HH.is_file(), reason="../shared/data/hh-rlhf-harmless not present")
def test_hh_pairs_parse_and_degenerate_pairs_are_flagged(tmp_path: Path) -> None:
    config, _ = load_curate_config(REPO / "examples" / "hh-harmless" / "curate.yaml")
    result = curate(HH, config, tmp_path / "hh", name="hh")
    card = result.card
    assert card["input"]["rows_read"] == 1800 and card["input"]["kind"] == "preference"
    checks = {s["step"]: s for s in card["steps"]}["preference_checks"]
    # measured on this file: 3 transcripts end with an empty Assistant turn, 1 rejected
    # answer is a prefix of its chosen one; nothing else is degenerate
    assert checks["dropped"] == {"empty chosen": 3, "rejected is a prefix of chosen": 1}
    assert {s["step"]: s for s in card["steps"]}["validate"]["dropped"] == {}
    row = read_rows(tmp_path / "hh" / "train.parquet").rows[0]
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][-1]["role"] == "assistant"


def test_semantic_dedup_drops_paraphrases(tmp_path: Path) -> None:
    from tuneloop.data.steps import run_step

    rows = read_rows(
        write_jsonl(
            tmp_path / "p.jsonl",
            [
                chat("How do I reset my password?", "Use Settings."),
                chat("How can I reset my password?", "Use Settings."),
                chat("What is the capital of France?", "Paris."),
            ],
        )
    ).rows
    kept, log = run_step("dedup", rows, near=False, semantic=True, semantic_threshold=0.9)
    assert [r["source"] for r in kept] == ["line 1", "line 3"]
    assert log.dropped == {"semantic duplicate": 1}


def test_decontamination_ignores_a_shared_template(tmp_path: Path) -> None:
    from tuneloop.data.steps import run_step

    template = "Classify the following customer message and answer with its label only please"
    train = [
        {"text": f"{template}: my card {w} yesterday", "label": "x"}
        for w in ("broke", "vanished", "melted")
    ]
    evals = [
        {"text": f"{template}: where is my parcel", "label": "y"},
        {"text": f"{template}: please help now", "label": "y"},
    ]
    rows = read_rows(
        write_jsonl(tmp_path / "t.jsonl", train), options=None, fmt="classification"
    ).rows
    eval_rows = read_rows(write_jsonl(tmp_path / "e.jsonl", evals), fmt="classification").rows
    kept, log = run_step("decontaminate", rows, eval_rows=eval_rows, n=8)
    assert len(kept) == 3 and not log.dropped


def _split_config(validation: float) -> CurateConfig:
    return CurateConfig(
        steps=[
            {"validate": {"model": None}},
            {"split": {"validation": validation, "test": 0.0, "keep_clusters_together": False}},
        ]
    )


def test_curate_refuses_a_foreign_folder_and_leaves_it_untouched(tmp_path: Path) -> None:
    from tuneloop.files import OutputExists

    path = write_jsonl(tmp_path / "d.jsonl", [chat(q, "An answer.") for q in TOPICS])
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"the user's own file")
    with pytest.raises(OutputExists, match="--force"):
        curate(path, _split_config(0.2), out, name="d")
    assert [p.name for p in out.iterdir()] == ["train.parquet"]
    assert (out / "train.parquet").read_bytes() == b"the user's own file"
    assert registry.list_datasets() == []  # refused before any work
    curate(path, _split_config(0.2), out, name="d", force=True)
    assert len(read_rows(out / "train.parquet").rows) == len(TOPICS) - round(len(TOPICS) * 0.2)


def test_a_second_curate_replaces_the_first_output_whole(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [chat(q, "An answer.") for q in TOPICS])
    out = tmp_path / "out"
    curate(path, _split_config(0.2), out, name="d")
    assert (out / "validation.parquet").is_file()
    curate(path, _split_config(0.0), out, name="d")
    expected = [".tuneloop-output.json", "card.html", "card.json", "curate.yaml", "train.parquet"]
    assert sorted(p.name for p in out.iterdir()) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "out", "registry.db"]
    assert len(read_rows(out / "train.parquet").rows) == len(TOPICS)
    assert json.loads((out / "card.json").read_text())["output"]["splits"] == {"train": 30}


def test_distinct_n_by_hashes_equals_the_set_of_ngrams() -> None:
    # enough n-grams for several merges of the hashed, sorted arrays
    import random

    from tuneloop.data.score import distinct_n, words

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(500)]
    texts = [" ".join(rng.choices(vocab, k=rng.randint(1, 60))) for _ in range(6000)]
    for n in (1, 2, 3):
        grams = [tuple(t[i : i + n]) for t in map(words, texts) for i in range(len(t) - n + 1)]
        assert distinct_n(texts, n) == len(set(grams)) / len(grams)
