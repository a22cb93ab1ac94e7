from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.data.preference import (
    parse_hh_transcript,
    preference_problems,
    split_preference,
    to_kto_row,
    to_preference_row,
)
from tuneloop.data.steps import run_step

from conftest import REPO

SHARED_DATA = REPO.parent / "shared" / "data"
HH_PAIRS = SHARED_DATA / "hh-rlhf-harmless" / "pairs.jsonl"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def pref(chosen: str, rejected: str) -> dict[str, object]:
    return {"kind": "preference", "prompt": [user("q")], "chosen": [bot(chosen)],
            "rejected": [bot(rejected)], "source": "t"}  # fmt: skip


# --- parse_hh_transcript ---------------------------------------------------------------


def test_parse_multi_turn_strips_whitespace() -> None:
    text = "\n\nHuman:  hi there \n\nAssistant: hello\n\nHuman: how?\r\n\r\nAssistant:  like so  \n"
    assert parse_hh_transcript(text) == [
        user("hi there"),
        bot("hello"),
        user("how?"),
        bot("like so"),
    ]


def test_speaker_tags_not_after_a_blank_line_are_text() -> None:
    # As in the real data: the model echoing a tag, a tag mid-paragraph, a tag after one \n.
    text = "\n\nHuman: q\n\nAssistant: Human: I think so.  Human: ok?\nAssistant: fine"
    assert parse_hh_transcript(text) == [
        user("q"),
        bot("Human: I think so.  Human: ok?\nAssistant: fine"),
    ]


def test_blank_lines_inside_a_turn_are_kept() -> None:
    text = "Human: list\n\nAssistant: Ideas:\n\n• one\n\n• two"
    assert parse_hh_transcript(text)[1] == bot("Ideas:\n\n• one\n\n• two")


def test_empty_final_answer_is_tolerated() -> None:
    assert parse_hh_transcript("\n\nHuman: hi\n\nAssistant: ") == [user("hi"), bot("")]


def test_repeated_speaker_is_merged_into_one_turn() -> None:
    text = "Human: key?\n\nAssistant: here:\n\nAssistant: ABC\n\nHuman: a\n\nHuman: b"
    assert parse_hh_transcript(text) == [user("key?"), bot("here:\n\nABC"), user("a\n\nb")]
    # a repeated empty final tag adds nothing
    assert parse_hh_transcript("Human: q\n\nAssistant: a\n\nAssistant:") == [user("q"), bot("a")]


def test_transcript_may_end_with_a_user_turn() -> None:
    assert parse_hh_transcript("Human: q\n\nAssistant: a\n\nHuman: more") == [
        user("q"),
        bot("a"),
        user("more"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no 'Human:' turn"),
        ("just some text", "no 'Human:' turn"),
        ("\n\nAssistant: hello", "no 'Human:' turn"),
        ("Hello\nHuman: hi\n\nAssistant: yo", r"text before the first turn: 'Hello\\nHuman: hi'"),
        ("preamble\n\nHuman: hi\n\nAssistant: yo", "text before the first turn: 'preamble'"),
        ("Assistant: hi\n\nHuman: q\n\nAssistant: a", "turn 1 is 'Assistant:'"),
        ("Human: q\n\nAssistant:\n\nHuman: again", r"turn 2 \('Assistant:'\) is empty"),
        ("Human:  \n\nAssistant: a", r"turn 1 \('Human:'\) is empty"),
        ("Human: q\n\nAssistant: a\n\nHuman: ", r"turn 3 \('Human:'\) is empty"),
    ],
)  # fmt: skip
def test_malformed_transcripts_are_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hh_transcript(text)


def test_non_string_transcript() -> None:
    with pytest.raises(ValueError, match="must be a string, got list"):
        parse_hh_transcript(["Human: hi"])  # type: ignore[arg-type]


_pieces = st.one_of(
    st.sampled_from(["\n\nHuman:", "\n\nAssistant:", "Human:", "Assistant:", "\n", " ", "\r\n"]),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.lists(_pieces, max_size=12).map("".join)))
def test_parse_raises_only_value_error(text: str) -> None:
    try:
        messages = parse_hh_transcript(text)
    except ValueError:
        return
    assert messages[0]["role"] == "user"
    roles = [m["role"] for m in messages]
    assert all(a != b for a, b in itertools.pairwise(roles))  # always alternating
    assert all(m["content"] for m in messages[:-1])


