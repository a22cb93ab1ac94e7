from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.data.dedup import (
    allowed_edits,
    cluster_ids,
    exact_duplicate_groups,
    lsh_bands,
    minhash_signatures,
    near_duplicate_clusters,
    near_duplicate_pairs,
    normalize_for_hash,
    semantic_duplicate_clusters,
    shingle_sets,
    star_clusters,
    strip_shared_affixes,
    word_edit_distances,
)
from tuneloop.data.records import Row, row_key_text
from tuneloop.data.steps import run_step
from tuneloop.errors import DataError

# 30 words, 201 characters once normalised, 197 character 5-grams and no 5-gram twice.
SENTENCE = (
    "The board reviewed every proposal sent before our deadline and selected three projects "
    "that promised clear benefits for small farmers living in remote mountain villages across "
    "the northern region today"
)
ONE_WORD_CHANGED = SENTENCE.replace("clear", "solid")
UNRELATED = [
    "Quarterly revenue grew by twelve percent thanks to strong demand for cloud storage.",
    "Please remember to water the tomato plants twice a day while I am away on holiday.",
]


def text_row(text: str, source: str) -> Row:
    return {"kind": "text", "text": text, "source": source}


def chat_row(user: str, answer: str, source: str) -> Row:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"kind": "sft", "messages": messages, "source": source}


def shingles(text: str, ngram: int) -> set[int]:
    hashes, offsets = shingle_sets([text], ngram)
    return set(hashes[offsets[0] : offsets[1]].tolist())


# --- normalisation and exact duplicates -----------------------------------------------------


def test_normalize_for_hash() -> None:
    assert normalize_for_hash("  Hello,   WORLD!\n") == "hello world"
    assert normalize_for_hash("I can't top-up") == "i cant top up"  # ' deleted, - spaced
    assert normalize_for_hash("ｆｕｌｌ ﬁle") == "full file"  # NFKC
    assert normalize_for_hash("¿Qué tal?  «bien»") == "qué tal bien"
    assert normalize_for_hash("Straße") == "strasse"  # casefold, not only lower
    assert normalize_for_hash("price: $5 + tax") == "price $5 + tax"  # symbols are not punctuation
    assert normalize_for_hash("...") == ""


def test_exact_groups_ignore_case_punctuation_and_spacing() -> None:
    texts = ["Hello, world!", "goodbye", "hello   WORLD", "Goodbye.", "hello world?", "other"]
    assert exact_duplicate_groups(texts) == [[0, 2, 4], [1, 3]]
    assert exact_duplicate_groups(["a", "b"]) == []


# --- shingles and signatures ----------------------------------------------------------------


def test_shingle_sets_by_hand() -> None:
    # abcdef -> abc bcd cde def; abcdxf -> abc bcd cdx dxf: 2 shared of 6 distinct
    a, b = shingles("abcdef", 3), shingles("abcdxf", 3)
    assert (len(a), len(b), len(a & b), len(a | b)) == (4, 4, 2, 6)
    assert shingles("ABC-def", 3) == shingles("abc def", 3)  # compared after normalising
    # shorter than the shingle: the text itself is the one shingle; repeats count once
    hashes, offsets = shingle_sets(["ab", "", "aaaaaa"], 3)
    assert offsets.tolist() == [0, 1, 2, 3]
    assert hashes[0] != hashes[1]


def test_one_changed_word_jaccard_by_hand() -> None:
    # "clear" -> "solid": the 5 + 4 shingles touching the word change, so with 197 distinct
    # shingles on each side the Jaccard is (197 - 9) / (197 + 9) = 188 / 206 = 0.913
    a, b = shingles(SENTENCE, 5), shingles(ONE_WORD_CHANGED, 5)
    assert (len(a), len(b), len(a & b), len(a | b)) == (197, 197, 188, 206)


