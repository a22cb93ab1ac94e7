"""Exact, near and semantic duplicate detection, and the `dedup` curation step.

Duplicates make a model memorise the repeated rows and leak between train and test splits.
Three detectors, from cheap to expensive:

- exact: same text after `normalize_for_hash` (case, punctuation, spacing ignored);
- near: MinHash LSH over character shingles (datasketch's `MinHashLSH` finds candidate
  pairs, the exact Jaccard similarity of the shingle sets confirms them);
- semantic: cosine similarity of embeddings computed elsewhere.

Pairs become clusters by union-find, so a~b and b~c put a, b and c in one cluster.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from typing import Any

import numpy as np

from tuneloop.data.records import Row, answer_of, prompt_of, row_key_text
from tuneloop.data.steps import StepLog, step
from tuneloop.errors import DataError

MAX_LISTED_CLUSTERS = 50
EXAMPLE_CHARS = 200
FIELDS = ("all", "prompt", "answer")
KEEP = ("first", "longest")
LSH_RECALL = 0.985  # chance that a pair right at the threshold becomes an LSH candidate

# Apostrophes are deleted rather than spaced so that "can't" and "cant" hash alike; every
# other punctuation mark becomes a space so that "top-up" and "top up" do.
_APOSTROPHES = "'\u2019\u02bc\u2018`"
_ASCII_TABLE = {
    c: (None if chr(c) in _APOSTROPHES else " ")
    for c in range(128)
    if unicodedata.category(chr(c)).startswith("P")
}
_SPACES = re.compile(r"\s+")

# Odd 64-bit multiplier for the polynomial shingle hash (a well-mixed constant; any odd
# value works because the result is avalanched by `_fmix64` afterwards).
_POLY = np.uint64(0x9E3779B97F4A7C15)
_BATCH_CHARS = 1 << 20  # characters shingled per numpy pass
_CHUNK_SHINGLES = 1 << 15  # shingles per signature block: 32k x 128 perms x 4 B = 16 MiB


def normalize_for_hash(text: str) -> str:
    """Text with case, compatibility forms, punctuation and spacing differences removed.

    Two texts a reader would call "the same" (`Hello, World!` / `hello world`) normalise to
    one string, so exact-duplicate detection is not fooled by formatting.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    # the translate table covers ASCII only; other text goes character by character
    ascii_only = text.isascii()
    text = text.translate(_ASCII_TABLE) if ascii_only else "".join(map(_strip_mark, text))
    return _SPACES.sub(" ", text).strip()


def _strip_mark(char: str) -> str:
    if char in _APOSTROPHES:
        return ""
    return " " if unicodedata.category(char).startswith("P") else char


def exact_duplicate_groups(texts: list[str]) -> list[list[int]]:
    """Groups (size >= 2) of indices whose normalised texts are identical, by first index."""
    groups: dict[bytes, list[int]] = {}
    for i, text in enumerate(texts):
        digest = hashlib.blake2b(normalize_for_hash(text).encode(), digest_size=16).digest()
        groups.setdefault(digest, []).append(i)
    return [g for g in groups.values() if len(g) >= 2]


class _UnionFind:
    """Disjoint sets over 0..n-1; clusters come out sorted, ordered by first member."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving keeps later finds short
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the smaller index becomes the root, so a cluster's root is its first member
            self.parent[max(ra, rb)] = min(ra, rb)

    def clusters(self) -> list[list[int]]:
        members: dict[int, list[int]] = {}
        for x in range(len(self.parent)):
            members.setdefault(self.find(x), []).append(x)
        return [m for m in members.values() if len(m) >= 2]


# --- near duplicates -----------------------------------------------------------------------


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: spreads the polynomial hash over all bits."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, as datasketch's affine32 scheme applies it."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def shingle_sets(texts: list[str], ngram: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Distinct 32-bit hashes of each text's character `ngram`-grams, all texts at once.

    Returns (hashes, offsets): text i owns hashes[offsets[i]:offsets[i + 1]], sorted. Texts
    are normalised first; one shorter than `ngram` is a single shingle (itself), so every
    text has at least one. Vectorised over the characters of many texts at a time, because
    a Python loop over shingles is what makes per-row MinHash slow.
    """
    if ngram < 1:
        raise ValueError("ngram must be at least 1")
    norm = [normalize_for_hash(t) for t in texts]
    parts: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    lo = 0
    while lo < len(norm):
        # a batch of about _BATCH_CHARS characters bounds the temporary arrays (~64 B each)
        hi, size = lo + 1, len(norm[lo])
        while hi < len(norm) and size + len(norm[hi]) <= _BATCH_CHARS:
            size += len(norm[hi])
            hi += 1
        hashes, owner = _shingle_batch(norm[lo:hi], ngram)
        parts.append(hashes)
        counts.append(np.bincount(owner, minlength=hi - lo))
        lo = hi
    offsets = np.zeros(len(norm) + 1, dtype=np.int64)
    if norm:
        np.cumsum(np.concatenate(counts), out=offsets[1:])
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)), offsets