# --- split_preference ------------------------------------------------------------------


def test_split_single_and_multi_turn() -> None:
    assert split_preference([user("q"), bot("good")], [user("q"), bot("bad")]) == (
        [user("q")],
        [bot("good")],
        [bot("bad")],
    )
    shared = [system("s"), user("q1"), bot("a1"), user("q2")]
    prompt, chosen, rejected = split_preference([*shared, bot("good")], [*shared, bot("bad")])
    assert prompt == shared and chosen == [bot("good")] and rejected == [bot("bad")]


def test_split_keeps_a_shared_assistant_start_in_both_tails() -> None:
    # Both answers open with the same message: the prompt still ends at the user message.
    prompt, chosen, rejected = split_preference(
        [user("q"), bot("Sure."), bot("good")], [user("q"), bot("Sure."), bot("bad")]
    )
    assert prompt == [user("q")]
    assert chosen == [bot("Sure."), bot("good")] and rejected == [bot("Sure."), bot("bad")]


def test_split_identical_conversations_is_not_an_error() -> None:
    conv = [user("q"), bot("a")]
    assert split_preference(conv, list(conv)) == ([user("q")], [bot("a")], [bot("a")])


def test_split_compares_stripped_content() -> None:
    prompt, _, _ = split_preference([user("q "), bot("x")], [user(" q"), bot("y")])
    assert prompt == [user("q ")]


