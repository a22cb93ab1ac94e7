"""Exact, near and semantic duplicate detection, and the `dedup` curation step.

Duplicates make a model memorise the repeated rows and leak between train and test splits.
Three detectors, from cheap to expensive:

- exact: same text after `normalize_for_hash` (case, punctuation, spacing ignored);
- near (`near_duplicate_pairs`), one of two methods:
  - "jaccard" (the default, for long texts): MinHash LSH over character shingles
    (texts sharing a band of their datasketch-compatible signatures are candidate pairs,
    found by sorting 64-bit band keys; the exact Jaccard similarity of the shingle sets
    confirms them);
  - "edit" (for short texts: queries, titles): at most a few word edits apart, candidates
    by prefix filtering on each text's rarest words, verified by a banded word-level
    Levenshtein computation vectorised over all candidate pairs;
- semantic: cosine similarity of embeddings computed elsewhere.

Pairs are grouped two ways. The dedup step drops rows by `star_clusters`: every dropped
row is a near duplicate of the row kept for it, so a chain a~b~c does not drop c for a.
`cluster_ids`, which the split step uses to keep duplicates on one side, joins pairs by
union-find: a~b and b~c put a, b and c in one cluster, the safe side against leakage.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable
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
METHODS = ("jaccard", "edit")
MAX_EDITS_LIMIT = 10  # beyond this many word edits two texts are not "near"
# One word edit allowed per this many words of the longer text (see `allowed_edits`).
WORDS_PER_EDIT = 3

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
_BATCH_CELLS = 1 << 21  # word cells per banded edit-distance batch (~16 MiB of int64 ids)
_SIGNATURE_TEXTS = 20_000  # texts shingled and signed per block (~30 MB of temporaries)
_VERIFY_PAIRS = 20_000  # candidate pairs verified per block (at most 40k texts' shingles)
_SKETCH_PAIRS = 100_000  # candidates compared by signature bytes per block (2 x 12.8 MB)
# The chance that the signature-byte filter drops a true pair right at the threshold; the
# LSH bands already miss 1.5% of those (LSH_RECALL), so this adds nothing measurable.
SKETCH_MISS = 1e-6


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
    # 16-byte digests in one buffer (16 bytes a text; a dict of bytes keys took ~200)
    digests = bytearray(16 * len(texts))
    for i, text in enumerate(texts):
        digest = hashlib.blake2b(normalize_for_hash(text).encode(), digest_size=16).digest()
        digests[16 * i : 16 * i + 16] = digest
    keys = np.frombuffer(bytes(digests), dtype=np.uint64).reshape(len(texts), 2)
    del digests
    order = np.lexsort((keys[:, 1], keys[:, 0]))  # stable: equal digests stay in index order
    ordered = keys[order]
    starts = np.flatnonzero(
        np.r_[True, (ordered[1:] != ordered[:-1]).any(axis=1), True] if len(texts) else [True]
    )
    groups = [
        order[lo:hi].tolist()
        for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True)
        if hi - lo >= 2
    ]
    return sorted(groups)  # by first index


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


def star_clusters(
    n: int, pairs: list[tuple[int, int, float]], order: list[int] | None = None
) -> list[list[int]]:
    """Groups [representative, *members] from near-duplicate pairs, without chaining.

    Rows are visited in `order` (default: index order), the order in which they should be
    kept. A row joins the closest representative chosen so far that it has a pair with
    (ties: the one chosen first), else becomes a representative itself. So every member is
    a near duplicate of its own representative: with a~b and b~c but a and c far apart, b
    joins a and c stays. Union-find would drop both b and c for a, and on short texts it
    chains whole topics together. Groups have at least one member, ordered by their
    representative's index; members are in index order.
    """
    # only rows with a pair are ever looked up: per-row lists and dicts for all n rows
    # were ~200 bytes a row
    neighbours: dict[int, list[tuple[float, int]]] = {}
    for i, j, distance in pairs:
        neighbours.setdefault(i, []).append((distance, j))
        neighbours.setdefault(j, []).append((distance, i))
    chosen: dict[int, int] = {}  # representative (with a pair) -> when it was chosen
    chosen_so_far = 0
    rep_of: dict[int, int] = {}
    for x in range(n) if order is None else order:
        best: tuple[float, int, int] | None = None
        for distance, y in neighbours.get(x, ()):
            if y in chosen and (best is None or (distance, chosen[y]) < best[:2]):
                best = (distance, chosen[y], y)
        if best is None:
            if x in neighbours:
                chosen[x] = chosen_so_far
            chosen_so_far += 1
        else:
            rep_of[x] = best[2]
    groups: dict[int, list[int]] = {}
    for x in sorted(rep_of):
        groups.setdefault(rep_of[x], []).append(x)
    return [[rep, *groups[rep]] for rep in sorted(groups)]


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
        # permutations x shingles, so that each minimum runs along contiguous memory: 7x
        # faster than shingles x permutations (reduceat over axis 0)
        permuted = a[:, None] * block[None, :] + b[:, None]  # wraps mod 2^32 by design
        out[lo:hi] = np.minimum.reduceat(permuted, offsets[lo:hi] - offsets[lo], axis=1).T
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


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per LSH band (texts x bands): equal bands give equal keys.

    Band b covers signature columns [b * rows, (b + 1) * rows), as datasketch's
    `MinHashLSH(params=(bands, rows))` does; two texts are candidates when one of their band
    keys is equal. Eight bytes per band and text, where datasketch's index holds a bytes
    object, a list and two dict entries per band and text (~4 KB a text at 18 bands).
    """
    keys = np.zeros((len(signatures), bands), dtype=np.uint64)
    for band in range(bands):
        h = np.zeros(len(signatures), dtype=np.uint64)
        for col in range(band * rows, (band + 1) * rows):
            h = _fmix64(h * _POLY + signatures[:, col].astype(np.uint64))
        keys[:, band] = h
    return keys


