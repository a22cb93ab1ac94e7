"""tuneloop vs TRL's SFTTrainer defaults: the same SFT work, alternating, in one invocation.

    python bench/bench_sft.py [--adapter lora|full] [--steps 20] [--batch-size 16]
        [--repeats 1] [--rows-seed 0] [--model DIR]

Work: the bundled SmolLM2-135M-Instruct (from tuneloop's model cache; `tuneloop models
pull` puts it there) on Banking77 chat examples read in place from
`../shared/data/banking77/train.csv` (skipped when absent): system prompt, the customer
message as the user turn, the intent label as the answer. The same `steps * batch_size`
rows, drawn at random once, go to both tools.

Both sides train the same adapter (LoRA r=16, alpha 32, no dropout, all linear layers; or
every weight with `--adapter full`), with the same learning rate (1e-3 LoRA, 1e-4 full),
constant schedule, batch size, number of optimizer steps and the loss on the answer only
(TRL: prompt-completion rows, where completion-only loss is its default). Everything that
decides speed is each tool's own default:

- TRL `SFTConfig`: bf16 autocast, gradient checkpointing, padding to the longest row of
  each random batch, full logits for every position.
- tuneloop (`tuneloop.training.sft`, the recipe's defaults): `precision: auto` (bf16
  autocast where the CPU has native bf16), no gradient checkpointing, length-grouped
  batches, the output layer only on positions with a target.

Each tool runs in its own subprocess (so its peak memory is its own), alternating which
goes first when `--repeats` > 1. Reported per tool: tokens/s (non-padding tokens of the
training steps / seconds of the training steps: model loading and saving excluded for
both), peak resident memory of the process, the mean loss of the first and last 5 steps;
then the ratio of tokens/s. The losses agree when both tools computed the same objective
on the same rows (the row order differs, so they agree to noise, not to the digit).
"""

from __future__ import annotations

import argparse
import csv
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

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "train.csv"
SYSTEM = "Banking intent classifier: answer with the intent label."


def _rows(n: int, seed: int) -> list[dict[str, str]]:
    with DATA.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    random.Random(seed).shuffle(rows)
    return rows[:n]


def _worker_tuneloop(args: argparse.Namespace, rows: list[dict[str, str]], tmp: Path) -> dict:
    os.environ["TUNELOOP_HOME"] = str(tmp / "home")
    from tuneloop.config.load import recipe_from_dict
    from tuneloop.training.sft import sft

    data = tmp / "train.jsonl"
    with data.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({"text": r["text"], "label": r["category"]}) + "\n")
    adapter = (
        {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0}
        if args.adapter == "lora"
        else {"type": "full"}
    )
    recipe = recipe_from_dict(
        {
            "name": "bench",
            "model": args.model,
            "data": {
                "train": str(data),
                "format": "classification",
                "template": "{text}",
                "system_prompt": SYSTEM,
                "max_length": 128,
            },
            "adapter": adapter,
            "training": {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "learning_rate": _lr(args),
                "lr_scheduler": "constant",
                "warmup_ratio": 0.0,
                "logging_steps": 1,
                "save_steps": 10**6,
            },
        }
    )
    result = sft(recipe, run_dir=tmp / "run")
    losses = [h["loss"] for h in result.history if "loss" in h and "eval_loss" not in h]
    return {
        "tokens": result.metrics["train_tokens"],
        "seconds": result.metrics["train_tokens"] / result.metrics["train_tokens_per_s"],
        "losses": losses,
    }


def _worker_trl(args: argparse.Namespace, rows: list[dict[str, str]], tmp: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    ds = Dataset.from_list(
        [
            {
                "prompt": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": r["text"]},
                ],
                "completion": [{"role": "assistant", "content": r["category"]}],
            }
            for r in rows
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    peft_config = None
    if args.adapter == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    record, losses, timer = trl_recorder()

    config = SFTConfig(
        output_dir=str(tmp / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=_lr(args),
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        max_length=128,
        seed=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),  # TRL refuses bf16 on CPU without it
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[record],
    )
    trainer.train()
    return {
        "tokens": _trl_tokens(trainer),
        "seconds": timer["end"] - timer["start"],
        "losses": losses,
    }


def _trl_tokens(trainer) -> int:
    """Non-padding tokens of every row TRL trained on (rows are seen once at most here)."""
    return sum(len(ids) for ids in trainer.train_dataset["input_ids"])


def _lr(args: argparse.Namespace) -> float:
    if args.lr is not None:
        return args.lr
    return 1e-3 if args.adapter == "lora" else 1e-4


def _argv(args: argparse.Namespace) -> list[str]:
    argv = ["--adapter", args.adapter, "--steps", str(args.steps), "--batch-size"]
    argv += [str(args.batch_size), "--rows-seed", str(args.rows_seed), "--model", args.model]
    return argv + (["--lr", str(args.lr)] if args.lr is not None else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapter", choices=["lora", "full"], default="lora")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--rows-seed", type=int, default=0)
    p.add_argument("--model", default=None)
    p.add_argument(
        "--lr", type=float, default=None, help="0 checks that both compute the same loss"
    )
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
        rows = _rows(args.steps * args.batch_size, args.rows_seed)
        with tempfile.TemporaryDirectory() as tmp:
            work = _worker_tuneloop if args.worker == "tuneloop" else _worker_trl
            res = work(args, rows, Path(tmp))
        res["peak_mb"] = peak_mb()
        print(json.dumps(res))
        return

    import torch

    print(
        f"SFT benchmark: {args.adapter}, {args.steps} steps x batch {args.batch_size}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, model {args.model}"
    )
    results = alternate(
        args.repeats,
        lambda tool: run_worker(__file__, tool, _argv(args)),
        lambda res: res["tokens"] / res["seconds"],
        "tokens/s",
    )
    summarise(results, "tokens/s")


if __name__ == "__main__":
    main()
