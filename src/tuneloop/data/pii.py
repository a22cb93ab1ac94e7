"""Find and redact personal data in training text: emails, phones, cards, IBANs, IP addresses.

Fine-tuning data exported from support tickets and chats carries customer details, and a
model trained on them can repeat them verbatim. Detection is rule-based so it runs anywhere
without a model; where a format has a checksum (Luhn for cards, ISO 13616 mod-97 for IBANs)
a match must pass it, because a digit pattern alone matches order numbers and IDs.
Phone numbers have no checksum, so they are matched only in a few explicit layouts.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from tuneloop.data.records import Row, map_texts
from tuneloop.data.steps import StepLog, step
from tuneloop.errors import DataError

PII_TYPES = ("email", "phone", "card", "iban", "ip")
PLACEHOLDERS = {kind: f"[{kind.upper()}]" for kind in PII_TYPES}
MODES = ("redact", "drop", "report")

# Overlap resolution: a checksum or an "@" is stronger evidence than a digit layout, so these
# tiers win before length is compared (a card number is never half-redacted as a phone).
_TIER = {"email": 0, "card": 0, "iban": 0, "ip": 1, "phone": 2}

Span = tuple[int, int]


@dataclass(frozen=True)
class PiiMatch:
    """One piece of personal data: its type and where it sits in the text."""

    type: str
    start: int
    end: int
    text: str


def luhn_valid(number: str) -> bool:
    """Whether a digit string passes the Luhn checksum used by payment card numbers."""
    total = 0
    for i, char in enumerate(reversed(number)):
        digit = int(char)
        if i % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether `iban` (spaces allowed) has a valid shape and ISO 13616 mod-97 check digits."""
    compact = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}", compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9_%+-][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}"
    r"(?![\w-]|\.[A-Za-z0-9])"
)

# Candidate layouts; `_phone_end` then checks the digit count. Every layout needs a "+",
# a trunk "0", or the North American 3-3-4 grouping, so bare numbers (years, IDs,
# prices) never qualify, and a number glued to letters, "$", "#", "-" or another digit
# group (BW-104233, $49.99, the middle of a card number) is not a phone.
_PHONE = re.compile(
    r"""
    (?<![\w+@#$€£¥%&/.,-])
    (?<![0-9][ .-])
    (?:
        (?P<intl>\+[0-9]{1,3}(?:[ .-]?\(0\))?(?:[ .-]?\([0-9]{1,4}\))?
            [ .-]?[0-9]{1,12}(?:[ .-][0-9]{1,12}){0,6})
      | (?P<na>(?:1[ .-]?)?(?:\([0-9]{3}\)[ ]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4})
      | (?P<trunk>(?:\(0[0-9]{1,4}\)[ ]?|0[0-9]{1,4}[ ./-])[0-9]{2,8}(?:[ .-][0-9]{2,8}){0,4})
    )
    (?![\w@]|[.,/:-]?[0-9])
    """,
    re.VERBOSE | re.ASCII,
)
_PHONE_DIGITS = {"intl": (7, 15), "na": (10, 11), "trunk": (9, 13)}
_DATE_START = re.compile(r"[0-9]{1,2}([./-])[0-9]{1,2}\1(?:[0-9]{4}(?![0-9])|[0-9]{2}$)")

_DIGIT_RUN = re.compile(r"(?<![\w.+-])[0-9]+(?:[ -][0-9]+)*(?!\w)", re.ASCII)
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]){11,30}(?![A-Za-z0-9])")

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.[0-9])", re.ASCII)
_IPV6 = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3}(?![\w:]|\.[0-9])",
    re.ASCII,
)