def _shingle_batch(norm: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct shingle hashes, owning text) for normalised texts, sorted by owner."""
    lengths = np.array([len(t) for t in norm], dtype=np.int64)
    starts = np.zeros(len(norm) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    # code points + 1, so that 0 marks "past the end of this text" in a short text's window
    encoded = "".join(norm).encode("utf-32-le", "surrogatepass")
    chars = np.frombuffer(encoded, dtype=np.uint32).astype(np.uint64) + np.uint64(1)
    chars = np.concatenate([chars, np.zeros(ngram, dtype=np.uint64)])
    counts = np.maximum(lengths - ngram + 1, 1)
    owner = np.repeat(np.arange(len(norm)), counts)
    first = np.zeros(len(norm) + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])
    pos = starts[owner] + (np.arange(int(first[-1])) - first[owner])
    end = starts[owner + 1]
    h = np.zeros(len(pos), dtype=np.uint64)
    for j in range(ngram):
        inside = (pos + j) < end
        h = h * _POLY + np.where(inside, chars[pos + j], np.uint64(0))
    h32 = (_fmix64(h) >> np.uint64(32)).astype(np.uint32)
    # sort within each text and drop repeats: sets, not bags, for Jaccard
    order = np.lexsort((h32, owner))
    h32, owner = h32[order], owner[order]
    keep = np.ones(len(h32), dtype=bool)
    keep[1:] = (h32[1:] != h32[:-1]) | (owner[1:] != owner[:-1])
    return h32[keep], owner[keep]


def minhash_signatures(
    hashes: np.ndarray, offsets: np.ndarray, num_perm: int = 128, seed: int = 1
) -> np.ndarray:
    """One MinHash signature per text (rows x num_perm, uint32), datasketch-compatible.

    Uses the permutations of `datasketch.MinHash(num_perm, seed)` (affine32 scheme), so a
    row equals what `MinHash.update` would give for the same 32-bit shingle hashes, but
    computed for a block of texts per numpy call instead of one Python call per shingle.
    """
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    n = len(offsets) - 1
    out = np.empty((n, num_perm), dtype=np.uint32)
    mixed = _fmix32(hashes.astype(np.uint32))
    lo = 0
    while lo < n:
        # as many texts as fit in one block of _CHUNK_SHINGLES shingles
        limit = int(offsets[lo]) + _CHUNK_SHINGLES
        hi = min(n, int(np.searchsorted(offsets, limit, side="right")) - 1)
        if hi <= lo:  # one text longer than a block: its minimum, a block at a time
            out[lo] = np.iinfo(np.uint32).max
            for start in range(int(offsets[lo]), int(offsets[lo + 1]), _CHUNK_SHINGLES):
                block = mixed[start : min(start + _CHUNK_SHINGLES, int(offsets[lo + 1]))]
                np.minimum(out[lo], (block[:, None] * a + b).min(axis=0), out=out[lo])
            lo += 1
            continue
        block = mixed[offsets[lo] : offsets[hi]]
        permuted = block[:, None] * a[None, :] + b[None, :]  # wraps mod 2^32 by design
        out[lo:hi] = np.minimum.reduceat(permuted, offsets[lo:hi] - offsets[lo], axis=0)
        lo = hi
    return out


def lsh_bands(threshold: float, num_perm: int, recall: float = LSH_RECALL) -> tuple[int, int]:
    """(bands, rows per band) that make a pair at `threshold` a candidate with `recall`.

    A pair with Jaccard s shares a band with probability 1 - (1 - s^r)^b. datasketch's
    default (b, r) balances misses against spurious candidates, which misses more than half
    of the pairs right at the threshold; since every candidate is verified exactly, spurious
    ones only cost time, so take the most rows per band (fewest candidates) that still
    finds pairs at the threshold with probability `recall`.
    """
    for rows in range(num_perm // 2, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1  # a threshold this low (< 0.04 at 128) gets the loosest index


def _lsh_candidates(
    signatures: np.ndarray, threshold: float, num_perm: int, seed: int
) -> list[tuple[int, int]]:
    """Pairs (i < j) that share at least one LSH band, via datasketch's MinHashLSH."""
    from datasketch import LeanMinHash, MinHashLSH

    bands = lsh_bands(threshold, num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=bands)
    pairs: list[tuple[int, int]] = []
    for j, values in enumerate(signatures):
        sketch = LeanMinHash(seed=seed, hashvalues=values, scheme="affine32")
        # query before insert: each pair is reported once, by its later member
        pairs.extend((i, j) for i in lsh.query(sketch))
        lsh.insert(j, sketch, check_duplication=False)
    return pairs


