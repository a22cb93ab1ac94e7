"""Metric values checked against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from tuneloop.evaluation import metrics as M


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


def test_rouge_on_english_equals_rouge_score_defaults() -> None:
    from rouge_score import rouge_scorer

    preds = ["The refunds were processed quickly.", "my card arrived", "Cancelling transfers"]
    refs = ["Refunds are processed within days.", "when will my card arrive?", "cancel a transfer"]
    reference = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for name, key in (("rouge_1", "rouge1"), ("rouge_2", "rouge2"), ("rouge_l", "rougeL")):
        _, per = getattr(M, name)(preds, refs)
        expected = [reference.score(r, p)[key].fmeasure for p, r in zip(preds, refs, strict=True)]
        assert per == pytest.approx(expected), name


def test_rouge_and_token_f1_do_not_zero_out_non_latin_text() -> None:
    from rouge_score import rouge_scorer

    zh_pred, zh_ref = "我的卡还没到", "我的卡什么时候到"
    # rouge-score's own tokenizer drops every non a-z0-9 character: 0 for any Chinese pair
    plain = rouge_scorer.RougeScorer(["rouge1"]).score(zh_ref, zh_pred)["rouge1"].fmeasure
    assert plain == 0.0
    # per character: pred 6 chars, ref 8, common 我 的 卡 到 = 4 -> P 4/6, R 4/8, F 4/7
    assert M.rouge_1([zh_pred], [zh_ref])[0] == pytest.approx(8 / 14)
    assert M.token_f1([zh_pred], [zh_ref])[0] == pytest.approx(8 / 14)
    assert M.rouge_l(["Привет мир"], ["привет, мир!"])[0] == pytest.approx(1.0)
    assert M.tokenize("Café au lait, 東京タワー!") == [
        "café",
        "au",
        "lait",
        "東",
        "京",
        "タ",
        "ワ",
        "ー",
    ]


def test_token_f1_by_hand() -> None:
    # pred tokens {the, card, is, lost}, ref {my, card, is, lost, again}: common 3
    # P = 3/4, R = 3/5, F = 2 * 0.75 * 0.6 / 1.35 = 2/3
    _, per = M.token_f1(["The card is lost!", "", "x"], ["my card is lost again", "", "y"])
    assert per == pytest.approx([2 / 3, 1.0, 0.0])


def test_rouge_lsum_splits_sentences() -> None:
    # two sentences in swapped order: sentence-level union LCS recovers all of them,
    # plain ROUGE-L (one sequence) cannot
    pred = "The card arrived. The fee was refunded."
    ref = "The fee was refunded. The card arrived."
    assert M.rouge_lsum([pred], [ref])[0] == pytest.approx(1.0)
    assert M.rouge_l([pred], [ref])[0] < 0.7


def test_meteor_offline_by_hand() -> None:
    # identical 4-token answer: P = R = 1, 1 chunk of 4 matches:
    # penalty = 0.5 * (1/4)^3 = 0.0078125 -> score = 1 - penalty
    _, per = M.meteor(["my card is lost"], ["my card is lost"])
    assert per[0] == pytest.approx(1 - 0.5 * (1 / 4) ** 3, abs=1e-4)
    # stem stage: "cards" ~ "card" matches without WordNet
    assert M.meteor(["cards"], ["card"])[0] > 0.4
    assert M.meteor_stages()[:2] == ["exact", "stem"]


def test_json_valid_and_schema() -> None:
    schema = {
        "type": "object",
        "required": ["intent"],
        "properties": {"intent": {"type": "string"}},
    }
    preds = ['{"intent": "card_arrival"}', '```json\n{"intent": "x"}\n```', '{"intent": 3}', "no"]
    assert M.json_valid(preds, [""] * 4)[1] == [1.0, 1.0, 1.0, 0.0]
    assert M.json_valid(preds, [""] * 4, schema=schema)[1] == [1.0, 1.0, 0.0, 0.0]


def test_bleu_signature_names_the_settings() -> None:
    sig = M.bleu_signature()
    assert "tok:13a" in sig and "version:" in sig