def test_signatures_equal_datasketch_update() -> None:
    from datasketch import MinHash

    texts = ["the quick brown fox", "hello world", "x"]
    hashes, offsets = shingle_sets(texts, 5)
    signatures = minhash_signatures(hashes, offsets, num_perm=64, seed=3)
    for i in range(len(texts)):
        m = MinHash(num_perm=64, seed=3, hashfunc=int)
        m.update_batch(hashes[offsets[i] : offsets[i + 1]].tolist())
        assert np.array_equal(signatures[i], m.hashvalues)


def test_batches_and_blocks_do_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    import tuneloop.data.dedup as dedup

    texts = ["hello world " * 300, "short", "", SENTENCE, "x" * 7000]
    hashes, offsets = shingle_sets(texts, 5)
    signatures = minhash_signatures(hashes, offsets)
    monkeypatch.setattr(dedup, "_BATCH_CHARS", 10)  # one text per batch
    monkeypatch.setattr(dedup, "_CHUNK_SHINGLES", 7)  # long texts split over blocks
    small_hashes, small_offsets = shingle_sets(texts, 5)
    assert np.array_equal(small_hashes, hashes) and np.array_equal(small_offsets, offsets)
    assert np.array_equal(minhash_signatures(hashes, offsets), signatures)
    # "hello world " repeated has 12 distinct 5-grams; "x" * 7000 has one
    assert np.diff(offsets).tolist() == [12, 1, 1, 197, 1]


def test_lsh_bands_find_pairs_at_the_threshold() -> None:
    # r = 8, b = 16: 1 - (1 - 0.8^8)^16 = 1 - 0.8322^16 = 0.947, short of 0.985;
    # r = 7, b = 18: 1 - (1 - 0.8^7)^18 = 1 - 0.7903^18 = 0.9855
    assert lsh_bands(0.8, 128) == (18, 7)
    assert lsh_bands(0.8, 128, recall=0.99) == (21, 6)  # 1 - 0.7379^21 = 0.9983
    assert lsh_bands(1.0, 128) == (2, 64)


# --- near duplicates ------------------------------------------------------------------------


def test_one_word_changed_clusters_unrelated_do_not() -> None:
    texts = [SENTENCE, *UNRELATED, ONE_WORD_CHANGED]
    assert near_duplicate_clusters(texts, threshold=0.8) == [[0, 3]]
    assert near_duplicate_clusters(texts, threshold=0.92) == []  # 0.913 is below 0.92


def test_union_find_is_transitive() -> None:
    # 3-grams: J(a, b) = 9/11 = 0.82, J(b, c) = 9/11, J(a, c) = 8/12 = 0.67
    a, b, c = "abcdefghijkl", "abcdefghijkz", "ybcdefghijkz"
    assert near_duplicate_clusters([a, c], threshold=0.8, ngram=3) == []
    assert near_duplicate_clusters([a, "unrelated text", c, b], threshold=0.8, ngram=3) == [
        [0, 2, 3]
    ]


def test_clusters_sorted_by_first_index() -> None:
    texts = [UNRELATED[0], SENTENCE, UNRELATED[0] + " Really.", ONE_WORD_CHANGED, "short"]
    assert near_duplicate_clusters(texts, threshold=0.8) == [[0, 2], [1, 3]]
    assert near_duplicate_clusters(["only one"]) == []
    with pytest.raises(ValueError):
        near_duplicate_clusters(texts, threshold=0.0)


# --- word edit distance -------------------------------------------------------------------


def reference_distance(x: list[int] | list[str], y: list[int] | list[str]) -> int:
    """Plain full-table Levenshtein distance over words."""
    previous = list(range(len(y) + 1))
    for i, wx in enumerate(x, 1):
        current = [i] + [0] * len(y)
        for j, wy in enumerate(y, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (wx != wy))
        previous = current
    return previous[-1]