def _lsh_candidates(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j, sorted) that share at least one band key.

    Per band, texts sorted by key form runs of equal keys; each run gives all its pairs,
    as a datasketch bucket does. A 64-bit key stands for a band of `rows` 32-bit values;
    two different bands share a key with probability 2^-64, and a spurious candidate is
    only verified and rejected, so the pairs found are datasketch's (unless a collision
    makes a true near duplicate a candidate that datasketch would have missed).
    """
    n = len(keys)
    found = np.zeros(0, dtype=np.int64)
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        ordered = keys[order, band]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1], True])
        sizes = np.diff(starts)
        parts: list[np.ndarray] = []
        pairs_at = starts[:-1][sizes == 2]  # the common case, vectorised
        if len(pairs_at):
            a, b = order[pairs_at], order[pairs_at + 1]
            parts.append(np.minimum(a, b) * n + np.maximum(a, b))
        for lo, size in zip(
            starts[:-1][sizes > 2].tolist(), sizes[sizes > 2].tolist(), strict=True
        ):
            members = np.sort(order[lo : lo + size])
            a, b = np.triu_indices(size, 1)
            parts.append(members[a] * n + members[b])
        if parts:
            found = _sorted_unique(np.concatenate([found, *parts]))
    return found // n, found % n


def _common_counts(
    hashes: np.ndarray, offsets: np.ndarray, left: np.ndarray, right: np.ndarray
) -> np.ndarray:
    """|set(left) & set(right)| per pair, for the sorted distinct hash sets of `shingle_sets`.

    Vectorised over batches of pairs: key = (pair, hash) is sorted already for each side,
    because each text's hashes are, so one binary search per right-hand hash finds it.
    """
    out = np.zeros(len(left), dtype=np.int64)
    lengths = np.diff(offsets)
    cells = np.cumsum(lengths[left] + lengths[right])
    lo = 0
    while lo < len(left):
        done = int(cells[lo - 1]) if lo else 0
        hi = min(len(left), max(lo + 1, int(np.searchsorted(cells, done + _BATCH_CELLS))))
        keyed = []
        for side in (left[lo:hi], right[lo:hi]):
            counts = lengths[side]
            owner = np.repeat(np.arange(hi - lo, dtype=np.uint64), counts)
            first = np.zeros(len(side) + 1, dtype=np.int64)
            np.cumsum(counts, out=first[1:])
            pos = offsets[side][owner.astype(np.int64)]
            pos += np.arange(int(first[-1])) - first[owner.astype(np.int64)]
            keyed.append((owner << np.uint64(32)) | hashes[pos].astype(np.uint64))
        keys_l, keys_r = keyed
        at = np.minimum(np.searchsorted(keys_l, keys_r), max(len(keys_l) - 1, 0))
        both = keys_l[at] == keys_r if len(keys_l) else np.zeros(len(keys_r), dtype=bool)
        owners = (keys_r[both] >> np.uint64(32)).astype(np.int64)
        out[lo:hi] = np.bincount(owners, minlength=hi - lo)
        lo = hi
    return out


def near_duplicate_pairs(
    texts: list[str],
    method: str = "jaccard",
    threshold: float = 0.8,
    max_edits: int = 2,
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 1,
    words_per_edit: int = WORDS_PER_EDIT,
) -> list[tuple[int, int, float]]:
    """Every verified near-duplicate pair as (i, j, distance), i < j, sorted.

    method "jaccard": Jaccard similarity >= `threshold` of the character `ngram`-gram sets
    of the normalised texts (MinHash LSH candidates, each verified exactly); the distance
    is 1 - Jaccard. For long texts, where a few changed words hardly move the shingle sets.
    Character shingles, not word shingles: on short texts one changed word removes most
    word n-grams but only a few character n-grams (bench/bench_dedup.py).

    method "edit": at most `allowed_edits(longer, max_edits, words_per_edit)` word edits
    apart, Levenshtein distance over the normalised words (a word inserted, deleted or
    replaced is one edit, so is a typo); the distance is the number of edits. For short
    texts (a 10-word query), where one or two edits move character-shingle Jaccard as much
    as a real paraphrase does (bench/bench_dedup.py, docs/experiments.md).

    Pairs rather than clusters, because the callers group them differently: the dedup step
    needs every dropped row close to the row kept for it (`star_clusters`), while keeping
    duplicates on one side of a split needs the transitive closure (`cluster_ids`).
    """
    if method == "jaccard":
        return _jaccard_pairs(texts, threshold, num_perm, ngram, seed)
    if method == "edit":
        return _edit_pairs(texts, max_edits, words_per_edit)
    raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")


def near_duplicate_clusters(
    texts: list[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 1,
    method: str = "jaccard",
    max_edits: int = 2,
) -> list[list[int]]:
    """Clusters (size >= 2, sorted, ordered by first index): `near_duplicate_pairs` joined.

    Joined by union-find, so a~b and b~c put a, b and c in one cluster even when a and c
    are far apart: the safe side for keeping near duplicates out of a test split, too
    coarse for choosing rows to drop (the dedup step uses `star_clusters` for that).
    """
    found = _UnionFind(len(texts))
    for i, j, _ in near_duplicate_pairs(
        texts, method, threshold, max_edits, num_perm=num_perm, ngram=ngram, seed=seed
    ):
        found.union(i, j)
    return found.clusters()


def min_agreement(threshold: float, num_perm: int, miss: float = SKETCH_MISS) -> int:
    """The fewest equal signature bytes a candidate needs to be verified (see
    `_likely_candidates`): a pair at Jaccard `threshold` has fewer with probability <= miss.

    Each of the `num_perm` MinHash values of two texts is equal with probability J (the
    Jaccard similarity), and its low bytes then too; unequal values share a low byte with
    probability 1/256 more, which only raises the count. So the count of equal bytes is at
    least Binomial(num_perm, J), and this is the largest k whose lower tail P(X < k) at
    J = threshold stays within `miss` (pairs above the threshold are safer still).
    """
    import math

    below = 0.0  # P(X < k)
    for k in range(num_perm + 1):
        p_k = math.comb(num_perm, k) * threshold**k * (1 - threshold) ** (num_perm - k)
        if below + p_k > miss:
            return k
        below += p_k
    return num_perm


def _likely_candidates(
    sketch: np.ndarray, left: np.ndarray, right: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """The LSH candidates whose signatures agree enough to be near duplicates at all.

    Candidates share one band, and the false ones grow with the square of the rows: on
    templated text (the same opening line on every ticket) pairs at Jaccard 0.3-0.5 share a
    band often enough that 200k rows gave 156k candidates for 18k true pairs, and 2M rows
    about 15M. Verifying one costs two shingle sets, so this step was 25x slower at 10x
    the rows. One byte of each of the 128 signature values (128 B a text, kept beside the
    band keys) rejects a pair at 0.4 for certain, and one at the threshold with probability
    below SKETCH_MISS (`min_agreement`), in blocks of vectorised byte comparisons.
    """
    need = min_agreement(threshold, sketch.shape[1])
    keep = np.zeros(len(left), dtype=bool)
    for lo in range(0, len(left), _SKETCH_PAIRS):
        hi = lo + _SKETCH_PAIRS
        agree = np.count_nonzero(sketch[left[lo:hi]] == sketch[right[lo:hi]], axis=1)
        keep[lo:hi] = agree >= need
    return left[keep], right[keep]


def _jaccard_pairs(
    texts: list[str], threshold: float, num_perm: int, ngram: int, seed: int
) -> list[tuple[int, int, float]]:
    """Pairs with Jaccard >= threshold among the MinHash LSH candidates.

    The LSH bands are set so that a pair right at the threshold becomes a candidate 98.5%
    of the time (`lsh_bands`); candidates whose signatures agree too little are set aside
    (`_likely_candidates`), and the rest are confirmed with the exact Jaccard of the
    shingle sets, so the loose index costs time but adds no false pairs.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1]")
    if len(texts) < 2:
        return []
    bands, rows = lsh_bands(threshold, num_perm)
    # signatures a block of texts at a time: only the band keys and one byte of each
    # signature value are kept for every text
    keys = np.zeros((len(texts), bands), dtype=np.uint64)
    sketch = np.zeros((len(texts), num_perm), dtype=np.uint8)
    for lo in range(0, len(texts), _SIGNATURE_TEXTS):
        hashes, offsets = shingle_sets(texts[lo : lo + _SIGNATURE_TEXTS], ngram)
        signatures = minhash_signatures(hashes, offsets, num_perm, seed)
        keys[lo : lo + len(signatures)] = band_keys(signatures, bands, rows)
        sketch[lo : lo + len(signatures)] = signatures  # the low byte (uint8 cast wraps)
    del hashes, offsets, signatures
    left, right = _lsh_candidates(keys)
    del keys
    left, right = _likely_candidates(sketch, left, right, threshold)
    del sketch
    if not len(left):
        return []
    # the exact shingle sets again, for the texts of a block of candidate pairs at a time
    # (on near-duplicate-rich data 40% of the rows are in some pair: all their sets at once
    # would be most of the memory again)
    pairs: list[tuple[int, int, float]] = []
    for lo in range(0, len(left), _VERIFY_PAIRS):
        block_l, block_r = left[lo : lo + _VERIFY_PAIRS], right[lo : lo + _VERIFY_PAIRS]
        involved = _sorted_unique(np.concatenate([block_l, block_r]))
        hashes, offsets = shingle_sets([texts[i] for i in involved.tolist()], ngram)
        local_l = np.searchsorted(involved, block_l)
        local_r = np.searchsorted(involved, block_r)
        common = _common_counts(hashes, offsets, local_l, local_r)
        sizes = np.diff(offsets)
        union = sizes[local_l] + sizes[local_r] - common
        close = common >= threshold * union
        distance = 1.0 - common[close] / union[close]
        pairs.extend(
            zip(block_l[close].tolist(), block_r[close].tolist(), distance.tolist(), strict=True)
        )
    return pairs  # (i, j) sorted already


