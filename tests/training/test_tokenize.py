"""Loss masks: only assistant turns (with their end-of-turn token) carry the loss, any template."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.errors import TrainingError
from tuneloop.training.tokenize import IGNORE, pack_documents, tokenize_conversations

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
]

# A template with no {% generation %} markers and a different turn layout from SmolLM2's
ZEPHYR_LIKE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _targets(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example.labels if t != IGNORE])


@pytest.fixture()
def tokenizer(bundled_model_dir: Path):
    from tuneloop.models import load_tokenizer

    return load_tokenizer(str(bundled_model_dir))


def test_every_assistant_turn_and_only_those(tokenizer) -> None:
    out = tokenize_conversations(tokenizer, [CONV], max_length=512, progress=False)
    ex = out.examples[0]
    assert _targets(tokenizer, ex) == ("Hello! How can I help?<|im_end|>\nFour.<|im_end|>\n")
    # the labels equal the input ids where they are set
    assert all(lab in (IGNORE, i) for i, lab in zip(ex.input_ids, ex.labels, strict=True))
    last = tokenize_conversations(tokenizer, [CONV], 512, last_only=True, progress=False)
    assert _targets(tokenizer, last.examples[0]) == "Four.<|im_end|>\n"


def test_a_template_without_generation_markers(tokenizer) -> None:
    tokenizer.chat_template = ZEPHYR_LIKE
    out = tokenize_conversations(tokenizer, [CONV], max_length=512, progress=False)
    assert _targets(tokenizer, out.examples[0]) == "Hello! How can I help?</s>\nFour.</s>\n"


def test_truncation_keeps_partial_answers_and_drops_empty_ones(tokenizer) -> None:
    short = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b c d e f"}]
    long = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "x"}]
    out = tokenize_conversations(tokenizer, [short, long], max_length=40, progress=False)
    assert out.kept == [0]
    assert out.dropped == {"answer cut off entirely by max_length": 1}
    assert out.truncated == 1
    cut = tokenize_conversations(tokenizer, [short], max_length=36, progress=False)
    assert len(cut.examples[0].input_ids) == 36 and cut.truncated == 1
    assert 0 < cut.examples[0].num_targets < out.examples[0].num_targets


def test_a_template_that_rewrites_history_is_refused(tokenizer) -> None:
    # renders earlier assistant turns differently once a later turn exists
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}{{ m['content'] }}{% else %}[{{ m['role'] }}]"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    with pytest.raises(TrainingError, match="cannot be located"):
        tokenize_conversations(tokenizer, [CONV], max_length=512, progress=False)


def test_packing_fills_blocks_exactly(tokenizer) -> None:
    docs = ["The bank opens at nine. " * 20, "Cards arrive in five days. " * 30]
    out = pack_documents(tokenizer, docs, block_size=32)
    assert out.examples and all(len(e.input_ids) == 32 for e in out.examples)
    assert all(e.labels == e.input_ids for e in out.examples)
    stream = [t for e in out.examples for t in e.input_ids]
    assert tokenizer.eos_token_id in stream  # documents are separated