_SEQ = st.lists(st.integers(0, 4), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_SEQ, _SEQ), min_size=1, max_size=20), st.integers(0, 4))
def test_banded_distance_equals_full_table(
    pairs: list[tuple[list[int], list[int]]], k: int
) -> None:
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    got = word_edit_distances(a, b, k).tolist()
    # exact up to k; anything further is reported as k + 1
    assert got == [min(reference_distance(x, y), k + 1) for x, y in pairs]


def test_banded_distance_by_hand() -> None:
    a = [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [], [1, 2, 3, 4, 5, 6]]
    b = [[1, 2, 3, 4], [1, 9, 3, 4, 5], [4, 3, 2, 1], [7], [6, 5, 4, 3, 2, 1]]
    # equal; a substitution and an insertion; all four differ (4 > 2); one insertion;
    # reversed: 6 edits (capped at 3)
    assert word_edit_distances(a, b, 2).tolist() == [0, 2, 3, 1, 3]
    assert word_edit_distances(a, b, 4).tolist() == [0, 2, 4, 1, 5]


def test_allowed_edits_grow_with_length() -> None:
    # one edit per 3 words of the longer text, at most max_edits: never as many as words
    words = np.array([0, 1, 2, 3, 5, 6, 30])
    assert allowed_edits(words, 2, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert allowed_edits(words, 1, 2).tolist() == [0, 0, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="words_per_edit"):
        allowed_edits(words, 2, 1)  # 1-word texts could then differ in every word


def test_edit_pairs_by_hand() -> None:
    texts = [
        "Where is my new card?",  # 5 words: 1 edit allowed
        "where is my new card please",  # one insertion; 6 words: 2 edits allowed
        "Where is my nwe card",  # a typo is one substituted word
        "Where is my old phone?",  # 2 substitutions from 0: too many for 5 words
        "card",
        "cards",  # 1-word texts: 0 edits allowed
    ]
    assert near_duplicate_pairs(texts, "edit") == [
        (0, 1, 1.0),
        (0, 2, 1.0),
        (1, 2, 2.0),
    ]
    assert near_duplicate_pairs(texts, "edit", max_edits=1) == [(0, 1, 1.0), (0, 2, 1.0)]
    assert near_duplicate_pairs(texts, "edit", max_edits=0) == []
    with pytest.raises(ValueError, match="method"):
        near_duplicate_pairs(texts, "cosine")


_VOCAB = ["card", "pin", "lost", "my", "the", "top", "up", "fee", "why", "how", "a", "b"]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from(_VOCAB), max_size=9), min_size=2, max_size=14),
    st.lists(st.tuples(st.integers(0, 13), st.integers(0, 8), st.sampled_from(_VOCAB))),
    st.integers(0, 3),
    st.integers(2, 4),
)
def test_edit_pairs_equal_brute_force(
    base: list[list[str]],
    edits: list[tuple[int, int, str]],
    max_edits: int,
    words_per_edit: int,
) -> None:
    # copies of some texts with a word replaced, so that close pairs are common
    texts = [" ".join(t) for t in base]
    for which, where, word in edits:
        words = list(base[which % len(base)])
        if words:
            words[where % len(words)] = word
        texts.append(" ".join(words))
    seqs = [t.split() for t in texts]
    want = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            longer = max(len(seqs[i]), len(seqs[j]))
            d = reference_distance(seqs[i], seqs[j])
            if d <= allowed_edits(np.array(longer), max_edits, words_per_edit):
                want.append((i, j, float(d)))
    # the prefix-filter candidates miss no pair within the limit, and verification is exact
    got = near_duplicate_pairs(texts, "edit", max_edits=max_edits, words_per_edit=words_per_edit)
    assert got == want


# --- star clusters --------------------------------------------------------------------------


