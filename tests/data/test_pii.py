from __future__ import annotations

import copy
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.data.pii import (
    PII_TYPES,
    PiiMatch,
    find_pii,
    iban_valid,
    luhn_valid,
    redact_text,
)
from tuneloop.data.records import Row
from tuneloop.data.steps import run_step
from tuneloop.errors import DataError


def found(text: str, types: list[str] | None = None) -> list[tuple[str, str]]:
    return [(m.type, m.text) for m in find_pii(text, types)]


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


# --- checksums, worked out by hand -------------------------------------------------------


def test_luhn_checksum() -> None:
    # 4111 1111 1111 1111: seven doubled 1s (14) + doubled 4 (8) + eight plain 1s (8) = 30
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")  # sum 31
    # 7992739871 + 3: doubled digits give 2+7+6+4+9 = 28, the others 42, total 70
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


def test_iban_checksum() -> None:
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert iban_valid("DE89370400440532013000")
    assert not iban_valid("GB82 WEST 1234 5698 7654 33")  # one digit off: mod 97 != 1
    assert not iban_valid("GB28 WEST 1234 5698 7654 32")  # check digits swapped
    assert not iban_valid("GB82")  # too short to be an IBAN


# --- find_pii per type --------------------------------------------------------------------


def test_cards_need_luhn_and_a_card_prefix() -> None:
    assert found("card 4111 1111 1111 1111 ok") == [("card", "4111 1111 1111 1111")]
    assert found("4111-1111-1111-1111") == [("card", "4111-1111-1111-1111")]
    assert found("4111111111111111") == [("card", "4111111111111111")]
    assert found("amex 3782 822463 10005") == [("card", "3782 822463 10005")]
    assert found("card 4111 1111 1111 1112") == []  # Luhn fails
    assert luhn_valid("1700000000004")  # 7 doubled is 14 -> 5; 4 + 5 + 1 = 10
    assert found("ts 1700000000004") == []  # but no card number starts with 1
    # a CVV after the number is not part of it
    assert found("4111 1111 1111 1111 123") == [("card", "4111 1111 1111 1111")]


def test_ibans_need_the_mod97_check() -> None:
    assert found("Pay GB82 WEST 1234 5698 7654 32 EUR") == [("iban", "GB82 WEST 1234 5698 7654 32")]
    assert found("IBAN: DE89 3704 0044 0532 0130 00.") == [("iban", "DE89 3704 0044 0532 0130 00")]
    assert found("DE89370400440532013000") == [("iban", "DE89370400440532013000")]
    assert found("GB82 WEST 1234 5698 7654 33") == []


def test_emails() -> None:
    assert found("Write to john.doe+tag@mail.example.co.uk.") == [
        ("email", "john.doe+tag@mail.example.co.uk")
    ]
    assert found("a_b@x-y.io, c@d.org") == [("email", "a_b@x-y.io"), ("email", "c@d.org")]
    assert found("no @ here, user@localhost, @handle") == []


@pytest.mark.parametrize(
    "phone",
    [
        "+1 555 123 4567",
        "+1-555-123-4567",
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+33 1 23 45 67 89",
        "+4915123456789",
        "+1 (555) 123-4567",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "1-800-555-0199",
        "020 7946 0958",
        "(020) 7946 0958",
        "030 1234567",
        "089/1234567",
        "06 12 34 56 78",
    ],
)
def test_phone_formats(phone: str) -> None:
    assert found(f"Call {phone}, thanks") == [("phone", phone)]
    assert found(f"tel:{phone}") == [("phone", phone)]


def test_international_phone_stops_at_15_digits() -> None:
    # the following number is not swallowed: it is a card of its own
    assert found("+44 20 7946 0958 4111 1111 1111 1111") == [
        ("phone", "+44 20 7946 0958"),
        ("card", "4111 1111 1111 1111"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Order BW-104233 shipped",
        "In 2024 we grew",
        "It costs $49.99 or €1.234.567",
        "Due 2026-11-21 at 14:30",
        "Released 05.12.2024 1430",
        "Upgrade to version 5.0.1",
        "ISBN 978-3-16-148410-0",
        "Scores: 10 20 30 40 50 60",
        "A range of 100-1000 tokens",
        "5551234567 and 123456789012",
        "+44 1234",
        "call 555-1234",
    ],
)
def test_not_pii(text: str) -> None:
    assert found(text) == []