def _emails(text: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        yield m.span()


def _digit_groups(m: re.Match[str]) -> list[Span]:
    return [(g.start() + m.start(), g.end() + m.start()) for g in re.finditer(r"[0-9]+", m[0])]


def _phone_end(m: re.Match[str], text: str) -> int | None:
    """Where the phone number in a candidate ends, or None if it is not one.

    An international candidate may run on into a following number ("+44 20 7946 0958
    4111 ..."); trailing groups are dropped until the digit count fits.
    """
    layout = m.lastgroup or ""
    low, high = _PHONE_DIGITS[layout]
    if layout == "trunk" and _DATE_START.match(m[0]):
        return None
    digits = 0
    fits = None
    for start, end in _digit_groups(m):
        if layout == "intl" and text[start - 1 : end + 1] == "(0)":
            continue  # the "(0)" in "+44 (0)20 ..." is not dialled internationally
        digits += end - start
        if low <= digits <= high:
            fits = end
    return fits


def _phones(text: str) -> Iterator[Span]:
    for m in _PHONE.finditer(text):
        end = _phone_end(m, text)
        if end is not None:
            yield m.start(), end


def _is_card(number: str) -> bool:
    # Card networks use leading digits 2-6; checking it removes most Luhn coincidences
    # (one random number in ten passes Luhn), such as 13-digit millisecond timestamps.
    return 13 <= len(number) <= 19 and number[0] in "23456" and luhn_valid(number)


def _cards(text: str) -> Iterator[Span]:
    """Card numbers inside runs of digit groups, e.g. a card followed by its CVV.

    A window of whole groups is a card when it passes `_is_card`, uses one separator
    throughout, and every group but the last has at least 3 digits (cards are printed in
    groups of 4-6, so "12 34 56 ..." tables of small numbers do not qualify).
    """
    for run in _DIGIT_RUN.finditer(text):
        groups = _digit_groups(run)
        windows = []
        for i, (first_start, _) in enumerate(groups):
            number = ""
            for j in range(i, len(groups)):
                if j > i:
                    prev_start, prev_end = groups[j - 1]
                    sep = text[prev_end : groups[j][0]]
                    if prev_end - prev_start < 3 or sep != text[groups[i][1] : groups[i + 1][0]]:
                        break
                number += text[groups[j][0] : groups[j][1]]
                if len(number) > 19:
                    break
                if _is_card(number):
                    windows.append((first_start, groups[j][1]))
        yield from _non_overlapping(windows)


def _non_overlapping(spans: list[Span]) -> list[Span]:
    """Longest spans first, then leftmost; a span overlapping one already taken is skipped."""
    taken: list[Span] = []
    for span in sorted(spans, key=lambda s: (s[0] - s[1], s[0])):
        if not _overlaps(taken, span):
            bisect.insort(taken, span)
    return taken


def _overlaps(taken: list[Span], span: Span) -> bool:
    i = bisect.bisect_left(taken, span)
    return (i > 0 and taken[i - 1][1] > span[0]) or (i < len(taken) and taken[i][0] < span[1])


def _ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        # The pattern may swallow a following capitalised word or number ("... 32 EUR");
        # try the candidate cut at each space, longest first.
        ends = [m.start() + i for i, char in enumerate(m[0]) if char == " "] + [m.end()]
        for end in reversed(ends):
            if iban_valid(text[m.start() : end]):
                yield m.start(), end
                break


def _is_ipv6(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    if "::" not in candidate or candidate == "::1":
        return True
    # Compressed forms made only of short groups ("1::2", "::2") are far more often
    # Python slices or C++ scopes than addresses; real ones have a 3-4 digit group.
    return any(len(group) >= 3 for group in re.split(r"[:.]", candidate))


def _ips(text: str) -> Iterator[Span]:
    for m in _IPV4.finditer(text):
        yield m.span()
    for m in _IPV6.finditer(text):
        if _is_ipv6(m[0]):
            yield m.span()


_FINDERS: dict[str, Callable[[str], Iterator[Span]]] = {
    "email": _emails,
    "phone": _phones,
    "card": _cards,
    "iban": _ibans,
    "ip": _ips,
}


def _checked_types(types: Iterable[str] | None) -> tuple[str, ...]:
    if types is None:
        return PII_TYPES
    wanted = (types,) if isinstance(types, str) else tuple(dict.fromkeys(types))
    for kind in wanted:
        if kind not in PII_TYPES:
            raise DataError(f"unknown pii type {kind!r}; valid types: {', '.join(PII_TYPES)}")
    return wanted


def find_pii(text: str, types: Iterable[str] | None = None) -> list[PiiMatch]:
    """Non-overlapping personal data in `text`, sorted by position.

    types: which of `PII_TYPES` to look for (default: all). Where candidates overlap, a
    checksum-validated card or IBAN (or an email) beats an IP, which beats a phone; within
    a tier the longer match wins.
    """
    candidates = [
        PiiMatch(kind, start, end, text[start:end])
        for kind in _checked_types(types)
        for start, end in _FINDERS[kind](text)
    ]
    candidates.sort(key=lambda m: (_TIER[m.type], m.start - m.end, m.start))
    taken: list[Span] = []
    chosen = []
    for match in candidates:
        if not _overlaps(taken, (match.start, match.end)):
            bisect.insort(taken, (match.start, match.end))
            chosen.append(match)
    return sorted(chosen, key=lambda m: m.start)


def redact_text(text: str, types: Iterable[str] | None = None) -> tuple[str, Counter[str]]:
    """`text` with each match replaced by its placeholder (`[EMAIL]`, ...), and counts per type.

    Scans again until nothing is found: a match can hide a neighbour that the detectors
    reject only because of what it is glued to ("a@b.co+44 20 7946 0958"), and redacted
    output must not leak it. This ends: every match holds a digit, "@" or ":", and no
    placeholder does.
    """
    counts: Counter[str] = Counter()
    while matches := find_pii(text, types):
        parts = []
        pos = 0
        for match in matches:
            parts += [text[pos : match.start], PLACEHOLDERS[match.type]]
            pos = match.end
        parts.append(text[pos:])
        text = "".join(parts)
        counts.update(m.type for m in matches)
    return text, counts


@step("redact_pii")
def redact_pii(
    rows: list[Row], log: StepLog, mode: str = "redact", types: list[str] | None = None
) -> list[Row]:
    """Redact, drop or just count rows holding personal data.

    mode: `redact` replaces each match with a placeholder, `drop` removes the row,
    `report` keeps rows unchanged so the data card shows what a real run would touch.
    types: which of `PII_TYPES` to look for (default: all).
    """
    if mode not in MODES:
        raise DataError(f"redact_pii: unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    wanted = _checked_types(types)
    counts: Counter[str] = Counter()
    rows_with_pii = 0
    kept = []
    for row in rows:
        row_counts: Counter[str] = Counter()

        def redact(text: str, row_counts: Counter[str] = row_counts) -> str:
            redacted, found = redact_text(text, wanted)
            row_counts.update(found)
            return redacted

        redacted_row, _ = map_texts(row, redact)
        if not row_counts:
            kept.append(row)
            continue
        rows_with_pii += 1
        counts.update(row_counts)
        if mode == "drop":
            log.drop(row, "contains pii")
        elif mode == "redact":
            log.change(redacted_row, "pii redacted")
            kept.append(redacted_row)
        else:
            kept.append(row)
    log.details["pii_counts"] = {kind: counts[kind] for kind in PII_TYPES if counts[kind]}
    log.details["rows_with_pii"] = rows_with_pii
    return kept