def test_star_clusters_do_not_chain() -> None:
    # a~b and b~c, a and c too far apart: b is dropped for a, c is kept (union-find: one)
    a, b, c = "where is my new card", "where is my new phone", "where is my old phone"
    texts = [a, b, c, "something else entirely here"]
    pairs = near_duplicate_pairs(texts, "edit")
    assert pairs == [(0, 1, 1.0), (1, 2, 1.0)]
    assert star_clusters(4, pairs) == [[0, 1]]
    assert near_duplicate_clusters(texts, method="edit") == [[0, 1, 2]]
    # visited from the end, c is kept first and b joins it; a stays on its own
    assert star_clusters(4, pairs, order=[3, 2, 1, 0]) == [[2, 1]]


def test_star_clusters_join_the_closest_representative() -> None:
    # 2 is 0.5 from rep 0 and 0.2 from rep 1: it joins 1; 3 ties between 0 and 1: earliest
    pairs = [(0, 2, 0.5), (1, 2, 0.2), (0, 3, 0.3), (1, 3, 0.3)]
    assert star_clusters(4, pairs) == [[0, 3], [1, 2]]  # ordered by representative
    assert star_clusters(4, pairs, order=[1, 0, 2, 3]) == [[1, 2, 3]]


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.integers(0, 3))),
            st.permutations(range(n)),
        )
    )
)
def test_star_clusters_properties(case: tuple[int, list[tuple[int, int, int]], list[int]]) -> None:
    n, raw, order = case
    distance = {(min(i, j), max(i, j)): float(d) for i, j, d in raw if i != j}
    pairs = sorted((i, j, d) for (i, j), d in distance.items())
    groups = star_clusters(n, pairs, order)
    dropped = {m: g[0] for g in groups for m in g[1:]}
    kept = [x for x in range(n) if x not in dropped]
    rank = {x: k for k, x in enumerate(order)}
    for member, rep in dropped.items():
        # every dropped row is a near duplicate of its kept row, which comes first in order
        assert (min(member, rep), max(member, rep)) in distance and rank[rep] < rank[member]
        assert rep in kept
    # what is kept has no near duplicate left among it
    assert not any((i, j) in distance for i in kept for j in kept if i < j)
    assert all(g[1:] == sorted(g[1:]) for g in groups)


# --- semantic duplicates --------------------------------------------------------------------


def test_semantic_clusters_on_hand_made_vectors() -> None:
    vectors = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0], [0.0, 2.0], [0.0, 0.0]])
    # cos(v0, v1) = 0.99 / sqrt(0.99^2 + 0.141^2) = 0.990; v2, v3 point the same way
    # (cosine 1 whatever the length); the zero vector is similar to nothing
    assert semantic_duplicate_clusters(vectors, threshold=0.95) == [[0, 1], [2, 3]]
    assert semantic_duplicate_clusters(vectors, threshold=0.995) == [[2, 3]]
    assert semantic_duplicate_clusters(vectors, threshold=0.95, block=1) == [[0, 1], [2, 3]]


def test_semantic_clusters_are_transitive() -> None:
    # 0, 20 and 40 degrees: neighbours at cos 20 = 0.940, the ends at cos 40 = 0.766
    angles = np.radians([0.0, 20.0, 40.0, 90.0])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert semantic_duplicate_clusters(vectors, threshold=math.cos(math.radians(25))) == [[0, 1, 2]]


# --- the dedup step -------------------------------------------------------------------------


def test_step_drops_duplicates_and_lists_clusters() -> None:
    rows = [
        text_row(SENTENCE, "line 1"),
        text_row(UNRELATED[0], "line 2"),
        text_row(SENTENCE.upper().replace(" ", "  ") + "!!", "line 3"),  # exact after norm
        text_row(ONE_WORD_CHANGED, "line 4"),  # near
        text_row(UNRELATED[1], "line 5"),
        text_row(UNRELATED[0].lower(), "line 6"),  # exact
    ]
    out, log = run_step("dedup", rows)
    assert [r["source"] for r in out] == ["line 1", "line 2", "line 5"]
    assert log.dropped == {"exact duplicate": 2, "near duplicate": 1}
    assert log.details["num_clusters"] == 3
    assert log.details["clusters"] == [
        {
            "kind": "exact",
            "size": 2,
            "rows": ["line 1", "line 3"],
            "kept": "line 1",
            "example": SENTENCE[:200],
        },
        {
            "kind": "exact",
            "size": 2,
            "rows": ["line 2", "line 6"],
            "kept": "line 2",
            "example": UNRELATED[0],
        },
        {
            "kind": "near",
            "size": 2,
            "rows": ["line 1", "line 4"],
            "kept": "line 1",
            "example": SENTENCE[:200],
        },
    ]
    assert log.samples["dropped: near duplicate"] == [rows[3]]


