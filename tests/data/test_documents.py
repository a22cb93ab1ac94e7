from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.data.documents import chunk_text, document_rows, html_to_text, read_document
from tuneloop.errors import DataError

PAGE = """<!DOCTYPE html>
<html><head><title> Returns   policy </title>
<style>p { color: red }</style><script>var tracking = "<p>not text</p>";</script>
<meta charset="utf-8"></head>
<body>
<nav><a href="/">Home</a> | <a href="/shop">Shop</a></nav>
<header><div class="logo">ACME</div></header>
<main>
<h1>How to return an item</h1>
<!-- TODO: update for 2025 -->
<p>You have   30 days to return
   an item &amp; get a refund&nbsp;&mdash; no questions&#39;s asked.</p>
<div><p>Nested <b>bold</b> and <i>italic</i>.</p></div>
<ul><li>Pack it</li><li>Ship it</li></ul>
Line one<br>line two<br><br>after a gap
<table><tr><th>Item</th> <th>Days</th></tr>
<tr><td>Shoes</td> <td>30</td></tr></table>
<pre>  def f():
      return 1</pre>
<form><label>Search</label><input name="q"><button>Go</button></form>
<aside>Buy more!</aside>
</main>
<footer>(c) ACME</footer>
</body></html>
"""


def test_html_to_readable_text() -> None:
    assert html_to_text(PAGE) == (
        "Returns policy\n\n"
        "How to return an item\n\n"
        "You have 30 days to return an item & get a refund — no questions's asked.\n\n"
        "Nested bold and italic.\n\n"
        "Pack it\nShip it\n\n"
        "Line one\nline two\n\nafter a gap\n\n"
        "Item | Days\nShoes | 30\n\n"
        "  def f():\n      return 1"
    )


def test_html_title_and_head_quirks() -> None:
    # a title repeated as the first heading is not written twice
    assert html_to_text("<title>Guide</title><h1>Guide</h1><p>x</p>") == "Guide\n\nx"
    # `</head>` may be left out; the body must still be read
    assert html_to_text("<html><head><title>T</title><body><p>body</p>") == "T\n\nbody"
    # no title, an <svg><title> is not the page title, a self-closed <nav/> hides nothing
    assert html_to_text("<p>a<svg><title>icon</title></svg></p><nav/><p>b</p>") == "a\n\nb"
    # an unclosed skipped element inside another is closed with it
    assert html_to_text("<aside><form>x</aside><p>kept</p>") == "kept"
    assert html_to_text("<script>only()</script>") == ""


