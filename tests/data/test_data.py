from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.data import detect_format, read_conversations, read_rows
from tuneloop.errors import DataError

from conftest import chat, write_jsonl


def test_messages_jsonl_with_system_prompt(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [chat("hi", "hello"), chat("q", "a", system="S")])
    data = read_conversations(path, system_prompt="DEFAULT")
    assert data.format == "messages"
    assert data.conversations[0][0] == {"role": "system", "content": "DEFAULT"}
    assert data.conversations[1][0] == {"role": "system", "content": "S"}  # own system kept


def test_other_formats_are_detected(tmp_path: Path) -> None:
    rows = [
        {"prompt": "p1", "response": "r1"},
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "g"}]},
        {"question": "q", "answer": "a"},
    ]
    assert [detect_format(r) for r in rows] == [
        "prompt_response",
        "alpaca",
        "sharegpt",
        "prompt_response",
    ]
    data = read_conversations(write_jsonl(tmp_path / "mixed.jsonl", rows))
    assert data.conversations[1][0]["content"] == "Translate\n\nchat"
    assert data.conversations[2] == [
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "g"},
    ]


def test_csv_and_json_files(tmp_path: Path) -> None:
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('prompt,completion\n"Hello, you",Hi\nQ2,A2\n', encoding="utf-8")
    data = read_conversations(csv_path)
    assert [c[-1]["content"] for c in data.conversations] == ["Hi", "A2"]
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps([chat("a", "b")]), encoding="utf-8")
    assert len(read_conversations(json_path).conversations) == 1


def test_malformed_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    good = json.dumps(chat("q", "a"))
    path.write_text(f"{good}\n{good}\n{{not json\n{good}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"1 malformed row\(s\): line 3: invalid JSON"):
        read_conversations(path)
    # non-strict keeps every good row and reports the bad one
    data = read_conversations(path, strict=False)
    assert len(data.conversations) == 3
    assert [str(e) for e in data.errors] == [
        "line 3: invalid JSON (Expecting property name enclosed in double quotes at column 2)"
    ]


def test_an_unterminated_json_string_says_where_it_starts_once(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(chat("q", "a")) + '\n{"messages": "abc', encoding="utf-8")
    data = read_conversations(path, strict=False)
    assert [str(e) for e in data.errors] == [
        "line 2: invalid JSON (Unterminated string starting at column 14)"
    ]


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"messages": [{"role": "user", "content": "q"}]}, "missing assistant answer"),
        ({"messages": [{"role": "bot", "content": "q"}]}, "message 0: role 'bot' is not one of"),
        (
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
            "message 0 content is empty",
        ),
        (
            {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]},
            "message 0 content must be a string, got int",
        ),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "expected role 'user'"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "message 1: expected role 'assistant'",
        ),
        ({"prompt": "p"}, "no answer field (response, completion, answer or output)"),
        ([1, 2], "expected a JSON object, got list"),
    ],
)
def test_row_problems_are_explained(tmp_path: Path, row: object, problem: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [chat("ok", "fine"), row])
    data = read_conversations(
        path,
        fmt="messages" if isinstance(row, dict) and "messages" in row else "auto",
        strict=False,
    )
    assert len(data.conversations) == 1
    assert len(data.errors) == 1 and data.errors[0].where == "line 2"
    assert problem in data.errors[0].problem


def test_missing_empty_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        read_conversations(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"is a directory with no \.txt"):
        read_conversations(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no usable rows"):
        read_conversations(empty)
    with pytest.raises(DataError, match="unknown data format"):
        read_conversations(empty, fmt="parquetish")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="not UTF-8"):
        read_conversations(path)


def test_forced_format_reports_missing_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}, {"prompt": "p"}])
    data = read_conversations(path, fmt="prompt_response", strict=False)
    assert [str(e) for e in data.errors] == [
        "line 2: no answer field (expected one of response, completion, answer, output)"
    ]


def test_csv_quoted_newlines_stay_in_one_row(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,response\n"line one\nline two","answer, with comma"\n', "utf-8")
    data = read_conversations(path)
    assert data.conversations == [
        [
            {"role": "user", "content": "line one\nline two"},
            {"role": "assistant", "content": "answer, with comma"},
        ]
    ]


def test_csv_unterminated_quote_names_the_line_where_it_opens(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,response\nhi,hello\n"never closed,x\nmore,rows\n', "utf-8")
    result = read_rows(path, strict=False)
    assert [r["source"] for r in result.rows] == ["line 2"]
    assert [str(e) for e in result.errors] == [
        "line 3: unterminated quote: the quoted field that opens on this line is never "
        "closed, so the rest of the file was read into it"
    ]


def test_jsonl_is_read_line_by_line_with_the_same_result(tmp_path: Path) -> None:
    # BOM, blank lines, an undecodable line and a bad line: same rows and errors as ever
    path = tmp_path / "d.jsonl"
    good = json.dumps({"prompt": "p", "response": "r"}).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n\n\xff\xfe\n{bad\n" + good + b"\r\n")
    result = read_rows(path, strict=False)
    assert [r["source"] for r in result.rows] == ["line 1", "line 5"]
    assert [e.where for e in result.errors] == ["line 3", "line 4"]
    assert result.format == "prompt_response"


def test_reading_jsonl_holds_only_the_rows(tmp_path: Path) -> None:
    # the file's bytes, its lines and the parsed objects are never all held at once: the
    # peak while reading is the rows read (it was 1.4x them)
    import tracemalloc

    rows = [{"prompt": f"question {i} " * 8, "response": f"answer {i} " * 20} for i in range(3000)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    read_rows(path)  # imports outside the measurement
    tracemalloc.start()
    result = read_rows(path)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(result.rows) == 3000 and peak < 1.1 * held