@pytest.mark.parametrize(
    ("chosen", "rejected", "message"),
    [
        ([user("q1"), bot("a")], [user("q2"), bot("a")], "differ at message 0"),
        ([bot("a"), user("q")], [bot("b"), user("q")], "share no prompt"),
        ([user("q"), bot("a"), user("x"), bot("1")], [user("q"), bot("b"), user("y"), bot("2")],
         r"differ before their last user message \(chosen message 2 is 'user'"),
        ([user("q"), bot("a"), user("x"), bot("1")], [user("q"), bot("a")],
         "differ before their last user message"),
        ([user("q")], [user("q")], "chosen has no assistant answer"),
        ([user("q"), bot("a")], [user("q")], "rejected has no assistant answer"),
    ],
)  # fmt: skip
def test_split_errors(chosen: list, rejected: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_preference(chosen, rejected)


# --- to_preference_row -----------------------------------------------------------------


def test_row_from_strings() -> None:
    row = to_preference_row({"prompt": "q", "chosen": "good", "rejected": "bad"}, "line 1")
    assert row == {
        "kind": "preference",
        "prompt": [user("q")],
        "chosen": [bot("good")],
        "rejected": [bot("bad")],
        "source": "line 1",
    }


def test_row_from_messages_and_full_conversations() -> None:
    prompt = [user("q1"), bot("a1"), user("q2")]
    row = to_preference_row(
        {"prompt": prompt, "chosen": [*prompt, bot("good")], "rejected": [bot("bad")]}, "s"
    )
    assert row["prompt"] == prompt
    assert row["chosen"] == [bot("good")] and row["rejected"] == [bot("bad")]
    # a string prompt with answers given as whole conversations
    row = to_preference_row(
        {"prompt": "q", "chosen": [user("q"), bot("g")], "rejected": [user("q"), bot("b")]}, "s"
    )
    assert row["prompt"] == [user("q")] and row["chosen"] == [bot("g")]


def test_row_system_field() -> None:
    raw = {"system": "be kind", "prompt": "q", "chosen": "g", "rejected": "b"}
    assert to_preference_row(raw, "s")["prompt"] == [system("be kind"), user("q")]
    # conversations that already carry the system message are stripped of it too
    raw = {"system": "S", "prompt": "q", "chosen": [system("S"), user("q"), bot("g")],
           "rejected": [user("q"), bot("b")]}  # fmt: skip
    row = to_preference_row(raw, "s")
    assert row["prompt"] == [system("S"), user("q")] and row["chosen"] == [bot("g")]
    blank = {"system": "  ", "prompt": "q", "chosen": "g", "rejected": "b"}
    assert to_preference_row(blank, "s")["prompt"] == [user("q")]


def test_row_from_hh_transcripts() -> None:
    shared = "\n\nHuman: q1\n\nAssistant: a1\n\nHuman: q2"
    raw = {"chosen": shared + "\n\nAssistant: good", "rejected": shared + "\n\nAssistant: bad"}
    row = to_preference_row(raw, "line 3")
    assert row["prompt"] == [user("q1"), bot("a1"), user("q2")]
    assert row["chosen"] == [bot("good")] and row["rejected"] == [bot("bad")]
    raw["system"] = "S"
    assert to_preference_row(raw, "s")["prompt"][0] == system("S")


def test_row_from_message_lists_without_prompt() -> None:
    raw = {"chosen": [user("q"), bot("g")], "rejected": [user("q"), bot("b")]}
    assert to_preference_row(raw, "s")["prompt"] == [user("q")]


def test_row_keeps_empty_answers_for_the_checks() -> None:
    row = to_preference_row({"prompt": "q", "chosen": "", "rejected": "b"}, "s")
    assert row["chosen"] == [bot("")]
    assert preference_problems(row) == ["empty chosen"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1, 2], "expected a JSON object, got list"),
        ({"prompt": "q", "rejected": "b"}, "no 'chosen' field"),
        ({"prompt": "q", "chosen": "g"}, "no 'rejected' field"),
        ({"prompt": 3, "chosen": "g", "rejected": "b"}, "'prompt' must be a string or a list"),
        ({"prompt": "", "chosen": "g", "rejected": "b"}, "'prompt' message 0 is empty"),
        ({"prompt": [], "chosen": "g", "rejected": "b"}, "'prompt' has no messages"),
        ({"prompt": [user("q"), bot("a")], "chosen": "g", "rejected": "b"},
         "'prompt' must end with a user message, not 'assistant'"),
        ({"prompt": "q", "chosen": ["g"], "rejected": "b"}, "'chosen' message 0 must be an object"),
        ({"prompt": "q", "chosen": [{"role": "bot", "content": "g"}], "rejected": "b"},
         "'chosen' message 0: role 'bot' is not one of"),
        ({"prompt": "q", "chosen": "g", "rejected": [{"role": "assistant", "content": 5}]},
         "'rejected' message 0: content must be a string, got int"),
        ({"prompt": "q", "chosen": [user("other"), bot("g")], "rejected": "b"},
         "'chosen' message 0 is 'user'"),
        ({"prompt": "q", "chosen": "g", "rejected": "b", "system": 1}, "'system' must be a string"),
        ({"prompt": [system("a"), user("q")], "chosen": "g", "rejected": "b", "system": "b"},
         "both a 'system' field and a system message"),
        ({"chosen": "Human: q\n\nAssistant: g", "rejected": "x"}, "'rejected': no 'Human:' turn"),
        ({"chosen": "Human: q\n\nAssistant: g", "rejected": "Human: other\n\nAssistant: b"},
         "share no prompt"),
        ({"chosen": 7, "rejected": "Human: q"}, "'chosen' must be a string or a list"),
    ],
)  # fmt: skip
def test_row_errors(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_preference_row(raw, "s")  # type: ignore[arg-type]


# --- to_kto_row ------------------------------------------------------------------------


def test_kto_rows() -> None:
    row = to_kto_row({"prompt": "q", "completion": "a", "label": True}, "line 2")
    assert row == {
        "kind": "kto",
        "prompt": [user("q")],
        "completion": [bot("a")],
        "desirable": True,
        "source": "line 2",
    }
    raw = {"prompt": [user("q")], "completion": [user("q"), bot("a")], "label": 0, "system": "S"}
    row = to_kto_row(raw, "s")
    assert row["prompt"] == [system("S"), user("q")]
    assert row["completion"] == [bot("a")] and row["desirable"] is False
    assert to_kto_row({**raw, "label": 1}, "s")["desirable"] is True


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"prompt": "q", "completion": "a"}, "no 'label' field"),
        ({"prompt": "q", "label": True}, "no 'completion' field"),
        ({"prompt": "q", "completion": "a", "label": "true"}, r"true/false \(or 1/0\), got 'true'"),
        ({"prompt": "q", "completion": "a", "label": 2}, "got 2"),
        ({"prompt": "q", "completion": "a", "label": 1.0}, "got 1.0"),
        ({"prompt": "q", "completion": "a", "label": None}, "got None"),
        ({"prompt": "q", "completion": "  ", "label": True}, "'completion' is empty"),
        ({"prompt": "q", "completion": [user("x")], "label": True}, "'completion' message 0"),
        ({"prompt": "", "completion": "a", "label": True}, "'prompt' message 0 is empty"),
    ],
)
def test_kto_errors(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_kto_row(raw, "s")


# --- preference_problems and the curation step -----------------------------------------


@pytest.mark.parametrize(
    ("chosen", "rejected", "problems"),
    [
        ("Good answer.", "Bad answer.", []),
        ("same  text\n", " same text", ["chosen equals rejected"]),
        ("", "b", ["empty chosen"]),
        ("a", "   ", ["empty rejected"]),
        ("", "", ["empty chosen", "empty rejected", "chosen equals rejected"]),
        ("You're welcome.", "You're welcome.  Anything else?", ["chosen is a prefix of rejected"]),
        ("Sure, here it\nis and more", "Sure, here  it", ["rejected is a prefix of chosen"]),
    ],
)
def test_preference_problems(chosen: str, rejected: str, problems: list[str]) -> None:
    assert preference_problems(pref(chosen, rejected)) == problems


def test_problems_join_multi_message_answers() -> None:
    row = pref("a", "a")
    row["chosen"] = [bot("a"), bot("b")]
    assert preference_problems(row) == ["rejected is a prefix of chosen"]


def test_preference_checks_step_drops_and_counts() -> None:
    sft = {"kind": "sft", "messages": [user("q"), bot("a")], "source": "x"}
    rows = [pref("g", "b"), pref("", ""), pref("same", "same"), sft, pref("a", "a b")]
    kept, log = run_step("preference_checks", rows)
    assert kept == [rows[0], sft]
    # one drop per row, under its first reason; every reason is counted in details
    assert log.dropped == Counter(
        {"empty chosen": 1, "chosen equals rejected": 1, "chosen is a prefix of rejected": 1}
    )
    assert log.details["flagged"] == {
        "empty chosen": 1,
        "empty rejected": 1,
        "chosen equals rejected": 2,
        "chosen is a prefix of rejected": 1,
    }


def test_preference_checks_flag_only() -> None:
    rows = [pref("g", "b"), pref("same", "same")]
    kept, log = run_step("preference_checks", rows, drop=False)
    assert kept == rows and not log.dropped
    assert log.details["flagged"] == {"chosen equals rejected": 1}
    # a kept row with a problem still gets a sample, so the card can show it
    assert log.samples == {"flagged: chosen equals rejected": [rows[1]]}


# --- the real HH harmless pairs --------------------------------------------------------


@pytest.fixture(scope="module")
def hh_raw() -> list[dict[str, str]]:
    if not HH_PAIRS.exists():
        pytest.skip(f"{HH_PAIRS} not present")
    return [json.loads(line) for line in HH_PAIRS.read_text(encoding="utf-8").splitlines()]


def test_real_hh_pairs_all_parse(hh_raw: list[dict[str, str]]) -> None:
    assert len(hh_raw) == 1800
    rows = [to_preference_row(raw, f"line {i}") for i, raw in enumerate(hh_raw, start=1)]
    assert len(rows) == 1800  # every pair parses; none raised
    for row in rows:
        assert row["prompt"] and row["prompt"][-1]["role"] == "user"
        assert all(m["content"] for m in row["prompt"])
    # In harmless-base both sides of a pair are the same conversation up to the final answer,
    # so the shared prefix is found for all 1,800 pairs and every tail is one answer. That
    # includes the 8 pairs with a repeated "Assistant:" tag, merged into one turn: kept apart,
    # 5 of them would give a two-message chosen/rejected tail and 3 a non-alternating prompt.
    assert Counter((len(r["chosen"]), len(r["rejected"])) for r in rows) == {(1, 1): 1800}
    tags = re.compile(r"(?:\A|(?<=\n\n))(Human|Assistant):")
    repeated = sum(
        any(
            "AssistantAssistant" in "".join(m.group(1) for m in tags.finditer(side.strip()))
            for side in raw.values()
        )
        for raw in hh_raw
    )
    assert repeated == 8
    # 1,285 prompts are multi-turn (more than one user message); 515 are single-turn.
    turns = Counter(sum(m["role"] == "user" for m in r["prompt"]) > 1 for r in rows)
    assert turns == {True: 1285, False: 515}


def test_real_hh_degenerate_pairs(hh_raw: list[dict[str, str]]) -> None:
    rows = [to_preference_row(raw, f"line {i}") for i, raw in enumerate(hh_raw, start=1)]
    flagged = {r["source"]: preference_problems(r) for r in rows if preference_problems(r)}
    # Measured: three chosen transcripts end with an empty "Assistant:" turn, and on line 470
    # the rejected "You’re welcome." is the start of the chosen answer. No pair has identical
    # sides, an empty rejected answer, or a chosen answer that prefixes the rejected one.
    assert flagged == {
        "line 60": ["empty chosen"],
        "line 409": ["empty chosen"],
        "line 1404": ["empty chosen"],
        "line 470": ["rejected is a prefix of chosen"],
    }
    kept, log = run_step("preference_checks", rows)
    assert len(kept) == 1796
    assert log.dropped == Counter({"empty chosen": 3, "rejected is a prefix of chosen": 1})


def test_sft_reads_pairs_as_their_chosen_conversation_and_refuses_kto_rows(
    tmp_path: Path,
) -> None:
    """SFT on the chosen answers (the stage before a reward model or DPO) reads a pairs file
    directly; unpaired KTO rows, half of them undesirable answers, are refused."""
    from tuneloop.data.readers import read_conversations
    from tuneloop.errors import DataError

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps(
            {
                "chosen": "\n\nHuman: hi\n\nAssistant: hello",
                "rejected": "\n\nHuman: hi\n\nAssistant: go away",
            }
        )
        + "\n",
        encoding="utf-8",
    )
    read = read_conversations(pairs)
    assert read.conversations == [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ]
    kto = tmp_path / "kto.jsonl"
    kto.write_text(
        json.dumps({"prompt": "hi", "completion": "go away", "label": False}) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError, match="holds kto rows"):
        read_conversations(kto)