def test_step_switches() -> None:
    rows = [text_row(SENTENCE, "a"), text_row(SENTENCE + ".", "b"), text_row(ONE_WORD_CHANGED, "c")]
    out, log = run_step("dedup", rows, near=False)
    assert [r["source"] for r in out] == ["a", "c"]
    # without exact detection the exact pair is still a near pair (Jaccard 1)
    out, log = run_step("dedup", rows, exact=False)
    assert [r["source"] for r in out] == ["a"]
    assert log.dropped == {"near duplicate": 2}
    out, log = run_step("dedup", rows, threshold=0.95)
    assert [r["source"] for r in out] == ["a", "c"]


def test_step_keep_longest() -> None:
    longer = SENTENCE + " and more"
    rows = [text_row(SENTENCE, "a"), text_row(longer, "b"), text_row(UNRELATED[0], "c")]
    out, log = run_step("dedup", rows, keep="longest")
    assert [r["source"] for r in out] == ["b", "c"]  # output order is still input order
    assert log.details["clusters"][0]["kept"] == "b"


def test_step_field() -> None:
    rows = [
        chat_row(SENTENCE, UNRELATED[0], "a"),
        chat_row(SENTENCE, UNRELATED[1], "b"),  # same prompt, other answer
        chat_row("Something else entirely, about trains.", UNRELATED[1], "c"),  # same answer
    ]
    assert [r["source"] for r in run_step("dedup", rows)[0]] == ["a", "b", "c"]
    assert [r["source"] for r in run_step("dedup", rows, field="prompt")[0]] == ["a", "c"]
    assert [r["source"] for r in run_step("dedup", rows, field="answer")[0]] == ["a", "b"]


def test_step_rejects_bad_options() -> None:
    with pytest.raises(DataError, match="field"):
        run_step("dedup", [text_row("x", "a")], field="body")
    with pytest.raises(DataError, match="keep"):
        run_step("dedup", [text_row("x", "a")], keep="random")
    with pytest.raises(DataError, match="method must be one of jaccard, edit, not 'levenshtein'"):
        run_step("dedup", [text_row("x", "a")], method="levenshtein")
    for bad in (-1, 11, 1.5, True, "2"):
        with pytest.raises(DataError, match="max_edits must be a whole number from 0 to 10"):
            run_step("dedup", [text_row("x", "a")], method="edit", max_edits=bad)
    with pytest.raises(DataError, match="method"):
        cluster_ids([text_row("x", "a")], method="minhash")


CHAIN = ["Where is my new card?", "where is my new phone", "Where is my old phone?"]


def test_step_edit_method_does_not_chain() -> None:
    # 5 words: 1 edit allowed; 0~1 and 1~2 are one edit apart, 0 and 2 two
    rows = [text_row(t, str(i)) for i, t in enumerate([*CHAIN, UNRELATED[0]])]
    out, log = run_step("dedup", rows, method="edit")
    assert [r["source"] for r in out] == ["0", "2", "3"]
    assert log.dropped == {"near duplicate": 1}
    assert log.details["clusters"] == [
        {"kind": "near", "size": 2, "rows": ["0", "1"], "kept": "0", "example": CHAIN[0]}
    ]
    # the split keeps the whole chain together
    assert cluster_ids(rows, method="edit") == [0, 0, 0, 1]
    # with fewer edits allowed nothing is near; jaccard sees these short texts differently
    assert len(run_step("dedup", rows, method="edit", max_edits=0)[0]) == 4
    assert len(run_step("dedup", rows)[0]) == 4


