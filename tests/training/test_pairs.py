"""Preference pairs as tokens: the loss only on the final answer, one shared prompt, every
dropped pair counted, and batches laid out chosen-first."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tuneloop.data.readers import read_rows
from tuneloop.errors import DataError
from tuneloop.training.pairs import (
    IDENTICAL,
    NO_ANSWER,
    TOO_LONG,
    PairExample,
    collate_pairs,
    collate_unpaired,
    pair_rows_to_unpaired,
    tokenize_pairs,
    tokenize_unpaired,
)
from tuneloop.training.tokenize import IGNORE, tokenize_conversations

from conftest import write_jsonl

HH = Path("/work/shared/data/hh-rlhf-harmless/pairs.jsonl")
END = "<|im_end|>\n"  # what SmolLM2's template writes after an answer


def pref(user: str, chosen: str, rejected: str, source: str = "line 1") -> dict[str, object]:
    return {
        "kind": "preference",
        "prompt": [{"role": "user", "content": user}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "source": source,
    }


@pytest.fixture(scope="module")
def tokenizer(bundled_model_dir: Path):
    from tuneloop.models import load_tokenizer

    return load_tokenizer(str(bundled_model_dir))


def _targets(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example.labels if t != IGNORE])


def _one(tokenizer, row, max_length: int = 512, **kw) -> PairExample:
    out = tokenize_pairs(tokenizer, [row], max_length, progress=False, **kw)
    assert out.kept == [0], out.dropped
    return out.examples[0]


def test_labels_only_on_the_answer_and_ids_as_sft(tokenizer) -> None:
    row = pref("What is the capital of France?", "Paris.", "I think it is Lyon, maybe.")
    pair = _one(tokenizer, row)
    n = pair.prompt_length
    for side, answer in ((pair.chosen, "Paris."), (pair.rejected, "I think it is Lyon, maybe.")):
        assert side.labels[:n] == [IGNORE] * n
        assert side.labels[n:] == side.input_ids[n:]  # every answer token, end of turn too
        assert _targets(tokenizer, side) == answer + END
    assert pair.chosen.input_ids[:n] == pair.rejected.input_ids[:n]
    assert tokenizer.decode(pair.chosen.input_ids[:n]).endswith("<|im_start|>assistant\n")
    # exactly what SFT's last-answer masking gives for the same conversation
    sft = tokenize_conversations(
        tokenizer, [row["prompt"] + row["chosen"]], 512, last_only=True, progress=False
    ).examples[0]
    assert (pair.chosen.input_ids, pair.chosen.labels) == (sft.input_ids, sft.labels)
    assert pair.length == len(pair.rejected.input_ids) > len(pair.chosen.input_ids)
    assert pair.tokens == len(pair.chosen.input_ids) + len(pair.rejected.input_ids)


def test_prompt_tokens_are_shared_even_when_an_answer_starts_with_newlines(tokenizer) -> None:
    row = pref("Say something.", "\n\nHello there.", "Go away.")
    whole = [
        tokenize_conversations(tokenizer, [row["prompt"] + row[side]], 512, progress=False)
        for side in ("chosen", "rejected")
    ]
    a, b = (t.examples[0].input_ids for t in whole)
    pair = _one(tokenizer, row)
    n = pair.prompt_length
    # as one text, the template's "\n" merges with the answer's "\n\n": prompts differ
    assert a[:n] != b[:n]
    assert pair.chosen.input_ids[:n] == pair.rejected.input_ids[:n] == b[:n]
    assert _targets(tokenizer, pair.chosen) == "\n\nHello there." + END


def test_a_pair_over_max_length_is_dropped_and_one_at_it_kept(tokenizer) -> None:
    rows = [pref("q", "short", "a somewhat longer rejected answer"), pref("q2", "yes", "no")]
    full = tokenize_pairs(tokenizer, rows, 512, progress=False)
    longest = full.examples[0].length
    assert longest > full.examples[1].length
    at = tokenize_pairs(tokenizer, rows, longest, progress=False)
    assert at.kept == [0, 1] and not at.dropped
    over = tokenize_pairs(tokenizer, rows, longest - 1, progress=False)
    assert over.kept == [1]
    assert over.dropped == {TOO_LONG: 1}
    assert over.summary()["pairs"] == 1 and over.summary()["dropped"] == {TOO_LONG: 1}


def test_identical_sides_are_dropped_and_counted(tokenizer) -> None:
    rows = [pref("q", "same answer", "same answer"), pref("q", "good", "bad")]
    out = tokenize_pairs(tokenizer, rows, 512, progress=False)
    assert out.kept == [1]
    assert out.dropped == {IDENTICAL: 1}


def test_an_answer_with_no_tokens_is_dropped(tokenizer) -> None:
    # a template that writes nothing around an answer: an empty answer has no tokens at all
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n"
        "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    out = tokenize_pairs(tok, [pref("q", "", "bad"), pref("q", "good", "bad")], 64, progress=False)
    assert out.kept == [1]
    assert out.dropped == {NO_ANSWER: 1}
    # SmolLM2 writes an end of turn even after an empty answer, so that pair still trains
    kept = _one(tokenizer, pref("q", "", "bad"))
    assert _targets(tokenizer, kept.chosen) == END


def test_multi_turn_hh_trains_only_the_final_answer(tokenizer, tmp_path: Path) -> None:
    shared = "\n\nHuman: Hi\n\nAssistant: Hello, how can I help?\n\nHuman: Tell me a secret."
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [
            {
                "chosen": shared + "\n\nAssistant: I would rather not.",
                "rejected": shared + "\n\nAssistant: Here is one: the password is 1234.",
            }
        ],
    )
    rows = read_rows(path, fmt="preference", strict=True).rows
    assert len(rows[0]["prompt"]) == 3
    pair = _one(tokenizer, rows[0])
    n = pair.prompt_length
    prompt_text = tokenizer.decode(pair.chosen.input_ids[:n])
    assert "Hello, how can I help?" in prompt_text and "Tell me a secret." in prompt_text
    assert _targets(tokenizer, pair.chosen) == "I would rather not." + END
    assert _targets(tokenizer, pair.rejected) == "Here is one: the password is 1234." + END
    assert pair.chosen.input_ids[:n] == pair.rejected.input_ids[:n]
    assert all(lab == IGNORE for lab in pair.chosen.labels[:n])


def test_system_prompt_is_added_only_where_the_row_has_none(tokenizer) -> None:
    plain = _one(tokenizer, pref("q", "a", "b"), system_prompt="Be harmless.")
    text = tokenizer.decode(plain.chosen.input_ids[: plain.prompt_length])
    assert text.startswith("<|im_start|>system\nBe harmless.<|im_end|>")
    own = pref("q", "a", "b")
    own["prompt"] = [{"role": "system", "content": "Be terse."}, *own["prompt"]]
    kept = _one(tokenizer, own, system_prompt="Be harmless.")
    text = tokenizer.decode(kept.chosen.input_ids[: kept.prompt_length])
    assert "Be terse." in text and "Be harmless." not in text


def test_collate_pairs_puts_chosen_rows_first_and_pads_right(tokenizer) -> None:
    rows = [pref("q", "a long chosen answer here", "no"), pref("another question", "ok", "fine")]
    pairs = tokenize_pairs(tokenizer, rows, 512, progress=False).examples
    for p, (c, r) in zip(pairs, ((-1.0, -2.0), (-3.0, -4.0)), strict=True):
        p.ref_chosen, p.ref_rejected = c, r
    batch = collate_pairs(pairs, pad_id=tokenizer.pad_token_id)
    sides = [pairs[0].chosen, pairs[1].chosen, pairs[0].rejected, pairs[1].rejected]
    width = max(len(e.input_ids) for e in sides)
    assert batch["input_ids"].shape == batch["labels"].shape == (4, width)
    for row, e in enumerate(sides):
        n = len(e.input_ids)
        assert batch["input_ids"][row, :n].tolist() == e.input_ids
        assert batch["labels"][row, :n].tolist() == e.labels
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][row, n:].tolist() == [IGNORE] * (width - n)
        assert batch["input_ids"][row, n:].tolist() == [tokenizer.pad_token_id] * (width - n)
    assert batch["ref_chosen"].tolist() == [-1.0, -3.0]
    assert batch["ref_rejected"].tolist() == [-2.0, -4.0]
    pairs[1].ref_rejected = None  # a reference pass not yet run: no partial tensors
    assert "ref_chosen" not in collate_pairs(pairs, 0)
    assert "ref_rejected" not in collate_pairs(pairs, 0)


def test_paired_rows_convert_to_kto_rows_and_tokenize(tokenizer) -> None:
    rows = [pref("q", "good", "bad", "line 1"), pref("q2", "fine", "rude", "line 2")]
    kto = pair_rows_to_unpaired(rows)
    assert [r["kind"] for r in kto] == ["kto"] * 4
    assert [r["desirable"] for r in kto] == [True, False, True, False]
    assert [r["completion"][0]["content"] for r in kto] == ["good", "bad", "fine", "rude"]
    assert kto[3]["source"] == "line 2 (rejected)"
    assert kto[1]["prompt"] == rows[0]["prompt"] and kto[1]["prompt"] is not rows[0]["prompt"]
    out = tokenize_unpaired(tokenizer, kto, 512, progress=False)
    assert out.kept == [0, 1, 2, 3]
    assert _targets(tokenizer, out.examples[1].example) == "bad" + END
    e = out.examples[1]
    assert e.example.labels[: e.prompt_length] == [IGNORE] * e.prompt_length
    assert out.summary()["desirable"] == 2 and out.summary()["undesirable"] == 2
    short = min(x.length for x in out.examples)
    cut = tokenize_unpaired(tokenizer, kto, short, progress=False)
    assert len(cut.kept) + cut.dropped[TOO_LONG] == 4 and 0 < len(cut.kept) < 4
    assert all(x.length <= short for x in cut.examples)
    batch = collate_unpaired(out.examples, tokenizer.pad_token_id)
    assert batch["desirable"].tolist() == [True, False, True, False]
    assert batch["input_ids"].shape[0] == 4 and "ref_logp" not in batch
    for x, v in zip(out.examples, (-1.0, -2.0, -3.0, -4.0), strict=True):
        x.ref_logp = v
    assert collate_unpaired(out.examples, 0)["ref_logp"].tolist() == [-1.0, -2.0, -3.0, -4.0]


def test_malformed_rows_are_errors_that_name_the_row(tokenizer) -> None:
    bad = pref("q", "a", "b", "line 9")
    del bad["chosen"]
    with pytest.raises(DataError, match=r"row 1 \(line 9\): .*without 'chosen'"):
        tokenize_pairs(tokenizer, [pref("q", "a", "b"), bad], 512, progress=False)
    wrong_role = pref("q", "a", "b")
    wrong_role["rejected"] = [{"role": "user", "content": "b"}]
    with pytest.raises(DataError, match=r"row 0 .*'rejected' message 0 is 'user'"):
        tokenize_pairs(tokenizer, [wrong_role], 512, progress=False)
    with pytest.raises(DataError, match="pair_rows_to_unpaired"):
        tokenize_unpaired(tokenizer, [pref("q", "a", "b")], 512, progress=False)
    with pytest.raises(DataError, match="'kto' row where 'preference'"):
        tokenize_pairs(tokenizer, pair_rows_to_unpaired([pref("q", "a", "b")]), 512)


@pytest.mark.skipif(not HH.is_file(), reason=f"{HH} not present")
def test_real_hh_pairs_are_all_accounted_for(tokenizer, tmp_path: Path) -> None:
    lines = HH.read_text(encoding="utf-8").splitlines()[:200]
    path = tmp_path / "hh200.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = read_rows(path, fmt="preference", strict=True).rows
    assert len(rows) == 200
    out = tokenize_pairs(tokenizer, rows, 512, progress=False)
    summary = out.summary()
    print(json.dumps(summary))
    assert len(out.kept) + sum(out.dropped.values()) == 200
    assert summary["pairs"] == len(out.kept) > 100
    assert set(out.dropped) <= {TOO_LONG, IDENTICAL, NO_ANSWER}
    assert all(p.length <= 512 for p in out.examples)
    for p in out.examples:
        n = p.prompt_length
        assert p.chosen.input_ids[:n] == p.rejected.input_ids[:n]
        assert p.chosen.labels[n] != IGNORE and p.rejected.labels[n] != IGNORE
