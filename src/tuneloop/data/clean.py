"""Text normalisation for training data: Unicode, control characters, whitespace and HTML.

Scraped and exported text carries noise a model learns to reproduce: markup, `&nbsp;`,
Windows line endings, stray control bytes, trailing spaces, runs of blank lines.
`clean_text` removes it and is idempotent, so cleaning already clean data (or running the
step twice) changes nothing. Code inside ``` fences keeps its spacing: indentation and
alignment are meaning there.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterator

from tuneloop.data.records import Row, map_texts, row_texts
from tuneloop.data.steps import StepLog, step

# Form feed, vertical tab and the Unicode separators are line breaks, not junk to delete:
# deleting them would glue two lines together.
_LINE_BREAK = re.compile(r"\r\n|[\r\v\f\x85\u2028\u2029]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")

_DROPPED = ("script", "style", "nav", "header", "footer")
_PARAGRAPH = ("p", "h1", "h2", "h3", "h4", "h5", "h6")
_BLOCK = (
    "address", "article", "aside", "blockquote", "caption", "dd", "details", "div", "dl",
    "dt", "fieldset", "figcaption", "figure", "form", "hr", "li", "main", "ol", "section",
    "summary", "table", "tbody", "tfoot", "thead", "tr", "ul",
)  # fmt: skip
_CELL = ("td", "th")
_INLINE = (
    "a", "abbr", "area", "audio", "b", "base", "bdi", "bdo", "big", "body", "br", "button",
    "canvas", "center", "cite", "code", "col", "colgroup", "data", "del", "dfn", "em",
    "embed", "font", "head", "html", "i", "iframe", "img", "input", "ins", "kbd", "label",
    "legend", "link", "map", "mark", "meta", "meter", "noscript", "object", "optgroup",
    "option", "output", "param", "picture", "pre", "progress", "q", "rp", "rt", "ruby", "s",
    "samp", "select", "small", "source", "span", "strike", "strong", "sub", "sup", "svg",
    "template", "textarea", "time", "title", "track", "tt", "u", "var", "video", "wbr",
)  # fmt: skip


def _tags(names: tuple[str, ...]) -> str:
    """Opening, closing or self-closing tags with one of `names`, attributes allowed."""
    return rf"</?(?:{'|'.join(names)})(?:\s[^<>]*)?/?>"


# Markup means tags of real HTML elements, comments and doctypes: text like "a < b",
# "Vec<String>" or "#include <stdio.h>" is not HTML and is left alone.
_ANY_TAG = re.compile(_tags(_DROPPED + _PARAGRAPH + _BLOCK + _CELL + _INLINE), re.I)
_MARKUP = re.compile(rf"<!--|<!doctype\b[^<>]*>|<\?xml\b[^<>]*>|{_ANY_TAG.pattern}", re.I)
_DOCTYPE = re.compile(r"<!doctype\b[^<>]*>|<\?xml\b[^<>]*>", re.I)
_DROPPED_OPEN = re.compile(rf"<({'|'.join(_DROPPED)})(?:\s[^<>]*)?>", re.I)
_PRE_OPEN = re.compile(r"<(pre)(?:\s[^<>]*)?>", re.I)
_BR = re.compile(r"<br\s*/?>", re.I)
_PARAGRAPH_TAG = re.compile(_tags(_PARAGRAPH), re.I)
_BLOCK_TAG = re.compile(_tags(_BLOCK), re.I)
_CELL_TAG = re.compile(_tags(_CELL), re.I)
_BLOCK_RUN = re.compile(r"(?: *[\x00\x01] *)+")
_SPACE_RUN = re.compile(r"[ \t]+")


def _normalise_chars(text: str) -> str:
    """One line-break character, no control characters, NFKC (e.g. non-breaking space -> space).

    Controls go before NFKC: deleting one can join a letter and a combining accent, which
    NFKC then composes; the other order would leave work for a second pass.
    """
    text = _LINE_BREAK.sub("\n", text)
    return unicodedata.normalize("NFKC", _CONTROL.sub("", text))


def _split_fences(text: str) -> list[tuple[bool, str]]:
    """Split text at ``` fence lines into (is_code, chunk); an unclosed fence runs to the end.

    Chunks are whole lines, so "\\n".join of the chunks gives back the text.
    """
    chunks: list[tuple[bool, str]] = []
    lines: list[str] = []
    in_code = False
    for line in text.split("\n"):
        fence = line.lstrip(" \t").startswith("```")
        if fence and not in_code:
            if lines:
                chunks.append((False, "\n".join(lines)))
            lines, in_code = [line], True
        elif fence:
            chunks.append((True, "\n".join([*lines, line])))
            lines, in_code = [], False
        else:
            lines.append(line)
    if lines or not chunks:
        chunks.append((in_code, "\n".join(lines)))
    return chunks


