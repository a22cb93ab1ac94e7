"""The rollout engine: seeded, `n` answers per prompt, token ids that match the text."""

from __future__ import annotations

from pathlib import Path

from tuneloop.models.generate import generate, sample

PROMPTS = [
    [{"role": "user", "content": "say something"}],
    [{"role": "user", "content": "a much longer question about the weather today"}],
    [{"role": "user", "content": "hi"}],
]


def _model(tiny_model: Path):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.models import load_tokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), load_tokenizer(str(tiny_model))


def test_samples_are_seeded_n_per_prompt_and_their_ids_are_the_answer(tiny_model: Path) -> None:
    model, tokenizer = _model(tiny_model)
    first = sample(model, tokenizer, PROMPTS, n=3, max_new_tokens=12, seed=1, batch_size=2)
    again = sample(model, tokenizer, PROMPTS, n=3, max_new_tokens=12, seed=1, batch_size=2)
    other = sample(model, tokenizer, PROMPTS, n=3, max_new_tokens=12, seed=2, batch_size=2)
    assert [len(answers) for answers in first] == [3, 3, 3]
    assert [[s.ids for s in a] for a in first] == [[s.ids for s in a] for a in again]
    assert [[s.ids for s in a] for a in first] != [[s.ids for s in a] for a in other]
    # a random tiny model rarely repeats itself: three samples of a prompt differ
    assert len({tuple(s.ids) for s in first[1]}) > 1
    eos = tokenizer.eos_token_id
    for answers in first:
        for s in answers:
            assert 1 <= len(s.ids) <= 12
            assert s.stopped == (s.ids[-1] == eos) and eos not in s.ids[:-1]
            assert s.text == tokenizer.decode(s.ids, skip_special_tokens=True).strip()


def test_temperature_zero_is_the_greedy_answer(tiny_model: Path) -> None:
    model, tokenizer = _model(tiny_model)
    greedy, _ = generate(model, tokenizer, PROMPTS, max_new_tokens=10)
    sampled = sample(model, tokenizer, PROMPTS, n=2, max_new_tokens=10, temperature=0)
    for g, answers in zip(greedy, sampled, strict=True):
        assert [s.text for s in answers] == [g.text, g.text]