def test_read_text_markdown_and_html(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes("\ufeffcafé\r\nline".encode())
    (tmp_path / "b.md").write_text("# Title\n\ntext", encoding="utf-8")
    (tmp_path / "c.HTM").write_text("<p>hi &lt;there&gt;</p>", encoding="utf-8")
    assert read_document(tmp_path / "a.txt") == "café\nline"  # BOM and CRLF dropped
    assert read_document(tmp_path / "b.md") == "# Title\n\ntext"  # Markdown kept as written
    (tmp_path / "d.markdown").write_text("*md*", encoding="utf-8")
    assert read_document(tmp_path / "d.markdown") == "*md*"
    assert read_document(tmp_path / "c.HTM") == "hi <there>"


def test_read_document_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: not UTF-8 text \(invalid .* at byte 3\)"):
        read_document(bad)
    with pytest.raises(DataError, match=r"cannot read .*missing\.md"):
        read_document(tmp_path / "missing.md")
    with pytest.raises(DataError, match=r"report\.docx: unsupported document type '\.docx'"):
        read_document(tmp_path / "report.docx")
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\nthis is not a pdf body")
    with pytest.raises(DataError, match=r"broken\.pdf: not a readable PDF"):
        read_document(broken)


def pdf_bytes(pages: list[str]) -> bytes:
    """A minimal PDF (one Helvetica text line per page), written byte by byte so the test
    needs no PDF writer: objects, then the cross-reference table with their offsets."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    out = b"%PDF-1.4\n"
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out


def test_pdf_text_comes_page_by_page(tmp_path: Path) -> None:
    path = tmp_path / "guide.pdf"
    path.write_bytes(pdf_bytes(["Returns take 30 days.", "Warranty lasts 2 years."]))
    assert read_document(path) == "Returns take 30 days.\n\nWarranty lasts 2 years."
    rows, problems = document_rows([path])
    assert rows[0]["source"] == "guide.pdf" and not problems


def test_document_rows_reports_bad_files_and_keeps_the_rest(tmp_path: Path) -> None:
    good = tmp_path / "sub" / "guide.md"
    good.parent.mkdir()
    good.write_text("Some text.", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    nav_only = tmp_path / "nav.html"
    nav_only.write_text("<nav>menu</nav><!-- nothing else -->", encoding="utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa")
    rows, problems = document_rows([good, empty, nav_only, bad])
    assert rows == [{"kind": "text", "text": "Some text.", "source": "guide.md"}]
    assert [(p.name, problem.split(":")[0]) for p, problem in problems] == [
        ("empty.txt", "empty document (no text after conversion)"),
        ("nav.html", "empty document (no text after conversion)"),
        ("bad.txt", str(bad)),
    ]
    assert "not UTF-8 text" in problems[2][1]


TEXT = (
    "Hello world. This is a test! Another sentence?\n\n"
    "Second para here.\nWith a line.\n\n\n\n"
    "Third paragraph has averyveryverylongwordthatexceeds the limit."
)


def test_chunks_keep_whole_paragraphs_when_they_fit() -> None:
    assert chunk_text(TEXT, 200) == [TEXT]
    assert chunk_text(TEXT, 80) == [
        "Hello world. This is a test! Another sentence?\n\nSecond para here.\nWith a line.",
        "Third paragraph has averyveryverylongwordthatexceeds the limit.",
    ]


def test_long_paragraph_is_cut_at_sentences_then_words() -> None:
    # The third paragraph (63 chars) does not fit in 60: it starts its own chunk and is cut
    # between words; its pieces are not packed with the second paragraph.
    assert chunk_text(TEXT, 60) == [
        "Hello world. This is a test! Another sentence?",
        "Second para here.\nWith a line.",
        "Third paragraph has averyveryverylongwordthatexceeds the",
        "limit.",
    ]
    assert chunk_text(TEXT, 30)[:3] == [
        "Hello world. This is a test!",
        "Another sentence?",
        "Second para here.\nWith a line.",
    ]
    assert chunk_text('He said "Stop." Then left.', 16) == ['He said "Stop."', "Then left."]


def test_only_an_overlong_word_is_cut() -> None:
    assert chunk_text("abcdefghij", 3) == ["abc", "def", "ghi", "j"]
    # the tail of a cut word shares a chunk with the words after it
    assert chunk_text("has averyverylongword the end", 10) == [
        "has",
        "averyveryl",
        "ongword",
        "the end",
    ]
    assert chunk_text("averyverylongword the end", 12) == ["averyverylon", "gword the", "end"]


def test_overlap_repeats_the_end_of_the_previous_chunk() -> None:
    chunks = chunk_text(TEXT, 30, overlap=12)
    assert chunks[:3] == [
        "Hello world. This is a test!",
        "is a test! Another sentence?",
        "Second para here.\nWith a line.",  # 18 chars of overlap would not fit
    ]
    assert all(len(c) <= 30 for c in chunks)


def test_chunk_edge_cases() -> None:
    assert chunk_text("") == [] and chunk_text(" \n\n ") == []
    assert chunk_text("  padded  ") == ["padded"]
    with pytest.raises(ValueError, match="max_chars must be at least 1"):
        chunk_text("x", 0)
    with pytest.raises(ValueError, match=r"overlap must be in \[0, max_chars\)"):
        chunk_text("x", 10, overlap=10)


_words = st.lists(
    st.one_of(
        st.text(alphabet="abcXYZé.!?\"'", min_size=1, max_size=15),
        st.sampled_from([" ", "\n", "\n\n", ". ", "\n \n", "\t", "\u00a0"]),
    ),
    max_size=60,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_words, st.text()), st.integers(1, 40), st.integers(0, 39))
def test_chunks_rejoin_and_fit(text: str, max_chars: int, overlap: int) -> None:
    chunks = chunk_text(text, max_chars)
    assert all(0 < len(c) <= max_chars and c == c.strip() for c in chunks)
    assert "".join("".join(chunks).split()) == "".join(text.split())
    if overlap < max_chars:
        overlapped = chunk_text(text, max_chars, overlap)
        assert len(overlapped) == len(chunks)
        assert all(len(c) <= max_chars and c in text for c in overlapped)
        assert all(o.endswith(c) for o, c in zip(overlapped, chunks, strict=True))