def test_step_edit_method_keep_longest() -> None:
    texts = [CHAIN[0], CHAIN[0] + " please", CHAIN[1], UNRELATED[1]]
    rows = [text_row(t, str(i)) for i, t in enumerate(texts)]
    out, log = run_step("dedup", rows, method="edit", keep="longest")
    # the longest row is kept first; 0 joins it; 2 is 2 edits from 1 (6 words allow 2)
    assert [r["source"] for r in out] == ["1", "3"]
    assert log.details["clusters"][0]["rows"] == ["0", "1", "2"]
    assert log.details["clusters"][0]["kept"] == "1"
    out, _ = run_step("dedup", rows, method="edit")
    # kept in index order: 0 first; 1 joins it, 2 joins it too (one edit from 0)
    assert [r["source"] for r in out] == ["0", "3"]


def test_cluster_ids() -> None:
    rows = [
        text_row(SENTENCE, "0"),
        text_row(UNRELATED[0], "1"),
        text_row(SENTENCE.lower(), "2"),  # exact duplicate of 0
        text_row(ONE_WORD_CHANGED, "3"),  # near duplicate of 0
        text_row(UNRELATED[1], "4"),
        text_row(UNRELATED[1] + " Thanks", "5"),  # near duplicate of 4
    ]
    assert cluster_ids(rows) == [0, 1, 0, 0, 2, 2]
    assert cluster_ids(rows, near=False) == [0, 1, 0, 2, 3, 4]
    assert cluster_ids(rows, exact=False, near=False) == [0, 1, 2, 3, 4, 5]
    assert cluster_ids([]) == []
    # the ids agree with what the step drops: one survivor per id
    out, _ = run_step("dedup", rows)
    assert len(out) == len(set(cluster_ids(rows)))


_WORDS = st.sampled_from(["card", "Card!", "top up", "top-up", "pin", "lost", "my", "the"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(_WORDS, min_size=1, max_size=6).map(" ".join), min_size=1, max_size=12),
    st.sampled_from(["jaccard", "edit"]),
)
def test_dedup_keeps_a_subsequence_and_never_everything(texts: list[str], method: str) -> None:
    rows = [text_row(t, f"line {i}") for i, t in enumerate(texts)]
    out, log = run_step("dedup", rows, threshold=0.5, method=method)
    assert out  # every cluster keeps one row
    kept = [rows.index(r) for r in out]
    assert kept == sorted(set(kept))  # a subsequence, in input order, no repeats
    assert len(out) + sum(log.dropped.values()) == len(rows)
    # no near duplicate is left among the kept rows (texts as the step compares them) ...
    compared = strip_shared_affixes([row_key_text(r) for r in rows])
    left = [compared[i] for i in kept]
    assert exact_duplicate_groups(left) == []
    assert near_duplicate_pairs(left, method, threshold=0.5) == []
    # ... and every split cluster keeps a row; a cluster can keep more than one, because
    # clusters are transitive and the step does not chain
    ids = cluster_ids(rows, threshold=0.5, method=method)
    assert {ids[i] for i in kept} == set(ids)


def _support_texts(n: int, seed: int = 0) -> list[str]:
    """~350-character texts over a Zipf vocabulary, every 20th a one-word edit of another."""
    import random

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    weights = [1 / (i + 1) for i in range(3000)]
    texts: list[str] = []
    for i in range(n):
        if texts and i % 20 == 0:
            words = rng.choice(texts).split()
            words[rng.randrange(len(words))] = rng.choice(vocab)
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choices(vocab, weights, k=rng.randint(40, 80))))
    return texts


