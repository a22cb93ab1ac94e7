"""Memory and speed of `--nproc 2` full fine-tuning under DDP, FSDP and DeepSpeed ZeRO.

    python bench/bench_distributed.py [--modes ddp,fsdp,zero1,zero2,zero3] [--steps 6]
        [--batch-size 4] [--max-length 256]

Each mode trains the bundled SmolLM2-135M-Instruct with `adapter.type: full` (every
weight trainable, so the optimizer state is 2x the weights: what ZeRO and FSDP exist to
split) on the support example's chats, in 2 processes, fp32, the same steps and global
batch. It runs `tuneloop train` as a user would and reports, per mode:

- peak memory while training: the largest resident set of either worker up to the last
  step (the run's own `peak_memory_gb` metric), what sharding is for;
- peak memory overall: the largest resident set of any process the run started, loading
  and the final gather and save included (`getrusage(RUSAGE_CHILDREN)`);
- training tokens/s from the run's metrics (model loading and saving excluded);
- the final training loss (all modes compute the same steps, so these should agree);
- each figure's ratio to DDP's.

DeepSpeed's own optimizer (FusedAdam) and offload are not used: tuneloop hands it
`torch.optim.AdamW`, so the comparison isolates the sharding.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run_mode(mode: str, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """Train in a fresh child (so its RUSAGE_CHILDREN peak is this mode's alone)."""
    code = f"""
import json, resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "tuneloop.cli", "train",
    {str(work / f"{mode}.yaml")!r}, "--nproc", "2"], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({{"rc": done.returncode, "peak_kb": peak, "err": done.stderr[-3000:]}}))
"""
    recipe = {
        "name": f"bench-{mode}",
        "model": "smollm2-135m-instruct",
        "data": {
            "train": str(REPO / "examples/support/train.jsonl"),
            "max_length": args.max_length,
        },
        "adapter": {"type": "full"},
        "training": {
            "precision": "fp32",
            "distributed": mode,
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": 2e-5,
            "logging_steps": 1,
            "group_by_length": False,
        },
        "output_dir": str(work / "runs"),
    }
    (work / f"{mode}.yaml").write_text(yaml.safe_dump(recipe))
    env = dict(os.environ, TUNELOOP_NO_PROGRESS="1", TUNELOOP_HOME=str(work / "home"))
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - start
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{mode} failed:\n{result['err']}")
    run_dir = next((work / "runs").glob(f"*-bench-{mode}"))
    entries = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in entries if "loss" in e]
    tokens = sum(e["tokens_per_s"] for e in steps[1:]) / max(1, len(steps) - 1)  # skip warm-up
    return {
        "train_peak_gb": steps[-1]["peak_memory_gb"],
        "peak_gb": result["peak_kb"] * 1024 / 1e9,
        "tokens_per_s": tokens,
        "final_loss": steps[-1]["loss"],
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="ddp,fsdp,zero1,zero2,zero3")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {}
        for mode in modes:
            results[mode] = run_mode(mode, work, args)
            r = results[mode]
            print(
                f"{mode}: peak memory training {r['train_peak_gb']:.2f} GB, overall "
                f"{r['peak_gb']:.2f} GB, {r['tokens_per_s']:.0f} tokens/s, "
                f"final loss {r['final_loss']:.4f}, {r['wall_s']:.0f} s wall",
                flush=True,
            )
    base = results.get("ddp")
    print(
        "\n| mode | peak GB per process, training | vs DDP | peak GB, overall | vs DDP "
        "| tokens/s | vs DDP | final loss |"
    )
    print("|---|---|---|---|---|---|---|---|")

    def ratio(mode: str, key: str) -> str:
        return f"{results[mode][key] / base[key]:.2f}x" if base else "-"

    for mode, r in results.items():
        print(
            f"| {mode} | {r['train_peak_gb']:.2f} | {ratio(mode, 'train_peak_gb')} "
            f"| {r['peak_gb']:.2f} | {ratio(mode, 'peak_gb')} | {r['tokens_per_s']:.0f} "
            f"| {ratio(mode, 'tokens_per_s')} | {r['final_loss']:.4f} |"
        )


if __name__ == "__main__":
    main()
