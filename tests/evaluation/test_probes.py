"""The shipped general-ability probe set: readable, varied, and its computed answers right."""

from __future__ import annotations

import json
import re
from collections import Counter

from tuneloop.data.readers import read_conversations
from tuneloop.evaluation.probes import general_probes


def _rows() -> list[dict]:
    return [json.loads(line) for line in general_probes().read_text("utf-8").splitlines()]


def test_probe_set_is_readable_varied_and_unique() -> None:
    data = read_conversations(general_probes())
    assert len(data.conversations) >= 200 and not data.errors
    rows = _rows()
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["messages"][0]["content"] for r in rows}) == len(rows)
    categories = Counter(r["category"] for r in rows)
    assert len(categories) >= 10 and max(categories.values()) <= 0.2 * len(rows)
    assert all(r["messages"][1]["content"].strip() for r in rows)


def test_templated_answers_are_correct() -> None:
    """Recompute every arithmetic, unit and string answer from its question."""
    ops = {
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "times": lambda a, b: a * b,
        "divided by": lambda a, b: a // b,
    }
    units = {
        ("minutes", "hours"): 60,
        ("seconds", "minutes"): 60,
        ("hours", "days"): 24,
        ("days", "weeks"): 7,
        ("centimetres", "metres"): 100,
        ("metres", "kilometres"): 1000,
        ("grams", "kilograms"): 1000,
        ("months", "years"): 12,
    }
    checked = 0
    for r in _rows():
        q, a = r["messages"][0]["content"], r["messages"][1]["content"]
        if m := re.match(r"What is (\d+) (\+|-|times|divided by) (\d+)\?", q):
            assert int(a) == ops[m[2]](int(m[1]), int(m[3])), q
        elif m := re.match(r"How many (\w+) are in (\d+) (\w+)\?", q):
            assert int(a) == int(m[2]) * units[(m[1], m[3])], q
        elif m := re.match(r"Write the word '(\w+)' backwards", q):
            assert a == m[1][::-1], q
        elif m := re.match(r"How many letters are in the word '(\w+)'", q):
            assert int(a) == len(m[1]), q
        elif m := re.match(r"How many words are in this sentence: '([^']+)'", q):
            assert int(a) == len(m[1].split()), q
        elif m := re.match(r"Sort these words alphabetically, separated by commas: (.+)\.", q):
            assert a == ", ".join(sorted(m[1].split(", "))), q
        elif r["category"] == "json":
            json.loads(a)  # every JSON reference is itself valid JSON
        else:
            continue
        checked += 1
    assert checked >= 70  # 30 arithmetic, 15 units, 20 strings, 10 JSON (less duplicates)