def test_jaccard_pairs_equal_datasketch_lsh_candidates_verified() -> None:
    # the reference: datasketch's own MinHashLSH over the same signatures, every candidate
    # verified with the exact Jaccard of the shingle sets (what this module did before)
    from datasketch import LeanMinHash, MinHashLSH

    texts = [*_support_texts(600), "short", "shorts", "", "a"]
    for threshold in (0.5, 0.8):
        hashes, offsets = shingle_sets(texts, 5)
        signatures = minhash_signatures(hashes, offsets)
        lsh = MinHashLSH(threshold=threshold, num_perm=128, params=lsh_bands(threshold, 128))
        expected = []
        for j, values in enumerate(signatures):
            sketch = LeanMinHash(seed=1, hashvalues=values, scheme="affine32")
            for i in lsh.query(sketch):
                a = set(hashes[offsets[i] : offsets[i + 1]].tolist())
                b = set(hashes[offsets[j] : offsets[j + 1]].tolist())
                common, union = len(a & b), len(a | b)
                if common >= threshold * union:
                    expected.append((i, j, 1.0 - common / union))
            lsh.insert(j, sketch, check_duplication=False)
        found = near_duplicate_pairs(texts, threshold=threshold)
        assert found == sorted(expected) and len(found) >= 30


def test_near_duplicate_memory_per_text_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # With small blocks, what grows with the number of texts is what is kept for every text:
    # datasketch's LSH index and all shingle sets took ~11 KB a text; band keys take 144 B
    import tracemalloc

    import tuneloop.data.dedup as dedup

    monkeypatch.setattr(dedup, "_SIGNATURE_TEXTS", 500, raising=False)
    monkeypatch.setattr(dedup, "_BATCH_CHARS", 1 << 15)
    monkeypatch.setattr(dedup, "_CHUNK_SHINGLES", 1 << 12)
    texts = _support_texts(6000)
    near_duplicate_pairs(texts[:50])  # imports and caches outside the measurement
    peaks = {}
    for n in (2000, 6000):
        tracemalloc.start()
        near_duplicate_pairs(texts[:n])
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert (peaks[6000] - peaks[2000]) / 4000 < 2500


def test_verifying_candidates_in_blocks_does_not_change_pairs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tuneloop.data.dedup as dedup

    texts = _support_texts(400)
    expected = near_duplicate_pairs(texts, threshold=0.5)
    monkeypatch.setattr(dedup, "_VERIFY_PAIRS", 7)
    monkeypatch.setattr(dedup, "_SIGNATURE_TEXTS", 33)
    assert near_duplicate_pairs(texts, threshold=0.5) == expected and len(expected) > 20


def _split_of(out: list[Row]) -> dict[str, str]:
    return {r["source"]: r["split"] for r in out}


def test_split_after_dedup_reuses_what_dedup_found() -> None:
    from tuneloop.data.pipeline import run_steps

    texts = _support_texts(400)
    rows = [text_row(t, str(i)) for i, t in enumerate(texts)]
    rows.append(text_row(texts[3].upper(), "exact"))  # an exact duplicate for dedup too
    out, logs = run_steps(rows, [("dedup", {}), ("split", {"validation": 0.2})], progress=False)
    dedup_log, split_log = logs
    assert dedup_log.dropped["near duplicate"] >= 15 and dedup_log.dropped["exact duplicate"] == 1
    assert split_log.details["near_duplicates_from"] == "dedup"
    # the same split, clustered again from scratch on dedup's rows, finds no cluster and
    # assigns every row alike
    kept, _ = run_step("dedup", rows)
    again, log = run_step("split", kept, validation=0.2)
    assert log.details["near_duplicates_from"] == "split"
    assert log.details["rows_in_multi_row_clusters"] == 0
    assert _split_of(again) == _split_of(out)
    assert split_log.details["counts"] == log.details["counts"]


