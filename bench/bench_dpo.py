"""tuneloop DPO vs TRL's DPOTrainer defaults: the same pairs, alternating, in one invocation.

    python bench/bench_dpo.py [--steps 12] [--batch-size 8] [--repeats 2] [--lr 5e-5]
        [--max-length 384] [--model DIR]

Work: the bundled SmolLM2-135M-Instruct (tuneloop's model cache) on Anthropic HH harmless
preference pairs read in place from `../shared/data/hh-rlhf-harmless/pairs.jsonl` (skipped
when absent). `steps * batch_size` pairs are drawn at random once (seed 0) from those whose
prompt + longer answer fits `--max-length` tokens, so neither tool truncates or drops any.

Both sides: LoRA r=16, alpha 32, no dropout, all linear layers; the reference is the base
with the adapter disabled (TRL's default with a PEFT model, tuneloop's always); sigmoid DPO
loss with beta 0.1; the same learning rate, constant schedule, batch size and number of
optimizer steps. Everything else is each tool's own default:

- TRL `DPOConfig`: bf16 autocast, gradient checkpointing, chosen and rejected padded to the
  longest row of each random batch and run as one concatenated forward.
- tuneloop (`method: dpo`, the recipe's defaults): `precision: auto`, no gradient
  checkpointing, length-grouped batches, chosen and rejected as one 2B-row forward.

Reported per tool: pairs/s (pairs trained / seconds of the training steps; model loading,
data preparation and saving excluded for both), peak resident memory of the process, and
the mean DPO loss of the first and last 5 steps (both start at ln 2 = 0.6931; the row order
differs, so later losses agree to noise, not to the digit); then the ratio of pairs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

from head_to_head import (
    alternate,
    default_model,
    peak_mb,
    run_worker,
    summarise,
    trl_recorder,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl"


def _pairs(n: int, model: str, max_length: int) -> list[dict[str, str]]:
    """`n` raw HH pairs whose prompt + longer answer fit `max_length` tokens (seeded)."""
    from tuneloop.data.readers import read_rows
    from tuneloop.models import load_tokenizer
    from tuneloop.training.pairs import tokenize_pairs

    raw = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    rows = read_rows(DATA, "preference", strict=True).rows
    tokenized = tokenize_pairs(load_tokenizer(model), rows, max_length, progress=False)
    keep = tokenized.kept
    random.Random(0).shuffle(keep)
    if len(keep) < n:
        raise SystemExit(f"only {len(keep)} pairs fit {max_length} tokens; {n} needed")
    return [raw[i] for i in keep[:n]]


def _worker_tuneloop(args: argparse.Namespace, pairs: list[dict], tmp: Path) -> dict:
    os.environ["TUNELOOP_HOME"] = str(tmp / "home")
    from tuneloop.config.load import recipe_from_dict
    from tuneloop.training.dpo import train_preference

    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    recipe = recipe_from_dict(
        {
            "name": "bench-dpo",
            "model": args.model,
            "method": "dpo",
            "data": {"train": str(data), "max_length": args.max_length},
            "adapter": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
            "alignment": {"beta": 0.1, "loss": "sigmoid"},
            "training": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "learning_rate": args.lr,
                "lr_scheduler": "constant",
                "warmup_ratio": 0.0,
                "logging_steps": 1,
                "save_steps": 10**6,
            },
        }
    )
    result = train_preference(recipe, run_dir=tmp / "run")
    losses = [h["loss"] for h in result.history if "loss" in h]
    seconds = result.metrics["train_tokens"] / result.metrics["train_tokens_per_s"]
    return {"pairs": args.steps * args.batch_size, "seconds": seconds, "losses": losses}


def _worker_trl(args: argparse.Namespace, pairs: list[dict], tmp: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from tuneloop.data.readers import read_rows

    torch.manual_seed(0)
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    rows = read_rows(data, "preference", strict=True).rows  # the same prompt/answer split
    ds = Dataset.from_list(
        [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    record, losses, timer = trl_recorder()

    config = DPOConfig(
        output_dir=str(tmp / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        max_length=args.max_length,
        beta=0.1,
        seed=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=ds,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
        callbacks=[record],
    )
    trainer.train()
    return {
        "pairs": args.steps * args.batch_size,
        "seconds": timer["end"] - timer["start"],
        "losses": losses,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--model", default=None)
    p.add_argument("--worker", choices=["tuneloop", "trl"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if not DATA.exists():
        print(f"skipped: data not found ({DATA})")
        return
    args.model = args.model or default_model()
    if not Path(args.model, "config.json").exists():
        print(f"skipped: model not found ({args.model}); run `tuneloop models pull` first")
        return
    if args.worker:
        pairs = _pairs(args.steps * args.batch_size, args.model, args.max_length)
        with tempfile.TemporaryDirectory() as tmp:
            work = _worker_tuneloop if args.worker == "tuneloop" else _worker_trl
            res = work(args, pairs, Path(tmp))
        res["peak_mb"] = peak_mb()
        print(json.dumps(res))
        return

    import torch

    print(
        f"DPO benchmark: LoRA, {args.steps} steps x batch {args.batch_size} pairs, "
        f"max_length {args.max_length}, torch {torch.__version__}, {os.cpu_count()} CPUs"
    )
    argv = [
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--max-length",
        str(args.max_length),
        "--model",
        args.model,
    ]
    results = alternate(
        args.repeats,
        lambda tool: run_worker(__file__, tool, argv),
        lambda res: res["pairs"] / res["seconds"],
        "pairs/s",
    )
    summarise(results, "pairs/s")


if __name__ == "__main__":
    main()
