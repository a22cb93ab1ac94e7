from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.data.clean import clean_text
from tuneloop.data.records import Row
from tuneloop.data.steps import run_step


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


# --- clean_text ----------------------------------------------------------------------------


def test_line_endings_and_control_characters() -> None:
    assert clean_text("Windows\r\nold Mac\rUnix\n") == "Windows\nold Mac\nUnix"
    assert clean_text("a\x00b\x07c\x1b[0m\x7f\ufeff") == "abc[0m"
    assert clean_text("page one\x0cpage two") == "page one\npage two"  # a break, not junk
    assert clean_text("keep\ttabs\n\tindented") == "keep tabs\n\tindented"


def test_unicode_nfkc() -> None:
    assert clean_text("ﬁne ｆｕｌｌ width①") == "fine full width1"
    assert clean_text("non\u00a0breaking") == "non breaking"
    assert clean_text("cafe\u0301") == "caf\u00e9"  # composed into one character


def test_whitespace() -> None:
    assert clean_text("  a  \t b   \n\n\n\n\n c  ") == "a b\n\n c"
    assert clean_text("one\n\ntwo") == "one\n\ntwo"  # a single blank line stays
    assert clean_text("- item\n  - nested   item") == "- item\n  - nested item"
    assert clean_text(" \n\t \n") == ""


def test_html_page() -> None:
    page = (
        "<!DOCTYPE html><html><head><style>p { color: red }</style>"
        "<script>track()</script></head><body><nav>Home | About</nav><header>Logo</header>"
        "<h1>Title</h1>\n    <p>First&nbsp;para &amp; <b>more</b>.</p>"
        "<p>Second<br>line</p><ul><li>one</li>\n<li>two</li></ul><!-- build 7 -->"
        "<table><tr><td>x</td><td>y</td></tr></table><footer>(c) 2024</footer></body></html>"
    )
    assert clean_text(page) == "Title\n\nFirst para & more.\n\nSecond\nline\n\none\ntwo\nx y"


def test_html_pre_keeps_indentation() -> None:
    html = "<p>Code:</p><pre>def f():\n    return 1 &lt; 2</pre>"
    assert clean_text(html) == "Code:\n\ndef f():\n    return 1 < 2"


@pytest.mark.parametrize(
    "text",
    [
        "a < b and c > d",
        "if x<y and y>z: pass",
        "Vec<String> and #include <stdio.h>",
        "Tom &amp; Jerry",  # entities alone do not make a text HTML
    ],
)
def test_text_without_tags_is_not_html(text: str) -> None:
    assert clean_text(text) == text


def test_escaped_markup_stays_escaped() -> None:
    # decoding "&lt;div&gt;" would make a tag that a second cleaning strips
    assert clean_text("<p>Use &lt;div&gt; for blocks</p>") == "Use &lt;div&gt; for blocks"
    assert clean_text("<p>1 &lt; 2</p>") == "1 < 2"


def test_strip_html_off_keeps_markup() -> None:
    assert clean_text("<b>bold</b>   text\r\n", strip_html=False) == "<b>bold</b> text"


def test_code_fences_keep_spacing_and_markup() -> None:
    text = (
        "<p>Intro</p>\n```python\ndef f():\n    x  =  1\n\n\n\n    return x   \n```\n"
        "after    code\n```html\n<div>  x  </div>\n```"
    )
    assert clean_text(text) == (
        "Intro\n\n```python\ndef f():\n    x  =  1\n\n\n\n    return x\n```\n"
        "after code\n```html\n<div>  x  </div>\n```"
    )


_PIECES = st.sampled_from(
    [
        "<p>",
        "</p>",
        "<br>",
        "<b>",
        "<li>",
        "</div>",
        "<pre>",
        "</pre>",
        "<script>",
        "</script>",
        "<!--",
        "-->",
        "&lt;",
        "&gt;",
        "&amp;",
        "&nbsp;",
        "&#13;",
        "```",
        "\n",
        "\r\n",
        "\t",
        "  ",
        "\x00",
        "\u2028",
        "\u0301",
        "e",
        "＜",
        "ﬁ",
        "<",
        ">",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(), st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=16).map("".join)
    ),
    st.booleans(),
)
def test_clean_text_is_idempotent(text: str, strip_html: bool) -> None:
    once = clean_text(text, strip_html)
    assert clean_text(once, strip_html) == once


# --- the clean step ------------------------------------------------------------------------


def clean_rows() -> list[Row]:
    return [
        {
            "kind": "sft",
            "messages": [
                msg("system", "  You are   helpful. "),
                msg("user", "<p>Hi&nbsp;there</p>"),
                msg("assistant", "Hello\r\n\r\n\r\n\r\nworld\x00"),
            ],
            "source": "line 1",
        },
        {
            "kind": "preference",
            "prompt": [msg("user", "Which?")],
            "chosen": [msg("assistant", "A")],
            "rejected": [msg("assistant", "<script>run()</script>")],
            "source": "line 2",
        },
        {"kind": "text", "text": "Already clean.", "source": "line 3"},
        {"kind": "text", "text": "<div>Title</div>\x07", "source": "line 4"},
    ]


def test_clean_step_changes_drops_and_counts() -> None:
    rows = clean_rows()
    original = copy.deepcopy(rows)
    out, log = run_step("clean", rows)
    assert rows == original  # input rows are not modified
    assert [r["source"] for r in out] == ["line 1", "line 3", "line 4"]
    assert out[0]["messages"] == [
        msg("system", "You are helpful."),
        msg("user", "Hi there"),
        msg("assistant", "Hello\n\nworld"),
    ]
    assert out[1] == original[2]
    assert out[2]["text"] == "Title"
    assert dict(log.changed) == {"cleaned": 2}
    assert dict(log.dropped) == {"empty after cleaning": 1}
    assert log.details == {"html_stripped": 3, "control_chars_removed": 2}


def test_clean_step_keeps_emptied_rows_without_drop_empty() -> None:
    out, log = run_step("clean", clean_rows(), drop_empty=False)
    assert len(out) == 4
    assert out[1]["rejected"] == [msg("assistant", "")]
    assert dict(log.changed) == {"cleaned": 3}
    assert dict(log.dropped) == {}


def test_clean_step_without_html_stripping() -> None:
    out, log = run_step("clean", clean_rows(), strip_html=False)
    assert len(out) == 4  # the <script> answer is kept as text
    assert out[0]["messages"][1]["content"] == "<p>Hi&nbsp;there</p>"
    assert out[3]["text"] == "<div>Title</div>"
    assert log.details == {"html_stripped": 0, "control_chars_removed": 2}


def test_clean_step_keeps_texts_that_were_already_empty() -> None:
    row = {
        "kind": "sft",
        "messages": [msg("system", ""), msg("user", "q"), msg("assistant", "a")],
        "source": "line 1",
    }
    out, log = run_step("clean", [row])
    assert out == [row]
    assert dict(log.dropped) == dict(log.changed) == {}


def test_rows_left_unchanged_are_kept_not_copied() -> None:
    # a copy of every unchanged row doubled the memory of a curation run
    rows: list[Row] = [
        {"kind": "text", "text": "Already clean.", "source": "line 1"},
        {"kind": "text", "text": "<p>Some <b>HTML</b></p>", "source": "line 2"},
    ]
    kept, log = run_step("clean", rows)
    assert kept[0] is rows[0] and kept[1] is not rows[1]
    assert log.changed == {"cleaned": 1}
    kept, _ = run_step("redact_pii", rows)
    assert kept[0] is rows[0]
