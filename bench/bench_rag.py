"""The retrieval index at 10k, 100k and 1M chunks: build time, memory, query latency, recall.

    python bench/bench_rag.py [--sizes 10000 100000 1000000] [--queries 200] [--repeats 2]

Work: index N unit vectors of 384 dimensions (what the bundled MiniLM gives each chunk)
and answer single queries for the 10 nearest, one request at a time, as a RAG server
does. Contenders, alternating in each round, each in a fresh child process so that its
peak memory is its own (the child's `ru_maxrss`, which includes the vectors themselves:
1M x 384 float32 is 1.5 GB before any index):

- `tuneloop`: `RetrievalIndex.from_vectors(kind="auto")`: exact FAISS search below
  `HNSW_FROM` chunks, an HNSW graph from there (the same code `tuneloop rag index` runs);
- `tuneloop-flat` and `tuneloop-hnsw`: each kind forced, to show where the switch belongs;
- `faiss-flat`: FAISS's exact `IndexFlatIP`, which tuneloop's exact search first used;
- `numpy`: the standard exact baseline: `queries @ vectors.T` and `argpartition`.

Vectors are synthetic (seeded): 2,000 cluster centres with noise, normalised, so nearest
neighbours are meaningful and HNSW has work to do; embedding a million real chunks with
MiniLM on this CPU would take hours (the embedding rate is measured separately on 2,000
generated 400-character chunks and printed with the time it implies for each size).
Recall@10 is against numpy's exact answer for the same queries; recall@1 is whether the
point each query was made from (a query is a chunk's vector plus noise) came first. In
clusters of 500 near-equidistant points the rest of an exact top 10 is close to a tie,
so recall@1 is the fairer test of an approximate index here. Index MB is the resident
memory the build added (the vectors themselves are made before it). The ratio line compares
tuneloop's default with numpy on p50 query latency and on build time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

DIM = 384
K = 10


def child(n: int, queries: int, which: str, seed: int) -> None:
    """One measurement, in its own process: prints a JSON line."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2000, DIM)).astype(np.float32)
    vectors = np.empty((n, DIM), dtype=np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        vectors[lo:hi] = centres[rng.integers(0, 2000, hi - lo)]
        vectors[lo:hi] += 0.35 * rng.normal(size=(hi - lo, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sources = rng.integers(0, n, queries)
    q = vectors[sources] + 0.1 * rng.normal(size=(queries, DIM))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    kind = "exact"
    from tuneloop.data.retrieval import Chunk, RetrievalIndex  # imported outside the timing

    rss_before = _rss_mb()
    t0 = time.perf_counter()
    if which == "numpy":

        def search(one: np.ndarray) -> list[int]:
            sims = one @ vectors.T
            top = np.argpartition(-sims, K, axis=1)[:, :K]
            order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
            return np.take_along_axis(top, order, axis=1)[0].tolist()

    elif which == "faiss-flat":
        import faiss

        flat = faiss.IndexFlatIP(DIM)
        flat.add(vectors)

        def search(one: np.ndarray) -> list[int]:
            return flat.search(one, K)[1][0].tolist()

    else:
        wanted = {"tuneloop": "auto", "tuneloop-flat": "flat", "tuneloop-hnsw": "hnsw"}[which]
        chunks = [Chunk(i, "synthetic", "", "") for i in range(n)]
        index = RetrievalIndex.from_vectors(chunks, vectors, kind=wanted)
        kind = index.kind

        def search(one: np.ndarray) -> list[int]:
            return [h.chunk.id for h in index.search_vectors(one, K)[0]]

    build = time.perf_counter() - t0
    index_mb = _rss_mb() - rss_before
    latencies, found = [], []
    for i in range(queries):
        t = time.perf_counter()
        found.append(search(q[i : i + 1]))
        latencies.append(time.perf_counter() - t)
    latencies.sort()
    print(
        json.dumps(
            {
                "build_s": build,
                "p50_ms": 1000 * latencies[len(latencies) // 2],
                "p95_ms": 1000 * latencies[int(len(latencies) * 0.95)],
                "found": found,
                "kind": kind,
                "index_mb": index_mb,
                "sources": sources.tolist(),
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def _rss_mb() -> float:
    """Resident memory now (Linux /proc), in MB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def measure(n: int, queries: int, which: str, seed: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(n), str(queries), which, str(seed)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{which} at {n}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def embedding_rate(count: int = 2000) -> float:
    """Chunks per second through the bundled MiniLM (400-character generated chunks)."""
    import random

    from tuneloop.data.embed import embed

    rnd = random.Random(0)
    words = ["order", "refund", "shipping", "warranty", "hub", "plug", "bulb", "account"]
    texts = [" ".join(rnd.choice(words) for _ in range(60))[:400] for _ in range(count)]
    embed(texts[:64])  # load the model outside the timing
    t0 = time.perf_counter()
    embed(texts)
    return count / (time.perf_counter() - t0)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        n, queries, which, seed = sys.argv[2:]
        child(int(n), int(queries), which, int(seed))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2, help="rounds below 1M (1M: one)")
    parser.add_argument("--skip-embedding", action="store_true")
    args = parser.parse_args()

    if not args.skip_embedding:
        rate = embedding_rate()
        print(f"embedding: {rate:.0f} chunks/s (bundled MiniLM, this CPU)")
        for n in args.sizes:
            print(f"  {n:>9,} chunks: {n / rate / 60:.1f} min to embed")
    contenders = ["tuneloop", "numpy", "tuneloop-flat", "tuneloop-hnsw", "faiss-flat"]
    print(
        "| chunks | contender | kind | build s | p50 ms | p95 ms | recall@10 | recall@1 "
        "| index MB | peak RSS MB |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for n in sorted(args.sizes):
        rounds = 1 if n >= 1_000_000 else args.repeats
        results: dict[str, list[dict]] = {c: [] for c in contenders}
        for r in range(rounds):
            order = contenders if r % 2 == 0 else contenders[::-1]  # alternate the order
            for which in order:
                results[which].append(measure(n, args.queries, which, seed=n))
        exact = results["numpy"][0]["found"]
        for which in contenders:
            runs = results[which]
            best = min(runs, key=lambda x: x["p50_ms"])
            recall = sum(
                len(set(a) & set(b)) / K for a, b in zip(best["found"], exact, strict=True)
            ) / len(exact)
            first = sum(
                f[0] == src for f, src in zip(best["found"], best["sources"], strict=True)
            ) / len(exact)
            build = min(x["build_s"] for x in runs)
            print(
                f"| {n:,} | {which} | {best['kind']} | {build:.2f} | {best['p50_ms']:.2f} | "
                f"{best['p95_ms']:.2f} | {recall:.3f} | {first:.3f} | "
                f"{max(x['index_mb'] for x in runs):.0f} | "
                f"{max(x['peak_mb'] for x in runs):.0f} |"
            )
        ours = min(x["p50_ms"] for x in results["tuneloop"])
        base = min(x["p50_ms"] for x in results["numpy"])
        print(
            f"| {n:,} | ratio | numpy p50 / tuneloop p50 = {base / ours:.1f}x | | | | | | | |",
            flush=True,
        )


if __name__ == "__main__":
    main()
