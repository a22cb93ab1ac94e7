"""Tokenise + pack: throughput, and how much of each batch is real tokens, tuneloop vs TRL.

    python bench/bench_pack.py [--rows 9000] [--max-length 512] [--batch-size 16]
        [--repeats 2]

Data: Banking77 chat examples read in place from `../shared/data/banking77/train.csv`
(skipped when absent), rendered with the bundled model's chat template (system prompt,
customer message, intent label), as `bench/bench_sft.py` trains on them.

Timed, alternating, on the same rows (rows/s over `--repeats` runs, the best kept):
- tuneloop: `tokenize_conversations` (render, tokenise, loss mask on the answer) then
  `pack_examples` (best-fit decreasing into rows of `--max-length`);
- TRL: `apply_chat_template` + tokeniser on prompt/completion rows (what `SFTTrainer`
  does to prepare them, one process) then `trl.pack_dataset(strategy="bfd")`.

Reported: the fraction of batch tokens that are real (not padding), for batches of
`--batch-size` examples or rows:
- unpacked, random batches padded to their longest row (TRL's default);
- unpacked, tuneloop's length-grouped batches (its default);
- packed rows of each tool, padded to the longest row of the batch.
"""

from __future__ import annotations

import argparse
import csv
import random
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "train.csv"
SYSTEM = "Banking intent classifier: answer with the intent label."


def _fill(lengths: list[int], batches: list[list[int]]) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    area = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return real / area


def _random_batches(n: int, size: int, seed: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i : i + size] for i in range(0, n, size)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=9000)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if not DATA.exists():
        print(f"skipped: data not found ({DATA})")
        return
    from datasets import Dataset
    from trl import pack_dataset

    from tuneloop.models import load_tokenizer
    from tuneloop.models.bundled import cached_path
    from tuneloop.training.loop import batch_plan
    from tuneloop.training.tokenize import pack_examples, tokenize_conversations

    model = cached_path("smollm2-135m-instruct")
    if not (model / "config.json").exists():
        print(f"skipped: model not found ({model}); run `tuneloop models pull` first")
        return
    tokenizer = load_tokenizer(str(model))
    with DATA.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[: args.rows]
    convs = [
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": r["text"]},
            {"role": "assistant", "content": r["category"]},
        ]
        for r in rows
    ]

    def run_tuneloop() -> tuple[list[int], list[int]]:
        tok = tokenize_conversations(tokenizer, convs, args.max_length, progress=False)
        packed, _ = pack_examples(tok.examples, args.max_length)
        return [len(e.input_ids) for e in tok.examples], [len(e.input_ids) for e in packed]

    def run_trl() -> tuple[list[int], list[int]]:
        # what SFTTrainer's dataset preparation does for conversational prompt-completion rows
        ids = []
        for c in convs:
            prompt = tokenizer.apply_chat_template(
                c[:2], tokenize=False, add_generation_prompt=True
            )
            full = tokenizer.apply_chat_template(c, tokenize=False)
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            ids.append(
                {
                    "input_ids": f_ids,
                    "completion_mask": [0] * len(p_ids) + [1] * (len(f_ids) - len(p_ids)),
                }
            )
        ds = Dataset.from_list(ids)
        packed = pack_dataset(ds, args.max_length, strategy="bfd")
        return [len(x) for x in ds["input_ids"]], [len(x) for x in packed["input_ids"]]

    print(f"tokenise + pack: {len(convs)} Banking77 chats, rows of {args.max_length} tokens")
    best: dict[str, float] = {}
    out: dict[str, tuple[list[int], list[int]]] = {}
    for rep in range(args.repeats):
        order = [("tuneloop", run_tuneloop), ("trl", run_trl)]
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            out[name] = fn()
            rate = len(convs) / (time.perf_counter() - t)
            best[name] = max(best.get(name, 0.0), rate)
            print(f"  run {rep + 1} {name:>8}: {rate:8.0f} rows/s", flush=True)
    lengths, t_packed = out["tuneloop"]
    trl_lengths, trl_packed = out["trl"]
    b = args.batch_size
    print(f"tokens: tuneloop {sum(lengths)}, trl {sum(trl_lengths)}")
    print(
        f"throughput: tuneloop {best['tuneloop']:.0f} rows/s, trl {best['trl']:.0f} rows/s,"
        f" ratio {best['tuneloop'] / best['trl']:.2f}x"
    )
    print(f"real-token fraction of batches of {b}:")
    print(
        f"  random batches, padded (TRL default)     "
        f"{_fill(lengths, _random_batches(len(lengths), b, 0)):.4f}"
    )
    grouped = batch_plan(lengths, b, seed=0, epoch=0, group_by_length=True)
    print(f"  length-grouped, padded (tuneloop default){_fill(lengths, grouped):.4f}")
    print(
        f"  tuneloop packed ({len(t_packed)} rows)          "
        f"{_fill(t_packed, _random_batches(len(t_packed), b, 0)):.4f}"
    )
    print(
        f"  trl packed bfd ({len(trl_packed)} rows)           "
        f"{_fill(trl_packed, _random_batches(len(trl_packed), b, 0)):.4f}"
    )


if __name__ == "__main__":
    main()