def near_duplicate_clusters(
    texts: list[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 1,
) -> list[list[int]]:
    """Clusters (size >= 2, sorted, ordered by first index) of texts with Jaccard >= threshold.

    Similarity is the Jaccard index of the sets of character `ngram`-grams of the normalised
    texts. Character shingles, not word shingles: on short texts (a 10-word question) one
    changed word removes most word n-grams but only a few character n-grams (on banking77
    queries, 5-grams beat 3/4-grams and word 1/2/3-grams: bench/bench_dedup.py); for texts
    that short, lower the threshold (0.7 there) rather than the shingle size.

    The LSH bands are set so that a pair right at the threshold becomes a candidate 98.5%
    of the time (`lsh_bands`); every candidate is then confirmed with the exact Jaccard of
    the shingle sets, so the loose index costs time but adds no false clusters.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1]")
    if len(texts) < 2:
        return []
    hashes, offsets = shingle_sets(texts, ngram)
    signatures = minhash_signatures(hashes, offsets, num_perm, seed)
    candidates = _lsh_candidates(signatures, threshold, num_perm, seed)
    sets: dict[int, frozenset[int]] = {}

    def shingles(i: int) -> frozenset[int]:
        if i not in sets:
            sets[i] = frozenset(hashes[offsets[i] : offsets[i + 1]].tolist())
        return sets[i]

    found = _UnionFind(len(texts))
    for i, j in candidates:
        if found.find(i) == found.find(j):
            continue  # already joined through other pairs; no need to measure
        a, b = shingles(i), shingles(j)
        common = len(a & b)
        if common >= threshold * (len(a) + len(b) - common):
            found.union(i, j)
    return found.clusters()


# --- semantic duplicates -------------------------------------------------------------------


def semantic_duplicate_clusters(
    embeddings: np.ndarray, threshold: float = 0.95, block: int = 1024
) -> list[list[int]]:
    """Clusters of rows whose embeddings have cosine similarity >= threshold.

    Compares `block` rows against the rest at a time, so memory is block x n floats rather
    than n x n. All-zero rows are similar to nothing.
    """
    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError("embeddings must be a 2-D array (rows x dimensions)")
    n = len(vectors)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    found = _UnionFind(n)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        sims = unit[lo:hi] @ unit[lo:].T  # only columns >= lo: each pair once
        rows, cols = np.nonzero(sims >= threshold)
        upper = rows < cols  # column c is row lo + c: drop self-pairs and mirrored ones
        for r, c in zip(rows[upper].tolist(), cols[upper].tolist(), strict=True):
            found.union(lo + r, lo + c)
    return found.clusters()


# --- the curation step ---------------------------------------------------------------------


def _field_text(row: Row, field: str) -> str:
    if field == "all":
        return row_key_text(row)
    if field == "prompt":
        return "\n".join(m["content"] for m in prompt_of(row))
    return answer_of(row)


def _texts(rows: list[Row], field: str) -> list[str]:
    if field not in FIELDS:
        raise DataError(f"dedup: field must be one of {', '.join(FIELDS)}, not {field!r}")
    return strip_shared_affixes([_field_text(r, field) for r in rows])


def strip_shared_affixes(texts: list[str], min_chars: int = 8) -> list[str]:
    """Remove the prefix and suffix that every text shares (a system prompt, a prompt template).

    Text that every row carries makes all rows look alike to shingle similarity: with the
    Banking77 classification template in the prompt, near-duplicate detection merged 42% of
    the rows. Only the part that differs between rows says whether two rows are duplicates.
    """
    if len(texts) < 2:
        return texts
    prefix = os.path.commonprefix(texts)  # noqa: RUF071 (character-wise is the point)
    suffix = os.path.commonprefix([t[::-1] for t in texts])[::-1]  # noqa: RUF071
    cut_front = len(prefix) if len(prefix) >= min_chars else 0
    cut_back = len(suffix) if len(suffix) >= min_chars else 0
    if not cut_front and not cut_back:
        return texts
    return [t[cut_front : max(cut_front, len(t) - cut_back)] for t in texts]


def _duplicates(
    texts: list[str], exact: bool, near: bool, threshold: float
) -> tuple[list[list[int]], list[list[int]]]:
    """Exact groups, then near clusters among one representative (the first) per group.

    Near detection skips the other members of an exact group: they add no new pairs and
    would only make the clusters look bigger than the distinct texts in them.
    """
    exact_groups = exact_duplicate_groups(texts) if exact else []
    if not near:
        return exact_groups, []
    repeated = {i for g in exact_groups for i in g[1:]}
    reps = [i for i in range(len(texts)) if i not in repeated]
    clusters = near_duplicate_clusters([texts[i] for i in reps], threshold=threshold)
    return exact_groups, [[reps[k] for k in c] for c in clusters]


def cluster_ids(
    rows: list[Row],
    threshold: float = 0.8,
    exact: bool = True,
    near: bool = True,
    field: str = "all",
) -> list[int]:
    """A duplicate-cluster id per row: rows in one exact or near cluster share it.

    Ids are 0, 1, 2, ... in order of each cluster's first row; a row with no duplicate has
    an id of its own. A split can keep each id on one side so duplicates cannot leak.
    """
    texts = _texts(rows, field)
    exact_groups, near_clusters = _duplicates(texts, exact, near, threshold)
    found = _UnionFind(len(rows))
    for group in exact_groups + near_clusters:
        for member in group[1:]:
            found.union(group[0], member)
    ids: dict[int, int] = {}
    return [ids.setdefault(found.find(i), len(ids)) for i in range(len(rows))]


def _source(row: Row, index: int) -> str:
    return str(row.get("source", f"row {index}"))


@step("dedup")
def dedup(
    rows: list[Row],
    log: StepLog,
    exact: bool = True,
    near: bool = True,
    threshold: float = 0.8,
    keep: str = "first",
    field: str = "all",
    semantic: bool = False,
    semantic_threshold: float = 0.95,
) -> list[Row]:
    """Drop exact and near-duplicate rows, keeping one row per cluster.

    semantic: also drop paraphrases whose sentence embeddings (all-MiniLM-L6-v2, bundled)
    have cosine similarity >= semantic_threshold, among rows left after exact/near dedup.

    field: the text compared: "all" (every message), "prompt" or "answer".
    keep: "first" (the earliest row) or "longest" (the row with the longest text, so the
    most complete version of a near-duplicate survives; ties go to the earliest).
    threshold: Jaccard similarity of character 5-gram sets for near duplicates.
    """
    if keep not in KEEP:
        raise DataError(f"dedup: keep must be one of {', '.join(KEEP)}, not {keep!r}")
    texts = _texts(rows, field)
    exact_groups, near_clusters = _duplicates(texts, exact, near, threshold)
    dropped: dict[int, str] = {}
    listed: list[dict[str, Any]] = []
    semantic_clusters: list[list[int]] = []
    if semantic:
        from tuneloop.data.embed import embed

        covered = {i for g in exact_groups + near_clusters for i in g[1:]}
        reps = [i for i in range(len(texts)) if i not in covered]
        found = semantic_duplicate_clusters(embed([texts[i] for i in reps]), semantic_threshold)
        semantic_clusters = [[reps[k] for k in c] for c in found]
    for kind, groups in (
        ("exact", exact_groups),
        ("near", near_clusters),
        ("semantic", semantic_clusters),
    ):
        for group in groups:
            kept = group[0] if keep == "first" else max(group, key=lambda i: len(texts[i]))
            for i in group:
                if i != kept:
                    dropped[i] = f"{kind} duplicate"
            listed.append(
                {
                    "kind": kind,
                    "size": len(group),
                    "rows": [_source(rows[i], i) for i in group],
                    "kept": _source(rows[kept], kept),
                    "example": texts[kept][:EXAMPLE_CHARS],
                }
            )
    out = []
    for i, row in enumerate(rows):
        if i in dropped:
            log.drop(row, dropped[i])
        else:
            out.append(row)
    listed.sort(key=lambda c: -c["size"])  # stable: equal sizes stay exact-first, by row
    log.details["clusters"] = listed[:MAX_LISTED_CLUSTERS]
    log.details["num_clusters"] = len(listed)
    return out
