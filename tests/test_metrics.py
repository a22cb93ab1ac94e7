"""Metric values checked against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from tuneloop.evaluate import metrics as M


def test_exact_match_normalises_case_punctuation_space() -> None:
    agg, per = M.exact_match(["The cat!", "a  dog", "x"], ["the cat", "A dog.", "y"])
    assert per == [1.0, 1.0, 0.0]
    assert agg == pytest.approx(2 / 3)


def test_rouge_l_matches_hand_lcs() -> None:
    # pred "the cat sat" vs ref "the cat sat on the mat": LCS = 3,
    # P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3
    agg, per = M.rouge_l(["the cat sat"], ["the cat sat on the mat"])
    assert per[0] == pytest.approx(2 / 3)
    assert agg == pytest.approx(2 / 3)


def test_bleu_identity_and_disjoint() -> None:
    text = "refunds take five to seven business days to appear"
    assert M.bleu([text], [text])[0] == pytest.approx(100.0)
    assert M.bleu(["completely different words here now"], [text])[0] == pytest.approx(0.0)


def test_perplexity_is_token_weighted() -> None:
    # answers with NLL sums 2*ln(2) over 2 tokens and 3*ln(4) over 3 tokens:
    # corpus ppl = exp((2 ln2 + 3 ln4) / 5) = exp(8 ln2 / 5) = 2**1.6
    agg, per = M.perplexity([(2 * math.log(2), 2), (3 * math.log(4), 3)])
    assert agg == pytest.approx(2**1.6)
    assert per == pytest.approx([2.0, 4.0])
