"""What the head-to-head benchmarks share: one subprocess per tool and run (so each peak
memory is that tool's own), alternating order, and one summary table with the ratio.

Used by bench_sft.py and bench_dpo.py; a worker prints one JSON line as its last output.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable


def peak_mb() -> float:
    """This process's peak resident memory in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def default_model() -> str:
    from tuneloop.models.bundled import cached_path

    return str(cached_path("smollm2-135m-instruct"))


def trl_recorder() -> tuple[object, list[float], dict[str, float]]:
    """A transformers callback that records the logged losses and the seconds of the
    training steps (from after dataset preparation and model wrapping to the end), and the
    list and dict it fills."""
    import time

    from transformers import TrainerCallback

    losses: list[float] = []
    timer: dict[str, float] = {}

    class Record(TrainerCallback):
        def on_train_begin(self, *a, **k):
            timer["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            timer["end"] = time.perf_counter()

        def on_log(self, a, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    return Record(), losses, timer


def run_worker(script: str, tool: str, argv: list[str]) -> dict:
    """Run `script --worker TOOL ARGV...` and return the JSON of its last line."""
    out = subprocess.run(
        [sys.executable, script, "--worker", tool, *argv], capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"{tool} worker failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def alternate(
    repeats: int, work: Callable[[str], dict], rate: Callable[[dict], float], unit: str
) -> dict[str, list[dict]]:
    """Run both tools `repeats` times, alternating which goes first; prints each run."""
    results: dict[str, list[dict]] = {"tuneloop": [], "trl": []}
    for rep in range(repeats):
        order = ["tuneloop", "trl"] if rep % 2 == 0 else ["trl", "tuneloop"]
        for tool in order:
            res = work(tool)
            res["rate"] = rate(res)
            results[tool].append(res)
            losses = res["losses"]
            print(
                f"  run {rep + 1} {tool:>8}: {res['rate']:8.2f} {unit} "
                f"({res['seconds']:.1f} s), peak {res['peak_mb']:.0f} MB, loss first5 "
                f"{statistics.mean(losses[:5]):.4f} last5 {statistics.mean(losses[-5:]):.4f}",
                flush=True,
            )
    return results


def summarise(results: dict[str, list[dict]], unit: str) -> None:
    """The median rate, the peak memory and the loss trajectory per tool, then the ratio."""
    summary = {}
    for tool, runs in results.items():
        summary[tool] = {
            "rate": statistics.median(r["rate"] for r in runs),
            "peak_mb": max(r["peak_mb"] for r in runs),
            "first5": statistics.mean(statistics.mean(r["losses"][:5]) for r in runs),
            "last5": statistics.mean(statistics.mean(r["losses"][-5:]) for r in runs),
        }
    print(f"{'':10}{unit:>12}{'peak MB':>10}{'loss 1-5':>10}{'loss last5':>11}")
    for tool in ("tuneloop", "trl"):
        s = summary[tool]
        print(
            f"{tool:10}{s['rate']:12.2f}{s['peak_mb']:10.0f}{s['first5']:10.4f}{s['last5']:11.4f}"
        )
    t, r = summary["tuneloop"], summary["trl"]
    print(
        f"ratio tuneloop/trl: {t['rate'] / r['rate']:.2f}x {unit}, "
        f"{t['peak_mb'] / r['peak_mb']:.2f}x peak memory"
    )
