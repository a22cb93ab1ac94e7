"""Constrained (label-set) decoding: every answer is a label, and it is the greedy path."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tuneloop.models.generate import answer_tokens, generate

LABELS = ["card_arrival", "lost_or_stolen_card", "card_not_working", "refund_not_showing_up"]


def _prompts() -> list[list[dict[str, str]]]:
    texts = ["where is my card", "someone took my card", "refund missing", "hello", "card?"]
    return [[{"role": "user", "content": t}] for t in texts]


def _masked_greedy(model, tokenizer, prompt, labels) -> str:  # type: ignore[no-untyped-def]
    """Reference: one forward per step on the unpadded prompt, argmax over the tokens that
    continue some label's answer tokens (computed from the label list, not a trie)."""
    import torch

    from tuneloop.models.generate import encode_prompt

    seqs = [answer_tokens(tokenizer, prompt, lab) for lab in labels]
    ids = encode_prompt(tokenizer, prompt)
    out: list[int] = []
    while True:
        allowed = sorted({s[len(out)] for s in seqs if s[: len(out)] == out and len(s) > len(out)})
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
        masked = torch.full_like(logits, float("-inf"))
        masked[allowed] = logits[allowed]
        out.append(int(masked.argmax()))
        if out[-1] == tokenizer.eos_token_id:
            return tokenizer.decode(out[:-1], skip_special_tokens=True).strip()


def test_constrained_answers_are_labels_and_follow_the_masked_greedy_path(
    tiny_model: Path,
) -> None:
    from tuneloop.models import load

    model, tokenizer, _ = load(str(tiny_model))
    prompts = _prompts()
    free, _ = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=2)
    # a random tiny model answers garbage when free; constrained, it must pick labels
    assert not all(g.text in LABELS for g in free)
    for batch_size in (1, 3):
        gens, _ = generate(
            model, tokenizer, prompts, max_new_tokens=2, batch_size=batch_size, choices=LABELS
        )
        assert all(g.text in LABELS and g.stopped for g in gens)
        expected = [_masked_greedy(model, tokenizer, p, LABELS) for p in prompts]
        assert [g.text for g in gens] == expected


def test_answer_tokens_end_with_the_end_of_turn_token(bundled_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir)
    toks = answer_tokens(tokenizer, _prompts()[0], "card_arrival")
    assert toks[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(toks[:-1]).strip() == "card_arrival"
    with pytest.raises(ValueError, match="at least one choice"):
        generate(None, tokenizer, _prompts(), choices=[])


def test_eval_constrain_labels_uses_the_data_labels(tiny_model: Path, tmp_path: Path) -> None:
    from tuneloop.errors import TuneloopError
    from tuneloop.evaluation import evaluate_file

    path = tmp_path / "intents.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i, lab in enumerate(LABELS * 2):
            writer.writerow([f"message {i}", lab])
    out = evaluate_file(
        str(tiny_model),
        path,
        metrics=["exact_match"],
        fmt="classification",
        constrain_labels=True,
    )
    assert {e["prediction"] for e in out.examples} <= set(LABELS)
    # text + label rows get the classification report with no extra flag
    report = out.classification
    assert report is not None and report["examples"] == len(LABELS) * 2
    hits = sum(e["prediction"] == e["reference"] for e in out.examples)
    assert out.metrics["accuracy"] == pytest.approx(hits / len(out.examples))
    assert out.metrics["accuracy"] == pytest.approx(out.metrics["exact_match"])
    assert report["outside_label_set"] == 0  # constrained: every answer is a label
    assert sum(c["count"] for c in report["confusions"]) == len(out.examples) - hits
    assert report["accuracy_ci"]["low"] <= out.metrics["accuracy"] <= report["accuracy_ci"]["high"]
    chat_file = tmp_path / "chat.jsonl"
    chat_file.write_text('{"prompt": "hi", "response": "hello"}\n')
    with pytest.raises(TuneloopError, match="no label set"):
        evaluate_file(str(tiny_model), chat_file, metrics=["exact_match"], constrain_labels=True)
    plain = evaluate_file(str(tiny_model), chat_file, metrics=["exact_match"], max_new_tokens=2)
    assert plain.classification is None and "accuracy" not in plain.metrics
