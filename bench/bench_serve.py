"""`tuneloop serve` vs a plain one-request-at-a-time `generate` server: N concurrent clients.

    python bench/bench_serve.py [--clients 16] [--requests 48] [--max-tokens 32]
        [--rounds 1] [--model DIR] [--overload] [--serve-arg=--no-log ...]

Both servers run the bundled SmolLM2-135M-Instruct (from tuneloop's model cache) in their
own process on loopback, with greedy decoding and the same token budget:

- tuneloop: `tuneloop serve MODEL` with its defaults (continuous batching, 16 rows).
- plain: what a team writes first: a FastAPI route that calls `model.generate` on one
  request at a time under a lock (this script, `--plain-server`).

Each round sends the same `--requests` chat requests (customer-support questions, varied
lengths) from `--clients` threads to one server, then to the other, alternating which goes
first across rounds. Reported per server: throughput (requests/s and generated tokens/s),
p50/p95/p99 latency, errors by status; then the throughput ratio.

`--overload`: afterwards, sends 2x tuneloop's capacity (batch + queue) at once with the
same budget and checks that every answer is a 200 or a 429 (never a 5xx), printing how
many of each.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

QUESTIONS = [
    "Where is my order?",
    "Do you ship to Germany?",
    "How do I return a pair of shoes that do not fit?",
    "My package says delivered but I never received it. What can I do about this?",
    "Can I change the delivery address after placing an order?",
    "What payment methods do you accept?",
    "I was charged twice for the same order, please help me get a refund for one of them.",
    "How long does standard shipping take to Canada?",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_server(model_dir: str, port: int) -> None:
    """The baseline: one `model.generate` at a time behind a lock."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        ids = tok.apply_chat_template(
            body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with lock, torch.inference_mode():
            out = model.generate(
                **ids, max_new_tokens=body.get("max_tokens", 32), do_sample=False,
                pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        new = out[0, ids["input_ids"].shape[1] :]
        text = tok.decode(new, skip_special_tokens=True)
        return {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"completion_tokens": int(new.shape[0])},
        }

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _start(cmd: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {' '.join(cmd)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if json.loads(r.read()).get("status") == "ok":
                    return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start")


def _post(port: int, body: dict) -> tuple[int, int, float]:
    """(status, generated tokens, seconds)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
        method="POST",
    )
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            reply = json.loads(r.read())
            return r.status, int(reply["usage"]["completion_tokens"]), time.perf_counter() - t0
    except urllib.error.HTTPError as err:
        err.read()
        return err.code, 0, time.perf_counter() - t0
    except OSError:
        return -1, 0, time.perf_counter() - t0


def drive(port: int, name: str, clients: int, requests: int, max_tokens: int) -> dict:
    bodies = [
        {
            "model": name,
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        for i in range(requests)
    ]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda b: _post(port, b), bodies))
    wall = time.perf_counter() - t0
    ok = sorted(s for st, _, s in results if st == 200)
    statuses: dict[str, int] = {}
    for st, _, _ in results:
        statuses[str(st)] = statuses.get(str(st), 0) + 1

    def pct(p: float) -> float:
        return ok[min(len(ok) - 1, int(p * len(ok)))] if ok else float("nan")

    return {
        "requests_per_s": len(ok) / wall,
        "tokens_per_s": sum(t for st, t, _ in results if st == 200) / wall,
        "p50": pct(0.5),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "statuses": statuses,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model", default=None)
    ap.add_argument("--overload", action="store_true")
    ap.add_argument(
        "--serve-arg", action="append", default=[], help="Extra `tuneloop serve` flag (repeatable)."
    )
    ap.add_argument("--plain-server", nargs=2, metavar=("MODEL", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_server:
        plain_server(args.plain_server[0], int(args.plain_server[1]))
        return
    if args.model is None:
        from tuneloop.models import pull

        args.model = str(pull("smollm2-135m-instruct"))
    model = str(Path(args.model))
    tl_port, plain_port = _free_port(), _free_port()
    tl = _start(
        [sys.executable, "-m", "tuneloop.cli", "serve", model, "--name", "m",
         "--port", str(tl_port), *args.serve_arg],
        tl_port,
    )  # fmt: skip
    plain = _start([sys.executable, __file__, "--plain-server", model, str(plain_port)], plain_port)
    try:
        for port in (tl_port, plain_port):  # warm-up
            drive(port, "m", 2, 2, 4)
        totals: dict[str, list[dict]] = {"tuneloop": [], "plain": []}
        for r in range(args.rounds):
            order = [("tuneloop", tl_port), ("plain", plain_port)]
            for label, port in order if r % 2 == 0 else order[::-1]:
                res = drive(port, "m", args.clients, args.requests, args.max_tokens)
                totals[label].append(res)
                print(
                    f"round {r + 1} {label:9s} {res['requests_per_s']:.2f} req/s  "
                    f"{res['tokens_per_s']:.1f} tok/s  p50 {res['p50']:.2f}s  "
                    f"p95 {res['p95']:.2f}s  p99 {res['p99']:.2f}s  {res['statuses']}",
                    flush=True,
                )
        tl_rps = sum(x["requests_per_s"] for x in totals["tuneloop"]) / args.rounds
        plain_rps = sum(x["requests_per_s"] for x in totals["plain"]) / args.rounds
        print(
            f"throughput ratio tuneloop/plain at {args.clients} clients: "
            f"{tl_rps / plain_rps:.2f}x ({tl_rps:.2f} vs {plain_rps:.2f} req/s)"
        )
        if args.overload:
            burst = 2 * (16 + 64)
            res = drive(tl_port, "m", burst, burst, args.max_tokens)
            fivexx = sum(n for s, n in res["statuses"].items() if s.startswith("5") or s == "-1")
            print(f"overload: {burst} requests at once -> {res['statuses']}; 5xx/failed: {fivexx}")
    finally:
        for proc in (tl, plain):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
