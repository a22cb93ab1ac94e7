"""Retrieval (RAG): chunks keep their headings, search finds the passage that answers,
saved indexes load only as written, and recall@k / MRR count what they say."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from tuneloop.data.retrieval import (
    Chunk,
    RetrievalIndex,
    chunk_document,
    read_queries,
    relevant,
    retrieval_quality,
    sections,
    with_context,
)
from tuneloop.errors import DataError, TuneloopError

DOC = """# Acme Help

Acme is a made-up company.

## Shipping
- We ship to France and Spain only.
- Standard delivery takes 4 days.

## Warranty
- Every kettle has a 3-year warranty.

```
# not a heading inside a code fence
```
"""


def _docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "help.md").write_text(DOC, encoding="utf-8")
    (folder / "faq.html").write_text(
        "<html><head><title>FAQ</title></head><body><nav>menu</nav>"
        "<p>Kettles boil a litre in 90 seconds.</p></body></html>",
        encoding="utf-8",
    )
    (folder / "notes.bin").write_bytes(b"\x00\x01")  # not a document: left out
    return folder


def test_sections_follow_headings_and_skip_code_fences() -> None:
    found = sections(DOC)
    assert [h for h, _ in found] == ["Acme Help", "Shipping", "Warranty"]
    assert "# not a heading" in found[2][1]
    assert sections("no headings here") == [("", "no headings here")]
    nested = sections("# T\n## A\nx\n### B\ny")
    assert [h for h, _ in nested] == ["A", "A › B"]


def test_chunks_stay_within_a_section_and_overlap(tmp_path: Path) -> None:
    text = "## Long\n" + " ".join(f"Sentence number {i} is here." for i in range(40))
    chunks = chunk_document("long.md", text, max_chars=200, overlap=50)
    assert len(chunks) > 4 and all(len(c.text) <= 200 for c in chunks)
    assert {c.section for c in chunks} == {"Long"}
    assert [c.id for c in chunks] == list(range(len(chunks)))
    # each chunk starts with words from the end of the one before (overlap)
    assert all(b.text.split()[0] in a.text for a, b in itertools.pairwise(chunks))
    assert chunks[0].cite() == "long.md § Long"


def test_search_finds_the_answering_passage_and_cites_it(tmp_path: Path) -> None:
    index = RetrievalIndex.build(_docs(tmp_path), progress=False)
    assert index.kind == "flat"
    assert sorted(d["source"] for d in index.documents) == ["faq.html", "help.md"]
    (hits,) = index.search(["How long is the warranty on a kettle?"], k=2)
    assert hits[0].chunk.cite() == "help.md § Warranty" and hits[0].rank == 1
    assert hits[0].score >= hits[1].score
    (boil,) = index.search(["how fast does it boil water"], k=1)
    assert boil[0].chunk.source == "faq.html" and "90 seconds" in boil[0].chunk.text

    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}]
    (prompt,) = with_context([conv], [hits])
    assert prompt[0]["content"].startswith("Be brief.\n\n")
    assert "[1] (help.md § Warranty)" in prompt[0]["content"] and prompt[1] == conv[1]
    (bare,) = with_context([conv[1:]], [hits])
    assert bare[0]["role"] == "system" and bare[1] == conv[1]


def test_saved_index_round_trips_and_refuses_changed_files(tmp_path: Path) -> None:
    index = RetrievalIndex.build(_docs(tmp_path), progress=False)
    saved = index.save(tmp_path / "index")
    again = RetrievalIndex.load(saved)
    assert again.chunks == index.chunks and np.allclose(again.vectors, index.vectors)
    query = ["where do you ship?"]
    assert [h.chunk.id for h in again.search(query, 3)[0]] == [
        h.chunk.id for h in index.search(query, 3)[0]
    ]
    chunks = saved / "chunks.jsonl"
    chunks.write_text(chunks.read_text().replace("France", "Nowhere"))
    with pytest.raises(TuneloopError, match=r"chunks\.jsonl does not match its manifest"):
        RetrievalIndex.load(saved)
    with pytest.raises(TuneloopError, match="cannot read the retrieval index"):
        RetrievalIndex.load(tmp_path / "missing")


def test_a_pickled_vectors_file_is_never_loaded(tmp_path: Path) -> None:
    index = RetrievalIndex.build(_docs(tmp_path), progress=False)
    saved = index.save(tmp_path / "index")
    # an object array needs pickle to load; with its checksum fixed up it must still fail
    np.save(saved / "vectors.npy", np.array([object()] * len(index)), allow_pickle=True)
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"]["vectors.npy"] = hashlib.sha256(
        (saved / "vectors.npy").read_bytes()
    ).hexdigest()
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TuneloopError, match="cannot read the retrieval index"):
        RetrievalIndex.load(saved)


def test_hnsw_and_exact_search_agree_on_clustered_vectors() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    vectors = centres[rng.integers(0, 20, 2000)] + 0.05 * rng.normal(size=(2000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    chunks = [Chunk(i, "synthetic", "", f"chunk {i}") for i in range(2000)]
    exact = RetrievalIndex.from_vectors(chunks, vectors, kind="flat")
    graph = RetrievalIndex.from_vectors(chunks, vectors, kind="hnsw")
    queries = vectors[:50] + 0.01
    top_exact = [[h.chunk.id for h in hits] for hits in exact.search_vectors(queries, 5)]
    top_graph = [[h.chunk.id for h in hits] for hits in graph.search_vectors(queries, 5)]
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top_exact, top_graph, strict=True)])
    assert overlap >= 0.9
    brute = np.argsort(-(queries @ vectors.T), axis=1)[:, 0]
    assert [t[0] for t in top_exact] == brute.tolist()
    with pytest.raises(TuneloopError, match="unknown index kind"):
        RetrievalIndex.from_vectors(chunks, vectors, kind="ivf")


def test_recall_at_k_and_mrr_count_first_relevant_ranks(tmp_path: Path) -> None:
    index = RetrievalIndex.build(_docs(tmp_path), progress=False)
    queries = [
        {"query": "kettle warranty length", "passage": "3-year warranty", "line": 1},
        {"query": "which countries do you deliver to", "section": "Shipping", "line": 2},
        {"query": "litre boiling time", "facts": ["90 seconds", "litre"], "line": 3},
        {"query": "anything", "passage": "text that is in no document", "line": 4},
    ]
    result = retrieval_quality(index, queries, ks=(1, 3))
    ranks = [q["first_relevant_rank"] for q in result["per_query"]]
    assert ranks[3] is None and all(r is not None for r in ranks[:3])
    assert result["recall@1"] == sum(r == 1 for r in ranks) / 4
    assert result["recall@3"] == sum(r is not None and r <= 3 for r in ranks) / 4
    assert result["mrr"] == pytest.approx(sum(1 / r for r in ranks if r) / 4)
    assert relevant(Chunk(0, "a", "Shipping › Europe", "x"), {"section": "shipping"})


def test_queries_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"query": "a", "passage": "b"}\n\n{"query": "c"}\n')
    with pytest.raises(DataError, match=r"q\.jsonl:3: nothing marks a relevant chunk"):
        read_queries(path)
    path.write_text('{"messages": [{"role": "user", "content": "hi"}], "facts": ["x"]}\nnope\n')
    with pytest.raises(DataError, match=r"q\.jsonl:2: not JSON"):
        read_queries(path)
    path.write_text('{"messages": [{"role": "user", "content": "hi"}], "facts": ["x"]}\n')
    assert read_queries(path)[0]["query"] == "hi"


def test_empty_or_missing_documents_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="documents not found"):
        RetrievalIndex.build(tmp_path / "nothing", progress=False)
    (tmp_path / "only.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="holds no documents"):
        RetrievalIndex.build(tmp_path, progress=False)
    (tmp_path / "empty.md").write_text("   \n")
    with pytest.raises(DataError, match=r"empty\.md: no text"):
        RetrievalIndex.build(tmp_path, progress=False)
