"""Raw domain documents (.txt, .md/.markdown, .html/.htm, .pdf) as `text` rows for continued
pretraining and as the corpus of a retrieval index (`tuneloop.data.retrieval`).

HTML is turned into the text a reader would see, with the standard library only: page
furniture (navigation, headers, footers, forms, scripts) is dropped because repeated on every
page it would dominate what the model learns. `chunk_text` cuts long documents at paragraph,
then sentence, then word boundaries so that no chunk starts or ends mid-word.

PDF text comes from pypdf's text layer, page by page (a blank line between pages); a
scanned PDF without one has no text and is reported as empty rather than guessed at.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from tuneloop.data.records import Row
from tuneloop.errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
PDF_SUFFIXES = (".pdf",)
DOCUMENT_SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + PDF_SUFFIXES

# Elements whose content is not part of the document's readable text.
_SKIP = frozenset(
    {
        "script", "style", "nav", "header", "footer", "aside", "form",
        "noscript", "template", "svg", "head", "iframe", "select",
    }
)  # fmt: skip
# Elements that start a new paragraph (blank line) or a new line (`<br>` too).
_PARAGRAPH = frozenset(
    {
        "p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul", "ol",
        "dl", "section", "article", "main", "figure", "hr", "address", "details", "fieldset",
    }
)  # fmt: skip
_LINE = frozenset({"div", "li", "tr", "dt", "dd", "figcaption", "summary", "caption"})
_CELL = frozenset({"td", "th"})


class _TextExtractor(HTMLParser):
    """Collects readable text; `convert_charrefs` (on by default) unescapes entities.

    Line breaks are owed (`pending`) rather than written, so nested blocks such as
    `<div><p>` give one break, not a stack of them, and none leads the text.
    """

    def __init__(self) -> None:
        super().__init__()
        self.out: list[str] = []
        self.title: list[str] = []
        self.skipping: list[str] = []  # open elements whose content is dropped
        self.in_title = False
        self.title_done = False
        self.pre_depth = 0
        self.pending = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._close_skip("head")  # `</head>` may be left out
        if tag == "title" and not self.title_done and self.skipping in ([], ["head"]):
            self.in_title = True
        elif tag in _SKIP:
            self.skipping.append(tag)
        elif self.skipping:
            return
        elif tag == "br":
            self.pending = min(self.pending + 1, 2)
        elif tag in _PARAGRAPH:
            self.pending = max(self.pending, 2)
            self.pre_depth += tag == "pre"
        elif tag in _LINE:
            self.pending = max(self.pending, 1)
        elif tag in _CELL and self.out and not self.pending:
            self._write(" | ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.title_done |= self.in_title
            self.in_title = False
        elif tag in _SKIP:
            self._close_skip(tag)
        elif self.skipping or tag == "br":
            return
        elif tag in _PARAGRAPH:
            self.pre_depth = max(0, self.pre_depth - (tag == "pre"))
            self.pending = max(self.pending, 2)
        elif tag in _LINE:
            self.pending = max(self.pending, 1)

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.skipping:
            self._write(data)

    def _close_skip(self, tag: str) -> None:
        # Closing an element also closes any left open inside it, as browsers do.
        if tag in self.skipping:
            del self.skipping[len(self.skipping) - 1 - self.skipping[::-1].index(tag) :]

    def _write(self, text: str) -> None:
        if not self.pre_depth:
            text = re.sub(r"\s+", " ", text)
            if self.pending or not self.out or self.out[-1].endswith((" ", "\n")):
                text = text.lstrip(" ")
        if not text:
            return
        if self.pending and self.out:
            self.out.append("\n" * self.pending)
        self.pending = 0
        self.out.append(text)


def html_to_text(html: str) -> str:
    """Readable text of an HTML page, its <title> first when it has one."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    body = "".join(parser.out)
    body = "\n".join(line.rstrip() for line in body.split("\n"))
    body = re.sub(r"\n{3,}", "\n\n", body).strip("\n")
    title = " ".join("".join(parser.title).split())
    if title and not body.startswith(title):
        body = f"{title}\n\n{body}" if body else title
    return body