def test_ipv4() -> None:
    assert found("from 192.168.0.1:8080 and 10.0.0.255.") == [
        ("ip", "192.168.0.1"),
        ("ip", "10.0.0.255"),
    ]
    assert found("0.0.0.0 and 255.255.255.255") == [("ip", "0.0.0.0"), ("ip", "255.255.255.255")]
    assert found("256.1.1.1") == []
    assert found("1.1.1.256") == []
    assert found("01.2.3.4") == []  # leading zeros are ambiguous (octal)
    assert found("1.2.3.4.5") == []  # a version or OID, not an address
    assert found("1.2.3") == []


def test_ipv6() -> None:
    full = "2001:0db8:85a3:0000:0000:8a2e:0370:7334"
    assert found(f"host {full} up") == [("ip", full)]
    assert found("2001:db8::1, fe80::1ff:fe23:4567:890a") == [
        ("ip", "2001:db8::1"),
        ("ip", "fe80::1ff:fe23:4567:890a"),
    ]
    assert found("http://[::1]:8080/") == [("ip", "::1")]
    assert found("mapped ::ffff:192.0.2.1") == [("ip", "::ffff:192.0.2.1")]
    # times, MAC addresses, slices and C++ scopes
    assert found("12:30:45 00:1a:2b:3c:4d:5e x[1::2] std::vector") == []


def test_overlaps_prefer_checksummed_matches() -> None:
    # "+49 4111 1111 1111" fits a phone layout, but the card number it cuts into wins
    assert found("+49 4111 1111 1111 1111") == [("card", "4111 1111 1111 1111")]
    assert found("DE89 3704 0044 0532 0130 00") == [("iban", "DE89 3704 0044 0532 0130 00")]
    assert found("john.5551234567@example.com") == [("email", "john.5551234567@example.com")]


def test_matches_are_sorted_positions() -> None:
    text = "ip 10.0.0.1, mail a@b.co"
    assert find_pii(text) == [
        PiiMatch("ip", 3, 11, "10.0.0.1"),
        PiiMatch("email", 18, 24, "a@b.co"),
    ]


def test_types_filter_and_unknown_type() -> None:
    text = "a@b.co or 555-123-4567"
    assert found(text, ["phone"]) == [("phone", "555-123-4567")]
    with pytest.raises(DataError, match="unknown pii type 'ssn'; valid types: email, phone"):
        find_pii(text, ["email", "ssn"])


# --- redact_text -------------------------------------------------------------------------


def test_redact_text() -> None:
    text = "Mail a@b.co or call +44 20 7946 0958; card 4111 1111 1111 1111."
    assert redact_text(text) == (
        "Mail [EMAIL] or call [PHONE]; card [CARD].",
        Counter({"email": 1, "phone": 1, "card": 1}),
    )
    assert redact_text(text, ["email"]) == (
        "Mail [EMAIL] or call +44 20 7946 0958; card 4111 1111 1111 1111.",
        Counter({"email": 1}),
    )
    assert redact_text("nothing here") == ("nothing here", Counter())


def test_redact_text_finds_numbers_hidden_by_a_neighbour() -> None:
    # glued to the email the phone is not a match; once the email is gone it is
    assert redact_text("a@b.co+44 20 7946 0958") == (
        "[EMAIL][PHONE]",
        Counter({"email": 1, "phone": 1}),
    )