def _escape_markup(text: str) -> str:
    """Re-escape markup that entity decoding produced (`&lt;div&gt;` in a code sample).

    Left decoded, a second cleaning would strip it as a tag; escaped, the text is stable.
    """
    while _MARKUP.search(text):
        text = _MARKUP.sub(
            lambda m: f"&lt;{m[0][1:-1]}&gt;" if m[0].endswith(">") else f"&lt;{m[0][1:]}",
            text,
        )
    return text


def _decode(text: str) -> str:
    return _normalise_chars(html.unescape(text))


def _flow_to_text(fragment: str) -> str:
    """HTML outside <pre>: source line breaks and indentation mean nothing; tags decide."""
    text = re.sub(r"\s+", " ", fragment)
    text = _BR.sub("\n", text)
    # Block tags come in runs ("</li><li>"): mark them, then let one run make one line
    # break, or a blank line if it holds a paragraph or heading. The marks are control
    # characters, which _normalise_chars has already removed from the text.
    text = _PARAGRAPH_TAG.sub("\x01", text)
    text = _BLOCK_TAG.sub("\x00", text)
    text = _ANY_TAG.sub("", _CELL_TAG.sub(" ", text))
    text = _BLOCK_RUN.sub(lambda m: "\n\n" if "\x01" in m[0] else "\n", text)
    text = _decode(text)
    return "\n".join(line.strip() for line in text.split("\n"))


def _pre_to_text(fragment: str) -> str:
    """<pre> content keeps its line breaks and indentation; only tags and entities go."""
    return "\n" + _decode(_ANY_TAG.sub("", _BR.sub("\n", fragment))) + "\n"


def _without_comments(text: str) -> str:
    """Text minus closed <!-- --> comments (an unclosed one is left to be escaped)."""
    kept = []
    pos = 0
    while (start := text.find("<!--", pos)) != -1 and (end := text.find("-->", start + 4)) != -1:
        kept.append(text[pos:start])
        pos = end + 3
    kept.append(text[pos:])
    return "".join(kept)


def _elements(text: str, opening: re.Pattern[str]) -> Iterator[tuple[int, int, int, int]]:
    """(start, content start, content end, end) of each closed element `opening` finds.

    Searches with str positions rather than a lazy `.*?</x>` regex, which rescans to
    the end of the text for every unclosed tag (quadratic on broken pages).
    """
    pos = 0
    unclosed: set[str] = set()
    while m := opening.search(text, pos):
        name = m[1].lower()
        close = None
        if name not in unclosed:
            close = re.compile(rf"</{name}\s*>", re.I).search(text, m.end())
        if close is None:
            unclosed.add(name)
            pos = m.end()
            continue
        yield m.start(), m.end(), close.start(), close.end()
        pos = close.end()


