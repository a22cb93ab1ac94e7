"""Peak memory and throughput of `tuneloop data inspect` and `data curate` on synthetic rows.

    python bench/bench_curate.py [--rows 200000 2000000] [--only inspect|curate]
        [--config curate.yaml] [--keep DIR]

Data: synthetic prompt/response JSONL, made here (seeded, so every run sees the same file):
support-style questions and answers built from word lists, about 240 bytes a row (200k rows
is ~48 MB, the size in the hardening issue). So every step has work to do, 4% of the rows
repeat an earlier row exactly, 4% are an earlier row with one word changed (a near
duplicate), 3% carry an e-mail address or a phone number, and 1% have an empty answer.

Each measurement runs the real CLI (`python -m tuneloop.cli data inspect|curate`) in a
child of a fresh helper process, and reports the child's peak resident memory
(`getrusage(RUSAGE_CHILDREN).ru_maxrss`, taken in the helper so that one measurement's
peak never leaks into the next) and its wall time; rows/s is input rows / wall seconds.
`TUNELOOP_HOME` is a temporary folder (the bundled model is linked in from the real cache,
so the default pipeline's validate step can tokenize) and the registry a temporary SQLite.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_TOPICS = (
    "card",
    "account",
    "transfer",
    "payment",
    "refund",
    "password",
    "app",
    "loan",
    "savings",
    "statement",
)
_VERBS = (
    "arrive",
    "work",
    "show",
    "appear",
    "reset",
    "update",
    "cancel",
    "change",
    "close",
    "verify",
)
_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ne",
    "su",
    "ta",
    "ri",
    "po",
    "de",
    "fa",
    "gu",
    "be",
    "zo",
    "hi",
    "ja",
    "ve",
    "wu",
    "xi",
    "yo",
    "ce",
)


def _vocabulary(rng: random.Random, size: int = 5000) -> tuple[list[str], list[float]]:
    """Pseudo-words with Zipf frequencies, so texts share common words as real ones do."""
    words = sorted({"".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(size)})
    rng.shuffle(words)
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    return words, list(itertools.accumulate(weights))


def _sentence(rng: random.Random, vocab: tuple[list[str], list[float]], lo: int, hi: int) -> str:
    words, cumulative = vocab
    return " ".join(rng.choices(words, cum_weights=cumulative, k=rng.randint(lo, hi)))


def make_rows(n: int, seed: int = 0) -> Iterator[dict[str, str]]:
    """`n` prompt/response rows with planted duplicates, near duplicates, PII, empties.

    Duplicates copy one of the last 5,000 rows, so making 2M rows needs little memory.
    """
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    recent: list[dict[str, str]] = []
    for i in range(n):
        kind = rng.random()
        if recent and kind < 0.04:
            row = dict(rng.choice(recent))
        elif recent and kind < 0.08:
            row = dict(rng.choice(recent))
            words = row["prompt"].split()
            words[rng.randrange(len(words))] = rng.choice(vocab[0])
            row["prompt"] = " ".join(words)
        else:
            topic, verb = rng.choice(_TOPICS), rng.choice(_VERBS)
            prompt = f"Why does my {topic} not {verb}? {_sentence(rng, vocab, 6, 14)} (ticket {i})"
            answer = f"Your {topic} should {verb} soon. {_sentence(rng, vocab, 12, 30)}."
            if kind < 0.11:
                email, phone = f"agent{i}@example.com", f"+44 20 7946 {i % 10000:04d}"
                answer += rng.choice([f" Write to {email}.", f" Call us on {phone}."])
            if kind > 0.99:
                answer = " "
            row = {"prompt": prompt, "response": answer}
        recent.append(row)
        if len(recent) > 5000:
            recent.pop(0)
        yield row


def write_data(path: Path, n: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in make_rows(n):
            fh.write(json.dumps(row) + "\n")
    tmp.replace(path)


def _environment(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "TUNELOOP_HOME": str(home),
            "TUNELOOP_DB_URL": f"sqlite:///{home / 'registry.db'}",
            "TUNELOOP_NO_PROGRESS": "1",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    return env


def measure_one(command: list[str], env: dict[str, str]) -> dict[str, float | int]:
    """Run `command` as this process's only child: its wall time and peak RSS."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": round(wall, 1), "peak_gb": round(peak_kb / 2**20, 3)}


def measure(what: str, data: Path, work: Path, config: str | None) -> dict[str, float | int]:
    """One measurement in a fresh helper process (so RUSAGE_CHILDREN is this run's alone)."""
    home = work / f"home-{what}"
    home.mkdir(exist_ok=True)
    real_models = Path(os.environ.get("TUNELOOP_HOME", Path.home() / ".cache/tuneloop"))
    if (real_models / "models").is_dir() and not (home / "models").exists():
        (home / "models").symlink_to(real_models / "models")
    cli = [sys.executable, "-m", "tuneloop.cli", "data", what, str(data)]
    if what == "curate":
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)  # a fresh folder: no earlier run to replace
        cli += ["--out", str(out)]
        if config:
            cli += ["--config", config]
    else:
        cli += ["--json"]
    helper = [sys.executable, __file__, "--measure-one", json.dumps(cli)]
    done = subprocess.run(helper, env=_environment(home), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-4000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000])
    parser.add_argument("--only", choices=("inspect", "curate"))
    parser.add_argument("--config", help="curate.yaml (default: the default pipeline)")
    parser.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    parser.add_argument("--measure-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_one:
        print(json.dumps(measure_one(json.loads(args.measure_one), dict(os.environ))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-curate-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        print("| rows | MB | step | seconds | rows/s | peak GB |")
        print("| --- | --- | --- | --- | --- | --- |")
        for n in args.rows:
            data = work / f"rows-{n}.jsonl"
            if not data.exists():
                write_data(data, n)
            mb = data.stat().st_size / 1e6
            for what in [args.only] if args.only else ["inspect", "curate"]:
                got = measure(what, data, work, args.config)
                rate = n / max(float(got["seconds"]), 1e-9)
                print(
                    f"| {n:,} | {mb:.0f} | {what} | {got['seconds']} | {rate:,.0f} | "
                    f"{got['peak_gb']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
