from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.data.decontaminate import (
    content_text,
    ngram_overlap,
    overlapping_requests,
    word_ngrams,
)
from tuneloop.data.records import Row
from tuneloop.data.steps import run_step
from tuneloop.errors import DataError

from conftest import chat, write_jsonl

NATO = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
]  # fmt: skip
EVAL = " ".join(NATO)  # 20 distinct words
# 3 + 13 + 4 = 20 words: 8 word 13-grams, exactly one of them (bravo ... november) in EVAL
SHARES_13 = " ".join(["one", "two", "three", *NATO[1:14], "four", "five", "six", "seven"])
# 3 + 12 + 5 = 20 words: the longest run shared with EVAL is 12 words
SHARES_12 = " ".join(["one", "two", "three", *NATO[1:13], "four", "five", "six", "seven", "x"])


def sft(user: str, answer: str, source: str, system: str | None = None) -> Row:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return {"kind": "sft", "messages": messages, "source": source}


def test_word_ngrams() -> None:
    assert word_ngrams("Hello, World!") == {"hello world"}  # short: the whole text
    assert word_ngrams(" ".join(NATO[:14])) == {" ".join(NATO[:13]), " ".join(NATO[1:14])}
    assert word_ngrams("a b c", n=2) == {"a b", "b c"}
    assert word_ngrams("?!") == set()


def test_13_gram_flagged_12_is_not() -> None:
    assert ngram_overlap([SHARES_13, SHARES_12], [EVAL]) == [(0, [0], 1 / 8)]


def test_overlap_lists_every_eval_row_and_counts_distinct_ngrams() -> None:
    evals = ["unrelated words only", EVAL, EVAL.upper() + "!"]
    assert ngram_overlap([SHARES_13], evals) == [(0, [1, 2], 0.125)]
    # EVAL twice is 40 words, 28 windows; the last 8 repeat the first 8, so 20 distinct
    # 13-grams: the 8 inside one copy are EVAL's, the 12 that wrap from tango to alpha not
    doubled = EVAL + " " + EVAL
    assert ngram_overlap([doubled], [EVAL]) == [(0, [0], 8 / 20)]


def test_short_texts_match_whole() -> None:
    evals = ["What is my balance?", "How do I close my account?"]
    train = ["what is my balance", "What is my balance today?", "how do i CLOSE my account"]
    assert ngram_overlap(train, evals) == [(0, [0], 1.0), (2, [1], 1.0)]
    # shorter than n, "a b" is one gram of its own; it is not a 3-gram of "a b c d"
    assert ngram_overlap(["a b"], ["a b c d"], n=3) == []
    assert ngram_overlap(["a b c"], ["a b c d"], n=3) == [(0, [0], 1.0)]


def test_step_drops_overlapping_rows() -> None:
    rows = [
        sft(SHARES_13, "answer one", "line 1"),
        sft(SHARES_12, "answer two", "line 2"),
        sft("What is my balance?", "It is 5.", "line 3"),
    ]
    eval_rows = [sft(EVAL, "eval answer", "row 0"), sft("what is my balance", "It is 5", "row 1")]
    out, log = run_step("decontaminate", rows, eval_rows=eval_rows)
    assert [r["source"] for r in out] == ["line 2"]
    assert log.dropped == {"overlaps eval set eval_rows": 2}
    assert log.details["contaminated_rows"] == 2
    [report] = log.details["eval_sets"]
    assert report["name"] == "eval_rows"
    assert (report["eval_rows"], report["train_rows_overlapping"]) == (2, 2)
    first, second = report["examples"]
    # row 1 as one text: 20 + 2 words = 10 13-grams, one shared
    assert (first["train"], first["eval"], first["overlap"]) == ("line 1", "row 0", 0.1)
    assert first["train_text"].startswith("one two three bravo")
    # "What is my balance?\nIt is 5." is 7 words: one gram, equal to the eval row's
    assert (second["train"], second["eval"], second["overlap"]) == ("line 3", "row 1", 1.0)


def test_remove_false_only_reports() -> None:
    rows = [sft(SHARES_13, "a", "line 1"), sft("other", "b", "line 2")]
    out, log = run_step("decontaminate", rows, eval_rows=[sft(EVAL, "x", "row 0")], remove=False)
    assert out == rows
    assert not log.dropped and not log.changed
    assert log.details["eval_sets"][0]["train_rows_overlapping"] == 1


def test_min_overlap() -> None:
    rows = [sft(SHARES_13, "a", "line 1"), sft(EVAL, "x", "line 2")]
    eval_rows = [sft(EVAL, "x", "row 0")]
    out, _ = run_step("decontaminate", rows, eval_rows=eval_rows, min_overlap=0.5)
    assert [r["source"] for r in out] == ["line 1"]  # overlap 1/9 is under 0.5; 1.0 is not


def test_eval_files_name_the_set(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bench.jsonl", [chat("hi", "hello"), chat(EVAL, "answer")])
    rows = [sft(SHARES_13, "a", "line 1"), sft("What is my balance?", "It is 5.", "line 2")]
    eval_rows = [sft("what is my balance", "it is 5", "row 0")]
    out, log = run_step(
        "decontaminate", rows, eval_files=[str(path)], eval_rows=eval_rows, remove=True
    )
    assert out == []
    assert log.dropped == {"overlaps eval set eval_rows": 1, f"overlaps eval set {path}": 1}
    by_name = {s["name"]: s for s in log.details["eval_sets"]}
    assert by_name[str(path)]["examples"][0]["eval"] == "line 2"  # the file's line number


def test_shared_system_prompt_is_not_contamination() -> None:
    system = "You are a careful assistant. " + EVAL  # long enough to hold many 13-grams
    rows = [sft("What colour is the sky?", "Blue.", "line 1", system=system)]
    eval_rows = [sft("How many legs has a spider?", "Eight.", "row 0", system=system)]
    assert content_text(rows[0]) == "What colour is the sky?\nBlue."
    out, log = run_step("decontaminate", rows, eval_rows=eval_rows)
    assert out == rows and not log.dropped


def test_needs_an_eval_set() -> None:
    with pytest.raises(DataError, match="eval_files or eval_rows"):
        run_step("decontaminate", [sft("q", "a", "line 1")])
    with pytest.raises(DataError, match="min_overlap"):
        run_step("decontaminate", [], eval_rows=[sft("q", "a", "r")], min_overlap=2.0)


def test_overlapping_requests_sees_through_a_template() -> None:
    refs = ["My card has not arrived yet!", "hi", "what is the exchange rate today"]
    texts = [
        "Classify the following message.\n\nMessage: my card has NOT arrived yet",  # holds one
        "exchange rate",  # inside a reference, but under 4 words: not counted
        "hi",  # equal: counted however short
        "say hi to the team",  # holds a short reference: not counted
        "what is the exchange rate",  # inside a reference, 5 words
        "my card has not arrived yesterday",  # shares words, not the whole request
        "xmy card has not arrived yet",  # not on a word boundary
    ]
    assert overlapping_requests(texts, refs) == [True, False, True, False, True, False, False]
    assert overlapping_requests([], refs) == [] and overlapping_requests(texts, []) == [False] * 7
