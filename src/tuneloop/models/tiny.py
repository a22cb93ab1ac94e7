"""Tiny randomly initialised Llama-shaped models for tests: real tokenizer, seconds to train."""

from __future__ import annotations

from pathlib import Path

from tuneloop.models import bundled


def make_tiny_model(
    out: str | Path,
    tokenizer_from: str | Path | None = None,
    layers: int = 2,
    width: int = 64,
    seed: int = 0,
) -> Path:
    """Save a 2-layer, width-64 Llama with the bundled model's tokenizer into `out`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = Path(tokenizer_from) if tokenizer_from else bundled.pull("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=width * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