# --- prompt-only rows ------------------------------------------------------------------


def test_prompt_only_rows_are_read_and_refused_where_an_answer_is_needed(
    tmp_path: Path,
) -> None:
    """`{"prompt": ...}` alone is a question for the methods that sample their own answers
    (PPO, GRPO, RLAIF, compare --data); SFT and evaluation refuse it, naming the row."""
    from tuneloop.data.readers import read_conversations, read_rows
    from tuneloop.data.records import prompt_of
    from tuneloop.errors import DataError

    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"prompt": "how do I reset it?"},
                {"prompt": [user("hi"), bot("hello"), user("and now?")], "system": "be brief"},
                {"prompt": ""},
                {"prompt": [user("q"), bot("an answer at the end")]},
                {"prompt": 3},
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    read = read_rows(path)
    assert read.format == "prompt" and [r["kind"] for r in read.rows] == ["prompt", "prompt"]
    assert prompt_of(read.rows[0]) == [user("how do I reset it?")]
    assert read.rows[1]["prompt"] == [
        system("be brief"),
        user("hi"),
        bot("hello"),
        user("and now?"),
    ]
    problems = {e.where: e.problem for e in read.errors}
    assert problems == {
        "line 3": "'prompt' message 0 is empty",
        "line 4": "'prompt' must end with a user message, not 'assistant'",
        "line 5": "'prompt' must be a string or a list of messages, got int",
    }
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "q"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"holds prompt rows \(first: line 1\).*for ppo, grpo"):
        read_conversations(good)
    # a prompt with an answer field is still a prompt/response row
    both = tmp_path / "both.jsonl"
    both.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n", encoding="utf-8")
    assert read_rows(both).rows[0]["kind"] == "sft"


def test_curation_keeps_prompt_only_rows(tmp_path: Path) -> None:
    """The answer checks (length, repetition, conflicts) do not apply to a row without one."""
    rows = [
        {"kind": "prompt", "prompt": [user(f"question number {i}")], "source": f"line {i}"}
        for i in range(3)
    ]
    kept, log = run_step("score", rows)
    assert kept == rows and not log.dropped
    kept, log = run_step("validate", rows, model=None)
    assert kept == rows and not log.dropped