def test_split_clusters_again_when_dedup_left_something() -> None:
    from tuneloop.data.pipeline import run_steps

    rows = [text_row(SENTENCE, "0"), text_row(ONE_WORD_CHANGED, "1")]  # Jaccard 0.913
    rows += [text_row(t, str(i + 2)) for i, t in enumerate(_support_texts(19, seed=3))]  # no pairs
    # a dedup at 0.95 keeps the pair; the split at 0.8 must still put it on one side
    _, logs = run_steps(
        rows, [("dedup", {"threshold": 0.95}), ("split", {"validation": 0.5})], progress=False
    )
    assert logs[0].dropped["near duplicate"] == 0
    assert logs[1].details["near_duplicates_from"] == "split"
    assert logs[1].details["rows_in_multi_row_clusters"] >= 2
    # a dedup at the split's threshold compared only the prompts, not whole rows
    chats = [chat_row(f"question {i}", SENTENCE, str(i)) for i in range(2)]
    chats += [chat_row("something else", ONE_WORD_CHANGED, "x")]
    _, logs = run_steps(chats, [("dedup", {"field": "prompt"}), ("split", {})], progress=False)
    assert logs[1].details["near_duplicates_from"] == "split"
    # a text edited after dedup (or a row repeated) is not one dedup vouched for
    shared: dict = {}
    kept, _ = run_step("dedup", rows, threshold=0.95, shared=shared)
    changed = [dict(r) for r in kept]
    changed[5]["text"] += " edited"
    _, log = run_step("split", changed, shared=shared)
    assert log.details["near_duplicates_from"] == "split"
    kept, _ = run_step("dedup", rows[2:], shared=shared)
    _, log = run_step("split", kept[1:], shared=shared)  # a row dropped: still vouched for
    assert log.details["near_duplicates_from"] == "dedup"
    _, log = run_step("split", [*kept, kept[0]], shared=shared)
    assert log.details["near_duplicates_from"] == "split"


def test_signature_bytes_set_aside_candidates_that_agree_too_little() -> None:
    from scipy.stats import binom

    from tuneloop.data.dedup import SKETCH_MISS, _likely_candidates, min_agreement

    for threshold in (0.5, 0.8, 0.95):
        k = min_agreement(threshold, 128)
        # the largest k with P(X < k) <= miss, X ~ Binomial(128, threshold)
        assert binom.cdf(k - 1, 128, threshold) <= SKETCH_MISS < binom.cdf(k, 128, threshold)
    assert min_agreement(1.0, 128) == 128
    need = min_agreement(0.8, 128)
    sketch = np.zeros((4, 128), dtype=np.uint8)
    sketch[1, need:] = 1  # agrees with text 0 on `need` bytes
    sketch[2, need - 1 :] = 1  # one fewer
    sketch[3] = 7  # on none
    left, right = _likely_candidates(sketch, np.array([0, 0, 0, 1]), np.array([1, 2, 3, 2]), 0.8)
    assert list(zip(left.tolist(), right.tolist(), strict=True)) == [(0, 1), (1, 2)]


def test_templated_rows_keep_their_near_duplicates() -> None:
    # every row opens with one of ten template lines, as tickets do: many LSH candidates at
    # Jaccard 0.3-0.5, which the signature bytes reject, while the planted near duplicates
    # (one word changed) are all still found
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(400)]
    texts = []
    for i in range(1500):
        template = f"Why does my {rng.choice(['card', 'app', 'loan', 'pin', 'fee'])} not work?"
        texts.append(f"{template} {' '.join(rng.choices(words, k=12))} (ticket {i})")
    planted = []
    for i in range(0, 1500, 50):
        changed = texts[i].split()
        changed[7] = "zzz"
        planted.append((i, len(texts)))
        texts.append(" ".join(changed))
    found = {(i, j) for i, j, _ in near_duplicate_pairs(texts, threshold=0.7)}
    assert set(planted) <= found