_FRAGMENTS = st.sampled_from(
    [
        "a@b.co",
        "x.y@mail.example.org",
        "+44 20 7946 0958",
        "555-123-4567",
        "(555) 123-4567",
        "020 7946 0958",
        "4111 1111 1111 1111",
        "GB82 WEST 1234 5698 7654 32",
        "192.168.0.1",
        "2001:db8::1",
        "4111",
        "12",
        "0",
        "+",
        "-",
        " ",
        ".",
        "(",
        ")",
        ":",
        "@",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(), st.lists(st.one_of(_FRAGMENTS, st.text(max_size=4)), max_size=12).map("".join)
    ),
    st.one_of(st.none(), st.lists(st.sampled_from(PII_TYPES), min_size=1, max_size=5)),
)
def test_redacted_text_holds_no_pii(text: str, types: list[str] | None) -> None:
    redacted, counts = redact_text(text, types)
    assert find_pii(redacted, types) == []
    # every count is one placeholder added (matches never include brackets)
    for kind in PII_TYPES:
        placeholder = f"[{kind.upper()}]"
        assert redacted.count(placeholder) - text.count(placeholder) == counts[kind]


# --- the redact_pii step -----------------------------------------------------------------


def pii_rows() -> list[Row]:
    return [
        {
            "kind": "sft",
            "messages": [
                msg("user", "My email is ann@example.com"),
                msg("assistant", "Thanks, we will call +1 555 123 4567."),
            ],
            "source": "line 1",
        },
        {
            "kind": "preference",
            "prompt": [msg("user", "Can I pay with 4111 1111 1111 1111?")],
            "chosen": [msg("assistant", "Please never share card numbers.")],
            "rejected": [msg("assistant", "Sure, 4111 1111 1111 1111 works. Server 10.0.0.1")],
            "source": "line 2",
        },
        {"kind": "text", "text": "Order BW-104233 shipped in 2024.", "source": "line 3"},
        {"kind": "text", "text": "Pay to GB82 WEST 1234 5698 7654 32 today.", "source": "line 4"},
    ]


ALL_COUNTS = {"email": 1, "phone": 1, "card": 2, "iban": 1, "ip": 1}


def test_redact_mode_replaces_and_counts() -> None:
    rows = pii_rows()
    original = copy.deepcopy(rows)
    out, log = run_step("redact_pii", rows)
    assert rows == original  # input rows are not modified
    assert [r["source"] for r in out] == ["line 1", "line 2", "line 3", "line 4"]
    assert out[0]["messages"] == [
        msg("user", "My email is [EMAIL]"),
        msg("assistant", "Thanks, we will call [PHONE]."),
    ]
    assert out[1]["prompt"][0]["content"] == "Can I pay with [CARD]?"
    assert out[1]["chosen"] == original[1]["chosen"]
    assert out[1]["rejected"][0]["content"] == "Sure, [CARD] works. Server [IP]"
    assert out[2] == original[2]
    assert out[3]["text"] == "Pay to [IBAN] today."
    assert dict(log.changed) == {"pii redacted": 3}
    assert dict(log.dropped) == {}
    assert log.details == {"pii_counts": ALL_COUNTS, "rows_with_pii": 3}


def test_drop_mode_drops_rows_with_pii() -> None:
    out, log = run_step("redact_pii", pii_rows(), mode="drop")
    assert out == [pii_rows()[2]]
    assert dict(log.dropped) == {"contains pii": 3}
    assert dict(log.changed) == {}
    assert log.details == {"pii_counts": ALL_COUNTS, "rows_with_pii": 3}


def test_report_mode_only_counts() -> None:
    out, log = run_step("redact_pii", pii_rows(), mode="report")
    assert out == pii_rows()
    assert dict(log.dropped) == dict(log.changed) == {}
    assert log.details == {"pii_counts": ALL_COUNTS, "rows_with_pii": 3}


def test_step_types_and_bad_params() -> None:
    out, log = run_step("redact_pii", pii_rows(), types=["card", "ip"])
    assert log.details == {"pii_counts": {"card": 2, "ip": 1}, "rows_with_pii": 1}
    assert out[0] == pii_rows()[0]  # the email and phone are left alone
    with pytest.raises(DataError, match="unknown mode 'mask'; valid modes: redact, drop, report"):
        run_step("redact_pii", pii_rows(), mode="mask")
    with pytest.raises(DataError, match="unknown pii type 'name'"):
        run_step("redact_pii", pii_rows(), types=["name"])
