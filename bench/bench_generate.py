"""Batched evaluation generation vs a per-example `generate` loop, on the same prompts.

    python bench/bench_generate.py [--prompts 64] [--batch-size 16] [--max-new-tokens 64]
        [--repeats 2]

Prompts: the first `--prompts` customer messages of `../shared/data/banking77/train.csv`
(read in place; skipped when absent) as user turns after a short system prompt asking
for a helpful reply, so answers run to tens of tokens. Model: the bundled
SmolLM2-135M-Instruct, loaded as `tuneloop eval` loads it.

Both sides decode greedily with the KV cache and stop at the end-of-turn token:
- tuneloop: `tuneloop.models.generate.generate` (prompts sorted by length, batches of
  `--batch-size` left-padded);
- reference: one `model.generate` call per prompt (no padding), the plain loop.

Alternating, `--repeats` times; reports generated tokens/s of each (new tokens up to and
including the end-of-turn token / seconds), the ratio, and how many answers are
identical (greedy decoding is deterministic, but a padded batch adds rows to the same
matrix products, so float rounding can flip a near-tie).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "train.csv"
SYSTEM = "You are a bank's support assistant. Reply helpfully in two or three sentences."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if not DATA.exists():
        print(f"skipped: data not found ({DATA})")
        return
    import torch

    from tuneloop.models import load
    from tuneloop.models.bundled import cached_path
    from tuneloop.models.generate import encode_prompt, generate

    path = cached_path("smollm2-135m-instruct")
    if not (path / "config.json").exists():
        print(f"skipped: model not found ({path}); run `tuneloop models pull` first")
        return
    model, tokenizer, _ = load(str(path))
    model.eval()
    with DATA.open(newline="", encoding="utf-8") as fh:
        texts = [r["text"] for r in csv.DictReader(fh)][: args.prompts]
    prompts = [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": t}] for t in texts
    ]
    eos = tokenizer.eos_token_id

    def batched() -> tuple[list[str], int, float]:
        t = time.perf_counter()
        gens, _ = generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
        seconds = time.perf_counter() - t
        return [g.text for g in gens], sum(g.new_tokens for g in gens), seconds

    def loop() -> tuple[list[str], int, float]:
        t = time.perf_counter()
        out, n = [], 0
        for prompt in prompts:
            ids = torch.tensor([encode_prompt(tokenizer, prompt)])
            with torch.inference_mode():
                gen = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=args.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=eos,
                )
            new = gen[0, ids.shape[1] :].tolist()
            n += len(new)
            if eos in new:
                new = new[: new.index(eos)]
            out.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        return out, n, time.perf_counter() - t

    print(
        f"generation: {len(prompts)} prompts, max {args.max_new_tokens} new tokens, "
        f"batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    rates: dict[str, list[float]] = {"tuneloop": [], "loop": []}
    texts_of: dict[str, list[str]] = {}
    for rep in range(args.repeats):
        order = [("tuneloop", batched), ("loop", loop)]
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            texts_out, tokens, seconds = fn()
            texts_of[name] = texts_out
            rates[name].append(tokens / seconds)
            print(
                f"  run {rep + 1} {name:>8}: {tokens / seconds:7.1f} tokens/s "
                f"({tokens} tokens in {seconds:.1f} s)",
                flush=True,
            )
    same = sum(a == b for a, b in zip(texts_of["tuneloop"], texts_of["loop"], strict=True))
    best = {k: max(v) for k, v in rates.items()}
    print(
        f"tuneloop batched {best['tuneloop']:.1f} tokens/s, per-example loop "
        f"{best['loop']:.1f} tokens/s, ratio {best['tuneloop'] / best['loop']:.2f}x; "
        f"identical answers {same}/{len(prompts)}"
    )


if __name__ == "__main__":
    main()