def read_document(path: Path) -> str:
    """The text of a .txt, .md, .html/.htm or .pdf document; DataError naming the file if
    unreadable.

    Text files must be UTF-8 (a BOM is allowed): guessing another encoding would put
    mojibake into training data without anyone noticing.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DOCUMENT_SUFFIXES:
        known = ", ".join(DOCUMENT_SUFFIXES)
        raise DataError(f"{path}: unsupported document type {suffix or '(none)'!r}; use {known}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    if suffix in PDF_SUFFIXES:
        return pdf_text(data, path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return html_to_text(text) if suffix in HTML_SUFFIXES else text


def pdf_text(data: bytes, path: Path) -> str:
    """The text layer of a PDF (pypdf), pages separated by a blank line. An encrypted or
    malformed file is a DataError naming it, never a traceback from the parser."""
    import io

    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as err:
        raise DataError(f"{path}: reading PDF needs the package pypdf ({err})") from None
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DataError(f"{path}: the PDF is encrypted; decrypt it first")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except DataError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as err:
        raise DataError(f"{path}: not a readable PDF ({err})") from None
    text = "\n\n".join(p for p in pages if p)
    return re.sub(r"[ \t]+\n", "\n", text)


def document_rows(paths: list[Path]) -> tuple[list[Row], list[tuple[Path, str]]]:
    """`text` rows for documents, plus (path, problem) for each empty or unreadable file.

    One bad file among many is reported, not raised, so a directory of documents is still
    usable; the caller decides whether problems are fatal.
    """
    rows: list[Row] = []
    problems: list[tuple[Path, str]] = []
    for path in paths:
        try:
            text = read_document(path)
        except DataError as err:
            problems.append((path, str(err)))
            continue
        if not text.strip():
            problems.append((path, "empty document (no text after conversion)"))
            continue
        rows.append({"kind": "text", "text": text, "source": Path(path).name})
    return rows, problems


_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")  # a blank line, maybe holding spaces
# A sentence ends at . ! ? or … (plus closing quotes/brackets) before whitespace, or at a
# line break.
_SENTENCE_BREAK = re.compile(r"([.!?…]+[\"'”’)\]]*)\s+|\s*\n\s*")


def chunk_text(text: str, max_chars: int = 4000, overlap: int = 0) -> list[str]:
    """Split text into chunks of at most `max_chars`, cutting at the largest boundary that fits.

    Whole paragraphs are packed together while they fit; a paragraph too long for one chunk
    is cut between sentences (its pieces are not mixed with the next paragraph), a sentence
    too long between words, and only a word longer than `max_chars` is cut inside. Chunks
    are exact slices of `text`, so inner line breaks survive; whitespace between chunks is
    dropped. `overlap` > 0 starts each chunk with up to that many characters from the end of
    the previous one, beginning at a word, so a chunk keeps some context.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    if not 0 <= overlap < max_chars:
        raise ValueError(f"overlap must be in [0, max_chars), got {overlap}")
    start, end = _trim(text, 0, len(text))
    spans = _pack(text, start, end, 0, max_chars) if start < end else []
    if overlap:
        for i in range(1, len(spans)):
            (prev_start, prev_end), (start, end) = spans[i - 1], spans[i]
            lowest = max(prev_start + 1, prev_end - overlap, end - max_chars)
            begin = _word_start(text, lowest, prev_end)
            if begin is not None:
                spans[i] = (begin, end)
    return [text[s:e] for s, e in spans]


_LEVELS = (_PARAGRAPH_BREAK, _SENTENCE_BREAK, re.compile(r"\s+"))


def _pack(text: str, lo: int, hi: int, level: int, max_chars: int) -> list[tuple[int, int]]:
    """Chunk spans for text[lo:hi] (trimmed), splitting at `_LEVELS[level]` and finer."""
    if hi - lo <= max_chars:
        return [(lo, hi)]
    if level == len(_LEVELS):  # one word longer than a chunk: cut it
        return [(cut, min(cut + max_chars, hi)) for cut in range(lo, hi, max_chars)]
    out: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for start, end in _spans(text, lo, hi, _LEVELS[level]):
        if current and end - current[0] <= max_chars:
            current = (current[0], end)
        elif end - start <= max_chars:
            out += [current] if current else []
            current = (start, end)
        else:
            out += [current] if current else []
            out += _pack(text, start, end, level + 1, max_chars)
            current = None
            if level == len(_LEVELS) - 1:  # the tail of a cut word may share with next words
                current = out.pop()
    return out + ([current] if current else [])


def _spans(text: str, lo: int, hi: int, sep: re.Pattern[str]) -> list[tuple[int, int]]:
    """Non-blank spans of text[lo:hi] between separators, trimmed of whitespace.

    A separator's group 1, when it matched (a sentence's closing punctuation), stays with
    the span before it.
    """
    spans = []
    pos = lo
    for match in sep.finditer(text, lo, hi):
        kept = sep.groups and match.group(1) is not None
        spans.append((pos, match.end(1) if kept else match.start()))
        pos = match.end()
    spans.append((pos, hi))
    return [t for s, e in spans if (t := _trim(text, s, e))[0] < t[1]]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _word_start(text: str, lo: int, hi: int) -> int | None:
    """The first position in [lo, hi) where a word starts, if any."""
    for pos in range(lo, hi):
        if not text[pos].isspace() and (pos == 0 or text[pos - 1].isspace()):
            return pos
    return None
