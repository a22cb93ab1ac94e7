"""Rollout speed: tuneloop's batched sampler against a plain per-prompt `generate` loop.

    python bench/bench_rollout.py [--prompts 16] [--new-tokens 32] [--repeats 2]

Work: the first `--prompts` prompts of the HH harmless pairs (`../shared/data/
hh-rlhf-harmless/pairs.jsonl`, skipped when absent), one sampled answer each at temperature
1 with up to `--new-tokens` tokens, on the bundled SmolLM2-135M-Instruct. tuneloop:
`models.generate.sample` (prompts left-padded into one batch, the KV cache, stop at the
end-of-turn token per row), the engine PPO, GRPO and RLOO roll out with. The standard way:
`model.generate` once per prompt with the same sampling settings. Both run in this process,
alternating which goes first; reported: generated tokens/s of each and the ratio. (The
share of a PPO step spent generating is logged by every RL run as `rollout_share`.)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl"


def _batched(model, tokenizer, prompts, new_tokens: int) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    from tuneloop.models.generate import sample

    start = time.perf_counter()
    out = sample(
        model, tokenizer, prompts, n=1, max_new_tokens=new_tokens, seed=0, batch_size=len(prompts)
    )
    return sum(len(answers[0].ids) for answers in out), time.perf_counter() - start


def _per_prompt(model, tokenizer, prompts, new_tokens: int) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    import torch

    from tuneloop.models.generate import encode_prompt

    start, tokens = time.perf_counter(), 0
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, prompt)])
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                do_sample=True,
                top_k=0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        tokens += out.shape[1] - ids.shape[1]
    return tokens, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if not DATA.exists():
        print(f"skipped: data not found ({DATA})")
        return
    from transformers import AutoModelForCausalLM

    from tuneloop.data.readers import read_rows
    from tuneloop.models import load_tokenizer
    from tuneloop.models.bundled import cached_path

    path = cached_path("smollm2-135m-instruct")
    if not Path(path, "config.json").exists():
        print("skipped: run `tuneloop models pull` first")
        return
    prompts = [r["prompt"] for r in read_rows(DATA, "preference", strict=True).rows]
    prompts = prompts[: args.prompts]
    tokenizer = load_tokenizer(str(path))
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    rates: dict[str, list[float]] = {"tuneloop": [], "per-prompt": []}
    work = {"tuneloop": _batched, "per-prompt": _per_prompt}
    print(f"rollouts: {len(prompts)} prompts x 1 answer, up to {args.new_tokens} new tokens")
    for rep in range(args.repeats):
        order = ["tuneloop", "per-prompt"] if rep % 2 == 0 else ["per-prompt", "tuneloop"]
        for name in order:
            tokens, seconds = work[name](model, tokenizer, prompts, args.new_tokens)
            rates[name].append(tokens / seconds)
            print(
                f"  run {rep + 1} {name:>10}: {tokens / seconds:7.1f} tokens/s "
                f"({tokens} tokens in {seconds:.1f} s)",
                flush=True,
            )
    ours, theirs = statistics.median(rates["tuneloop"]), statistics.median(rates["per-prompt"])
    print(f"ratio tuneloop/per-prompt: {ours / theirs:.2f}x tokens/s")


if __name__ == "__main__":
    main()