def _html_to_text(chunk: str) -> str:
    text = _DOCTYPE.sub("", _without_comments(chunk))
    kept = []
    pos = 0
    for start, _, _, end in _elements(text, _DROPPED_OPEN):
        kept.append(text[pos:start])
        pos = end
    text = "".join([*kept, text[pos:]])
    parts = []
    pos = 0
    for start, content_start, content_end, end in _elements(text, _PRE_OPEN):
        parts += [_flow_to_text(text[pos:start]), _pre_to_text(text[content_start:content_end])]
        pos = end
    parts.append(_flow_to_text(text[pos:]))
    return _escape_markup("".join(parts))


def _strip_markup(text: str) -> tuple[str, bool]:
    """Convert every prose chunk holding markup to plain text; returns (text, converted).

    Repeats because a conversion can produce a ``` line (`<p>```python<br>...`), which
    re-pairs the fences and can turn a former code chunk into prose that holds markup.
    Converted text holds no markup and fence lines are never removed, so this ends.
    """
    converted = False
    while True:
        chunks = _split_fences(text)
        if not any(not code and _MARKUP.search(chunk) for code, chunk in chunks):
            return text, converted
        converted = True
        text = "\n".join(
            _html_to_text(chunk) if not code and _MARKUP.search(chunk) else chunk
            for code, chunk in chunks
        )


def _tidy_prose(chunk: str) -> str:
    """Trailing spaces off, inner runs of spaces/tabs to one space, at most one blank line.

    Leading indentation stays: in Markdown it nests lists and marks code blocks.
    """
    lines: list[str] = []
    for line in chunk.split("\n"):
        line = line.rstrip()
        indent = len(line) - len(line.lstrip(" \t"))
        line = line[:indent] + _SPACE_RUN.sub(" ", line[indent:])
        if line or not lines or lines[-1]:
            lines.append(line)
    return "\n".join(lines)


def _tidy_whitespace(text: str) -> str:
    chunks = _split_fences(text)
    tidy = [
        "\n".join(line.rstrip() for line in chunk.split("\n")) if code else _tidy_prose(chunk)
        for code, chunk in chunks
    ]
    return "\n".join(tidy).strip()


def _clean(text: str, strip_html: bool) -> tuple[str, bool, bool]:
    """clean_text, plus whether markup was converted and whether control characters went."""
    had_control = bool(_CONTROL.search(_LINE_BREAK.sub("\n", text)))
    text = _normalise_chars(text)
    converted = False
    if strip_html:
        text, converted = _strip_markup(text)
    return _tidy_whitespace(text), converted, had_control


def clean_text(text: str, strip_html: bool = True) -> str:
    """Normalise Unicode (NFKC), line breaks and whitespace; drop control characters.

    strip_html: turn HTML into text (drop scripts, styles, navigation and comments, break
    lines at block tags, decode entities) in text that holds HTML tags; text without tags,
    like "a < b and c > d", is never treated as HTML. Code in ``` fences is left as is.
    """
    return _clean(text, strip_html)[0]


@step("clean")
def clean(
    rows: list[Row], log: StepLog, strip_html: bool = True, drop_empty: bool = True
) -> list[Row]:
    """Clean every text of every row with `clean_text`.

    drop_empty: drop rows where cleaning emptied a text that had content (a message that
    was only markup or whitespace would train the model to answer with nothing).
    """
    kept = []
    html_rows = control_rows = 0
    for row in rows:
        flags = {"html": False, "control": False}

        def clean_one(text: str, flags: dict[str, bool] = flags) -> str:
            cleaned, converted, had_control = _clean(text, strip_html)
            flags["html"] |= converted
            flags["control"] |= had_control
            return cleaned

        cleaned_row, changed = map_texts(row, clean_one)
        html_rows += flags["html"]
        control_rows += flags["control"]
        pairs = zip(row_texts(row), row_texts(cleaned_row), strict=True)
        if drop_empty and any(before and not after for (_, before), (_, after) in pairs):
            log.drop(row, "empty after cleaning")
            continue
        if changed:
            log.change(cleaned_row, "cleaned")
        kept.append(cleaned_row)
    log.details["html_stripped"] = html_rows
    log.details["control_chars_removed"] = control_rows
    return kept