def allowed_edits(
    longer: np.ndarray, max_edits: int, words_per_edit: int = WORDS_PER_EDIT
) -> np.ndarray:
    """Word edits allowed between two texts, by the word count of the longer one.

    One edit per `words_per_edit` words, at most `max_edits`: two edits turn a 3-word query
    into another question ("card not working" / "app not loading"), while a 15-word one
    survives them as the same request. At least 2 words per edit keeps the edits fewer than
    the words, so two texts within the limit share a word: what makes the candidate search
    (`_prefix_candidates`) complete.
    """
    if words_per_edit < 2:
        raise ValueError("words_per_edit must be at least 2")
    return np.minimum(max_edits, np.asarray(longer) // words_per_edit)


def _word_ids(texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(ids, offsets, vocabulary): text i's normalised words are ids[offsets[i]:offsets[i+1]]."""
    vocab: dict[str, int] = {}
    flat: list[int] = []
    offsets = [0]
    for text in texts:
        flat.extend([vocab.setdefault(w, len(vocab)) for w in normalize_for_hash(text).split()])
        offsets.append(len(flat))
    return np.array(flat, dtype=np.int64), np.array(offsets, dtype=np.int64), list(vocab)


def _edit_pairs(
    texts: list[str], max_edits: int, words_per_edit: int
) -> list[tuple[int, int, float]]:
    if max_edits < 0:
        raise ValueError("max_edits must be at least 0")
    ids, offsets, vocab = _word_ids(texts)
    left, right = _prefix_candidates(ids, offsets, vocab, max_edits, words_per_edit)
    lengths = np.diff(offsets)
    limit = allowed_edits(np.maximum(lengths[left], lengths[right]), max_edits, words_per_edit)
    distance = _banded_distances(ids, offsets, left, right, limit, max_edits)
    close = distance <= limit
    found = zip(left[close].tolist(), right[close].tolist(), distance[close].tolist(), strict=True)
    return sorted((i, j, float(d)) for i, j, d in found)


def _prefix_candidates(
    ids: np.ndarray,
    offsets: np.ndarray,
    vocab: list[str],
    max_edits: int,
    words_per_edit: int = WORDS_PER_EDIT,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) that may be within the allowed word edits: prefix filtering.

    An edit removes at most one distinct word from a text's word set, so two texts d edits
    apart share every word but at most d of either set. Order all words rarest first (by
    the number of texts containing them, ties by the word) and index each text under its
    `allowed + 1` first words: the rarest word the two texts share is among those of both
    (at most d words of either text come before it), so every pair within the limit shares
    a bucket. Rare words make small buckets, which is why rarest first.
    """
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths)
    vsize = max(len(vocab), 1)
    distinct = _sorted_unique(owner * vsize + ids)
    text, word = distinct // vsize, distinct % vsize
    frequency = np.bincount(word, minlength=vsize)
    by_word = np.empty(vsize, dtype=np.int64)
    by_word[sorted(range(len(vocab)), key=vocab.__getitem__)] = np.arange(len(vocab))
    rank = np.empty(vsize, dtype=np.int64)
    rank[np.lexsort((by_word, frequency))] = np.arange(vsize)
    order = np.lexsort((rank[word], text))
    text, word_rank = text[order], rank[word][order]
    first = np.searchsorted(text, np.arange(n))
    position = np.arange(len(text)) - first[text]
    # a partner is at most max_edits words longer, so the pair is allowed at most this many
    prefix = allowed_edits(lengths + max_edits, max_edits, words_per_edit) + 1
    keep = position < prefix[text]
    text, word_rank = text[keep], word_rank[keep]
    order = np.argsort(word_rank, kind="stable")
    text, word_rank = text[order], word_rank[order]
    starts = np.flatnonzero(np.r_[True, word_rank[1:] != word_rank[:-1], True])
    parts_l: list[np.ndarray] = []
    parts_r: list[np.ndarray] = []
    for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        if hi - lo >= 2:
            a, b = np.triu_indices(hi - lo, 1)
            parts_l.append(text[lo + a])
            parts_r.append(text[lo + b])
    # texts without words are within 0 edits of each other and share no word
    empty = np.flatnonzero(lengths == 0)
    if len(empty) >= 2:
        a, b = np.triu_indices(len(empty), 1)
        parts_l.append(empty[a])
        parts_r.append(empty[b])
    if not parts_l:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    left, right = np.concatenate(parts_l), np.concatenate(parts_r)  # left < right: sorted
    longer = np.maximum(lengths[left], lengths[right])
    allowed = allowed_edits(longer, max_edits, words_per_edit)
    near = np.abs(lengths[left] - lengths[right]) <= allowed
    keys = _sorted_unique(left[near] * n + right[near])  # a pair may share several buckets
    return keys // n, keys % n


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2.4's hash-based unique is several times slower here."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def word_edit_distances(a: list[list[int]], b: list[list[int]], max_edits: int) -> np.ndarray:
    """Levenshtein distance of the word-id sequences a[p] and b[p], capped at max_edits + 1.

    The banded computation `near_duplicate_pairs(method="edit")` uses, for callers (and
    tests) that already have sequences; a result of max_edits + 1 means "more than
    max_edits".
    """
    if len(a) != len(b):
        raise ValueError("a and b must have the same number of sequences")
    seqs = [*a, *b]
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    ids = np.array([w for s in seqs for w in s], dtype=np.int64)
    pairs = np.arange(len(a), dtype=np.int64)
    limit = np.full(len(a), max_edits, dtype=np.int64)
    return _banded_distances(ids, offsets, pairs, pairs + len(a), limit, max_edits).astype(np.int64)


def _banded_distances(
    ids: np.ndarray,
    offsets: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    limit: np.ndarray,
    max_edits: int,
) -> np.ndarray:
    """Word Levenshtein distance of each pair, or max_edits + 1 when it exceeds limit.

    Only cells within max_edits of the diagonal matter for distances up to max_edits, so a
    row of the DP is 2 * max_edits + 1 cells, computed for a whole batch of pairs per numpy
    call. Batches hold pairs whose shorter text has one length, so none loops past its end;
    a pair leaves its batch as soon as no path through the current row can stay within its
    limit, and the batch stops when none is left.
    """
    cap = max_edits + 1
    out = np.full(len(left), cap, dtype=np.int16)
    if not len(left):
        return out
    lengths = np.diff(offsets)
    ids = np.append(ids, -1)  # something to index (and mask) when every text is empty
    swap = lengths[left] > lengths[right]
    short, long = np.where(swap, right, left), np.where(swap, left, right)
    gap = lengths[long] - lengths[short]
    todo = np.flatnonzero(gap <= limit)
    if not len(todo):
        return out
    todo = todo[np.argsort(lengths[short[todo]], kind="stable")]
    size = lengths[short[todo]]
    bounds = np.flatnonzero(np.r_[True, size[1:] != size[:-1], True])
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        words = int(size[lo])
        per_batch = max(1, _BATCH_CELLS // (words + 2 * max_edits + 1))
        for start in range(lo, hi, per_batch):
            batch = todo[start : min(hi, start + per_batch)]
            out[batch] = _band_batch(
                ids, offsets, short[batch], long[batch], words, limit[batch], max_edits
            )
    return out


def _band_batch(
    ids: np.ndarray,
    offsets: np.ndarray,
    short: np.ndarray,
    long: np.ndarray,
    words: int,
    limit: np.ndarray,
    k: int,
) -> np.ndarray:
    """Banded DP for pairs whose shorter text has `words` words (see `_banded_distances`)."""
    cap = k + 1
    band = 2 * k + 1
    # a: the shorter texts' words; b: the longer texts', k unmatched (-1) columns in front
    # (cells left of column 0) and -1 past each text's end (cells there cannot reach the
    # final cell, which lies to their left)
    a = ids[offsets[short][:, None] + np.arange(words)] if words else np.zeros((len(short), 0))
    long_len = offsets[long + 1] - offsets[long]
    col = np.arange(words + k)
    inside = col[None, :] < long_len[:, None]
    b = np.full((len(short), words + 2 * k), -1, dtype=np.int64)
    b[:, k:] = np.where(inside, ids[np.minimum(offsets[long][:, None] + col, len(ids) - 1)], -1)
    final = (long_len - words + k).astype(np.int64)  # the last cell's offset in the band
    # row 0: column j costs j; offsets o < k are columns j = o - k < 0, which stay at cap
    # in every row because everything they are computed from is at cap
    row = np.full((len(short), band), cap, dtype=np.int16)
    row[:, k:] = np.arange(k + 1)
    # the edits still needed from band offset o to the final cell: at least |final - o|
    to_final = np.abs(final[:, None] - np.arange(band)[None, :]).astype(np.int16)
    alive = np.arange(len(short))
    for i in range(1, words + 1):
        cur = row + (b[:, i - 1 : i - 1 + band] != a[:, i - 1 : i])  # substitute or match
        np.minimum(cur[:, :-1], row[:, 1:] + 1, out=cur[:, :-1])  # delete a's word
        for o in range(1, band):  # insert b's word: left to right along the row
            np.minimum(cur[:, o], cur[:, o - 1] + 1, out=cur[:, o])
        np.minimum(cur, cap, out=cur)
        row = cur
        live = (row + to_final).min(axis=1) <= limit
        if not live.all():
            if not live.any():
                return np.full(len(short), cap, dtype=np.int16)
            if live.sum() * 2 < len(live):  # compact once half the batch is out
                a, b, row, to_final = a[live], b[live], row[live], to_final[live]
                final, limit, alive = final[live], limit[live], alive[live]
    out = np.full(len(short), cap, dtype=np.int16)
    result = row[np.arange(len(row)), final]
    out[alive] = np.where(result <= limit, result, cap)
    return out


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
    """`strip_shared_affixes` of the rows' texts, without holding the unstripped ones too.

    Two passes over the rows (the affixes first, then the stripped texts), since a list of
    full texts beside the stripped list was ~400 bytes a row more at the peak.
    """
    if field not in FIELDS:
        raise DataError(f"dedup: field must be one of {', '.join(FIELDS)}, not {field!r}")
    if len(rows) < 2:
        return [_field_text(r, field) for r in rows]
    front, back = shared_affix_lengths(_field_text(r, field) for r in rows)
    if not front and not back:
        return [_field_text(r, field) for r in rows]
    return [strip_affixes(_field_text(r, field), front, back) for r in rows]


def strip_affixes(text: str, front: int, back: int) -> str:
    """`text` without its first `front` and last `back` characters (never negative)."""
    return text[front : max(front, len(text) - back)]


def shared_affix_lengths(texts: Iterable[str], min_chars: int = 8) -> tuple[int, int]:
    """Lengths of the prefix and suffix all texts share, each 0 when under `min_chars`.

    One pass over an iterable, so callers can strip texts they generate twice rather than
    hold a list of them (see `strip_shared_affixes`).
    """
    prefix: str | None = None
    suffix = ""
    for text in texts:
        if prefix is None:
            prefix, suffix = text, text
            continue
        if prefix and not text.startswith(prefix):
            prefix = os.path.commonprefix([prefix, text])  # noqa: RUF071
        if suffix and not text.endswith(suffix):
            suffix = os.path.commonprefix([suffix[::-1], text[::-1]])[::-1]  # noqa: RUF071
        if not prefix and not suffix:
            break
    prefix = prefix or ""
    return (
        len(prefix) if len(prefix) >= min_chars else 0,
        len(suffix) if len(suffix) >= min_chars else 0,
    )


def strip_shared_affixes(texts: list[str], min_chars: int = 8) -> list[str]:
    """Remove the prefix and suffix that every text shares (a system prompt, a prompt template).

    Text that every row carries makes all rows look alike to shingle similarity: with the
    Banking77 classification template in the prompt, near-duplicate detection merged 42% of
    the rows. Only the part that differs between rows says whether two rows are duplicates.
    """
    if len(texts) < 2:
        return texts
    cut_front, cut_back = shared_affix_lengths(texts, min_chars)
    if not cut_front and not cut_back:
        return texts
    return [strip_affixes(t, cut_front, cut_back) for t in texts]


def _check_near_options(method: str, max_edits: int) -> None:
    if method not in METHODS:
        raise DataError(f"dedup: method must be one of {', '.join(METHODS)}, not {method!r}")
    if (
        isinstance(max_edits, bool)
        or not isinstance(max_edits, int)
        or not 0 <= max_edits <= MAX_EDITS_LIMIT
    ):
        raise DataError(
            f"dedup: max_edits must be a whole number from 0 to {MAX_EDITS_LIMIT}, "
            f"not {max_edits!r}"
        )


def _near_pairs_among(
    texts: list[str], among: list[int], method: str, threshold: float, max_edits: int
) -> list[tuple[int, int, float]]:
    """`near_duplicate_pairs` of the texts at indices `among`, as indices into `texts`."""
    found = near_duplicate_pairs([texts[i] for i in among], method, threshold, max_edits)
    return [(among[i], among[j], d) for i, j, d in found]


def cluster_ids(
    rows: list[Row],
    threshold: float = 0.8,
    exact: bool = True,
    near: bool = True,
    field: str = "all",
    method: str = "jaccard",
    max_edits: int = 2,
    texts: list[str] | None = None,
) -> list[int]:
    """A duplicate-cluster id per row: rows in one exact or near cluster share it.

    texts: the rows' `field` texts as the dedup step compares them, when the caller has
    them already (computed from `rows` when None).

    Ids are 0, 1, 2, ... in order of each cluster's first row; a row with no duplicate has
    an id of its own. A split can keep each id on one side so duplicates cannot leak.
    Clusters are transitive (a~b, b~c: one id), unlike what the dedup step drops: for
    leakage, putting a paraphrase chain on one side is the safe mistake.
    """
    texts = _texts(rows, field) if texts is None else texts
    _check_near_options(method, max_edits)
    found = _UnionFind(len(rows))
    exact_groups = exact_duplicate_groups(texts) if exact else []
    for group in exact_groups:
        for member in group[1:]:
            found.union(group[0], member)
    if near:
        # other members of an exact group have the same normalised text: no new pairs
        repeated = {i for g in exact_groups for i in g[1:]}
        among = [i for i in range(len(texts)) if i not in repeated]
        for i, j, _ in _near_pairs_among(texts, among, method, threshold, max_edits):
            found.union(i, j)
    # a cluster's root is its first row, so numbering the roots in order numbers the
    # clusters by first row (np.unique rather than a dict of every row: ~100 bytes a row)
    roots = np.fromiter((found.find(i) for i in range(len(rows))), np.int64, len(rows))
    return np.unique(roots, return_inverse=True)[1].tolist()


NEAR_FREE = "dedup.near_free"  # the StepLog.shared key of what `dedup` leaves behind


def text_digests(texts: Iterable[str]) -> np.ndarray:
    """Sorted 64-bit BLAKE2b digests of texts (duplicates kept), to test set membership."""
    found = np.fromiter(
        (
            int.from_bytes(
                hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                "little",
            )
            for t in texts
        ),
        dtype=np.uint64,
    )
    found.sort()
    return found


def left_near_free(shared: dict[str, Any], texts: list[str], threshold: float) -> bool:
    """Whether an earlier `dedup` of this run already left `texts` without near duplicates
    at Jaccard >= `threshold` (nor exact ones), so clustering them again would find none.

    True when that dedup compared whole rows (field "all") by Jaccard at a threshold no
    higher than this one, and every text here is one it kept, unchanged, at most once (the
    steps between may drop rows, never edit or repeat them). Its kept rows have no verified
    pair among them (`star_clusters` absorbs every unassigned neighbour of a kept row), and
    at the same threshold the LSH candidates of a subset are the same pairs restricted, so
    the answer is exact; at a lower dedup threshold its candidates include every pair this
    one would verify, each with at least the same 98.5% chance. The digests make the test
    about 1 s a million rows, against the LSH pass it saves (34 minutes at 2M rows).
    """
    fact = shared.get(NEAR_FREE)
    if fact is None:
        return False
    field, dedup_threshold, kept = fact
    if field != "all" or dedup_threshold > threshold:
        return False
    here = text_digests(texts)
    if len(here) > len(kept) or (len(here) > 1 and bool((here[1:] == here[:-1]).any())):
        return False
    if not len(kept):
        return not len(here)
    at = np.minimum(np.searchsorted(kept, here), len(kept) - 1)
    return bool((kept[at] == here).all())


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
    method: str = "jaccard",
    max_edits: int = 2,
) -> list[Row]:
    """Drop exact and near-duplicate rows, keeping one row per cluster.

    method: how near duplicates are found: "jaccard" (character 5-gram sets with Jaccard
    >= threshold; for long texts) or "edit" (at most max_edits word edits, and one per
    WORDS_PER_EDIT = 3 words of the longer text, see `allowed_edits`; for short texts such
    as queries, where one or two changed words move shingle Jaccard too much).
    max_edits: the most word edits for method "edit" (0 to 10).
    threshold: the Jaccard similarity for method "jaccard" (unused by "edit").
    semantic: also drop paraphrases whose sentence embeddings (all-MiniLM-L6-v2, bundled)
    have cosine similarity >= semantic_threshold, among rows left after exact/near dedup.

    field: the text compared: "all" (every message), "prompt" or "answer".
    keep: "first" (the earliest row) or "longest" (the row with the longest text, so the
    most complete version of a near-duplicate survives; ties go to the earliest).

    Near duplicates are grouped by `star_clusters`, in keep order: every dropped row is a
    near duplicate of the row kept for it, never only of another dropped row.
    """
    if keep not in KEEP:
        raise DataError(f"dedup: keep must be one of {', '.join(KEEP)}, not {keep!r}")
    _check_near_options(method, max_edits)
    texts = _texts(rows, field)
    n = len(rows)
    # numpy, not lists and dicts of Python ints: ~100 bytes a row each at millions of rows
    order = np.arange(n)
    if keep == "longest":
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
        order = np.lexsort((order, -lengths))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    dropped: dict[int, str] = {}
    listed: list[dict[str, Any]] = []

    def record(kind: str, group: list[int], kept: int) -> None:
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

    for group in exact_duplicate_groups(texts) if exact else []:
        record("exact", group, group[int(np.argmin(rank[group]))])
    if near:
        among = [i for i in range(n) if i not in dropped]
        # pairs and order in the local numbering of `among`
        local = np.full(n, -1, dtype=np.int64)
        local[among] = np.arange(len(among))
        local_pairs = near_duplicate_pairs([texts[i] for i in among], method, threshold, max_edits)
        local_order = local[order]
        local_order = local_order[local_order >= 0].tolist()
        for rep, *members in star_clusters(len(among), local_pairs, local_order):
            record("near", sorted(among[k] for k in (rep, *members)), among[rep])
    if semantic:
        from tuneloop.data.embed import embed

        among = [i for i in range(len(texts)) if i not in dropped]
        found = semantic_duplicate_clusters(embed([texts[i] for i in among]), semantic_threshold)
        for cluster in found:
            group = [among[k] for k in cluster]
            record("semantic", group, group[int(np.argmin(rank[group]))])
    out = []
    for i, row in enumerate(rows):
        if i in dropped:
            log.drop(row, dropped[i])
        else:
            out.append(row)
    if exact and near and method == "jaccard":
        kept = [texts[i] for i in range(n) if i not in dropped]
        log.shared[NEAR_FREE] = (field, threshold, text_digests(kept))
    listed.sort(key=lambda c: -c["size"])  # stable: equal sizes stay exact-first, by row
    log.details["clusters"] = listed[:MAX_LISTED_CLUSTERS]
    log.details["num_clusters"] = len(listed)
    return out
