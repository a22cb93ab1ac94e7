"""Retrieval over a team's documents (RAG): chunks, embeddings, a FAISS index, citations.

`RetrievalIndex.build(folder)` reads every document (.txt, .md, .html, .pdf; the same
readers as continued pretraining), cuts each into chunks of at most `max_chars` with
`overlap` characters carried over (at word boundaries, `documents.chunk_text`), keeps the
Markdown heading each chunk sits under, embeds "heading: text" with the bundled MiniLM and
searches them by cosine similarity. Small corpora get exact search (one BLAS matrix
product, which beat FAISS's flat index on single queries); past `HNSW_FROM` chunks a FAISS
graph index (`IndexHNSWFlat`) keeps a query under a millisecond where exact search grows
with the corpus (bench/bench_rag.py measured all three, docs/experiments.md).

A saved index is one folder, replaced whole (`files.staged_dir`): `manifest.json` (settings,
the documents with their SHA-256, the embedder), `chunks.jsonl`, `vectors.npy` (read with
`allow_pickle=False`) and, for HNSW, `index.faiss`. Nothing in it is unpickled.

It lives in `data` beside the label-hint index, not in `baselines`: a run trained with
retrieval in its prompts records the index in its prompt format, and evaluation and
serving (which do not import `baselines`) add the same passages through `Prompting`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.data.formats import Conversation
from tuneloop.errors import DataError, TuneloopError

EMBEDDER = "all-MiniLM-L6-v2"
HNSW_FROM = 200_000  # chunks; below it exact search is fast enough (bench/rag_index.py)
HNSW_M = 32  # graph neighbours per node
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 96
CONTEXT_HEADER = (
    "Answer from these passages of the documentation. If they do not contain the answer, "
    "say you do not know. Cite the passages you use by number, like [1]."
)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Chunk:
    """One passage: where it comes from (file, heading) and its text."""

    id: int
    source: str  # file name relative to the indexed folder
    section: str  # the heading it sits under ("" when none)
    text: str

    def cite(self) -> str:
        """How an answer names it: `policies.md § Orders and shipping`."""
        return f"{self.source} § {self.section}" if self.section else self.source

    def embed_text(self) -> str:
        return f"{self.section}: {self.text}" if self.section else self.text


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float  # cosine similarity
    rank: int  # 1 = best

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "score": round(self.score, 4),
            "source": self.chunk.cite(),
            "chunk": self.chunk.id,
            "text": self.chunk.text,
        }


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) pieces of a Markdown text, split at headings; the heading is the
    nearest one above (a `##` under a `#` reads "Top › Sub"). Text without headings is one
    piece with no heading."""
    out: list[tuple[str, list[str]]] = [("", [])]
    trail: list[tuple[int, str]] = []
    fenced = False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match:
            level = len(match.group(1))
            trail = [(lv, t) for lv, t in trail if lv < level] + [(level, match.group(2))]
            # the document title (a lone top heading) is left out of section names
            names = [t for lv, t in trail if lv > 1 or len(trail) == 1]
            out.append((" › ".join(names), []))
        else:
            out[-1][1].append(line)
    return [(h, "\n".join(body).strip()) for h, body in out if "\n".join(body).strip()]


def chunk_document(
    source: str, text: str, max_chars: int = 700, overlap: int = 100, start_id: int = 0
) -> list[Chunk]:
    """A document's chunks, section by section (a chunk never spans two headings)."""
    from tuneloop.data.documents import chunk_text

    chunks: list[Chunk] = []
    for heading, body in sections(text):
        for piece in chunk_text(body, max_chars=max_chars, overlap=overlap):
            chunks.append(Chunk(start_id + len(chunks), source, heading, piece))
    return chunks


def document_files(folder: str | Path) -> list[Path]:
    """The indexable documents under `folder` (or the one file), sorted; DataError if none."""
    from tuneloop.data.documents import DOCUMENT_SUFFIXES

    root = Path(folder)
    if not root.exists():
        raise DataError(f"documents not found: {root}")
    if root.is_file():
        return [root]
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES
    )
    if not files:
        raise DataError(f"{root} holds no documents ({', '.join(DOCUMENT_SUFFIXES)})")
    return files


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class RetrievalIndex:
    """Chunks and their L2-normalised embeddings, searchable by cosine similarity."""

    chunks: list[Chunk]
    vectors: Any  # numpy (n, 384) float32
    kind: str = "flat"  # "flat" (exact) or "hnsw"
    settings: dict[str, Any] = field(default_factory=dict)
    documents: list[dict[str, Any]] = field(default_factory=list)
    _faiss: Any = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        folder: str | Path,
        *,
        max_chars: int = 700,
        overlap: int = 100,
        kind: str = "auto",
        progress: bool = True,
    ) -> RetrievalIndex:
        """Read, chunk, embed and index every document under `folder`.

        An unreadable or empty file is an error naming it: an index silently missing a
        document answers "I do not know" where it should not.
        """
        from tuneloop.data.documents import read_document

        root = Path(folder)
        files = document_files(root)
        chunks: list[Chunk] = []
        documents = []
        for path in files:
            name = path.name if root.is_file() else str(path.relative_to(root))
            text = read_document(path)
            if not text.strip():
                raise DataError(f"{path}: no text (a scanned PDF needs OCR first)")
            found = chunk_document(name, text, max_chars, overlap, start_id=len(chunks))
            chunks.extend(found)
            documents.append({"source": name, "sha256": _sha256(path), "chunks": len(found)})
        vectors = _embed_chunks(chunks, progress)
        settings = {"max_chars": max_chars, "overlap": overlap, "embedder": EMBEDDER}
        return cls.from_vectors(chunks, vectors, kind=kind, settings=settings, documents=documents)

    @classmethod
    def from_vectors(
        cls, chunks: list[Chunk], vectors: Any, *, kind: str = "auto", **extra: Any
    ) -> RetrievalIndex:
        """An index over precomputed unit vectors (one row per chunk)."""
        import numpy as np

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(chunks) != len(vectors):
            raise TuneloopError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        if kind == "auto":
            kind = "hnsw" if len(chunks) >= HNSW_FROM else "flat"
        if kind not in ("flat", "hnsw"):
            raise TuneloopError(f"unknown index kind {kind!r}; use auto, flat or hnsw")
        index = cls(chunks, vectors, kind, **extra)
        if kind == "hnsw":
            index._faiss = _hnsw_index(vectors)
        return index

    def __len__(self) -> int:
        return len(self.chunks)

    def search(self, queries: list[str], k: int = 3) -> list[list[Hit]]:
        """The k most similar chunks to each query, best first."""
        from tuneloop.data.embed import embed

        return self.search_vectors(embed(list(queries)), k)

    def search_vectors(self, vectors: Any, k: int) -> list[list[Hit]]:
        import numpy as np

        if k <= 0 or not self.chunks or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.kind == "flat":
            scores, ids = _exact_search(self.vectors, queries, min(k, len(self.chunks)))
        else:
            scores, ids = self._faiss.search(queries, k)
        return [
            [
                Hit(self.chunks[int(i)], float(s), rank)
                for rank, (s, i) in enumerate(zip(row_s, row_i, strict=True), start=1)
                if i >= 0
            ]
            for row_s, row_i in zip(scores, ids, strict=True)
        ]

    def save(self, directory: str | Path) -> Path:
        """Write the index as one folder, replaced whole (module docstring)."""
        import faiss
        import numpy as np

        from tuneloop.files import staged_dir

        final = Path(directory)
        with staged_dir(final) as tmp:
            with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as f:
                for c in self.chunks:
                    f.write(json.dumps(asdict(c), ensure_ascii=False) + "\n")
            np.save(tmp / "vectors.npy", self.vectors)
            if self.kind == "hnsw":
                faiss.write_index(self._faiss, str(tmp / "index.faiss"))
            files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
            manifest = {
                "format": 1,
                "kind": self.kind,
                "chunks": len(self.chunks),
                "settings": self.settings,
                "documents": self.documents,
                "files": files,
                "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return final

    @classmethod
    def load(cls, directory: str | Path) -> RetrievalIndex:
        """A saved index; TuneloopError naming what is wrong if it is missing, changed or
        inconsistent (checksums from its manifest)."""
        import faiss
        import numpy as np

        path = Path(directory)
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
            for name, digest in manifest["files"].items():
                if _sha256(path / name) != digest:
                    raise TuneloopError(
                        f"retrieval index at {path}: {name} does not match its manifest "
                        "(changed after it was written); build the index again"
                    )
            rows = [
                json.loads(line)
                for line in (path / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
            ]
            chunks = [Chunk(r["id"], r["source"], r["section"], r["text"]) for r in rows]
            vectors = np.load(path / "vectors.npy", allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise TuneloopError(
                f"cannot read the retrieval index at {path}: {err} (build one with "
                "`tuneloop rag index DOCS --out DIR`)"
            ) from None
        if len(chunks) != len(vectors) or len(chunks) != manifest.get("chunks"):
            raise TuneloopError(
                f"retrieval index at {path} is inconsistent: {len(chunks)} chunks, "
                f"{len(vectors)} vectors, manifest says {manifest.get('chunks')}"
            )
        kind = manifest.get("kind", "flat")
        out = cls(
            chunks, vectors, kind, manifest.get("settings", {}), manifest.get("documents", [])
        )
        if kind == "hnsw":
            out._faiss = faiss.read_index(str(path / "index.faiss"))
            out._faiss.hnsw.efSearch = HNSW_EF_SEARCH
        return out


def open_index(path: str | Path, **build: Any) -> RetrievalIndex:
    """A saved index (a folder with `manifest.json`), or one built here from a folder or
    file of documents (`build` passes chunking settings)."""
    if (Path(path) / "manifest.json").is_file():
        return RetrievalIndex.load(path)
    return RetrievalIndex.build(path, **build)


def _exact_search(vectors: Any, queries: Any, k: int) -> tuple[Any, Any]:
    """The k best inner products per query, best first, by one matrix product in blocks.

    Exact search is numpy's (BLAS) rather than FAISS's `IndexFlatIP`: for one query at a
    time, what a server sends, FAISS's flat index took 2x as long at 10k and 100k chunks
    (bench/bench_rag.py, docs/experiments.md); for batches the two are alike.
    """
    import numpy as np

    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for lo in range(0, len(queries), 256):  # 256 x 1M floats is 1 GB: keep blocks small
        sims = queries[lo : lo + 256] @ vectors.T
        top = (
            np.argpartition(-sims, k - 1, axis=1)[:, :k]
            if k < sims.shape[1]
            else (np.tile(np.arange(sims.shape[1]), (len(sims), 1)))
        )
        part = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-part, axis=1, kind="stable")
        ids[lo : lo + 256] = np.take_along_axis(top, order, axis=1)
        scores[lo : lo + 256] = np.take_along_axis(part, order, axis=1)
    return scores, ids


def _hnsw_index(vectors: Any) -> Any:
    """FAISS's HNSW graph over unit vectors, by inner product (cosine)."""
    try:
        import faiss
    except ImportError as err:
        raise TuneloopError(f"retrieval needs the package faiss-cpu ({err})") from None
    dim = vectors.shape[1] if len(vectors) else 384
    index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = HNSW_EF_SEARCH
    if len(vectors):
        index.add(vectors)
    return index


def _embed_chunks(chunks: list[Chunk], progress: bool) -> Any:
    import numpy as np

    from tuneloop.data.embed import embed
    from tuneloop.progress import Progress

    texts = [c.embed_text() for c in chunks]
    parts = []
    step = 512
    bar = Progress(len(texts), "embedding chunks", unit="chunk") if progress else None
    for lo in range(0, len(texts), step):
        parts.append(embed(texts[lo : lo + step]))
        if bar is not None:
            bar.update(len(texts[lo : lo + step]))
    if bar is not None:
        bar.close()
    return np.concatenate(parts) if parts else np.zeros((0, 384), dtype=np.float32)


def context_message(hits: list[Hit]) -> str:
    """The passages as the model sees them, numbered for citation."""
    blocks = [f"[{h.rank}] ({h.chunk.cite()})\n{h.chunk.text}" for h in hits]
    return CONTEXT_HEADER + "\n\n" + "\n\n".join(blocks)


def with_context(conversations: list[Conversation], hits: list[list[Hit]]) -> list[Conversation]:
    """Each conversation with its passages added to its system message (one is made when
    there is none), so the user's own words stay as they were sent."""
    out = []
    for conv, found in zip(conversations, hits, strict=True):
        if not found:
            out.append(conv)
            continue
        context = context_message(found)
        if conv and conv[0]["role"] == "system":
            head = {"role": "system", "content": conv[0]["content"] + "\n\n" + context}
            out.append([head, *conv[1:]])
        else:
            out.append([{"role": "system", "content": context}, *conv])
    return out


def retrieval_record(directory: Path, k: int) -> dict[str, Any]:
    """What a run's prompt format records about its retrieval (Prompting reads it)."""
    return {"index": str(directory), "k": int(k)}


# --- retrieval quality on labelled queries ------------------------------------------------


def read_queries(path: str | Path) -> list[dict[str, Any]]:
    """Labelled retrieval queries from JSONL: `query` (or a chat row's last user message)
    and what a relevant chunk holds: `passage` (a quote from the documents), `section`, or
    `facts` (strings a relevant chunk contains). Errors name the line."""
    rows: list[dict[str, Any]] = []
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DataError(f"cannot read {p}: {err.strerror}") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise DataError(f"{p}:{n}: not JSON ({err})") from None
        if not isinstance(row, dict):
            raise DataError(f"{p}:{n}: expected an object")
        query = row.get("query")
        if query is None and isinstance(row.get("messages"), list):
            users = [m.get("content") for m in row["messages"] if m.get("role") == "user"]
            query = users[-1] if users else None
        if not isinstance(query, str) or not query.strip():
            raise DataError(f"{p}:{n}: no query (a `query` string or a chat row)")
        gold = {k: row[k] for k in ("passage", "section", "facts") if row.get(k)}
        if not gold:
            raise DataError(f"{p}:{n}: nothing marks a relevant chunk (passage, section or facts)")
        rows.append({"query": query, "line": n, **gold})
    if not rows:
        raise DataError(f"{p}: no queries")
    return rows


def relevant(chunk: Chunk, gold: dict[str, Any]) -> bool:
    """Whether a chunk answers a labelled query: it holds the quoted passage, sits in the
    named section, or holds every one of the facts (a fact may be a list of alternative
    wordings, one of which must appear)."""
    from tuneloop.data.dedup import normalize_for_hash as normalize

    text = normalize(chunk.text)
    if gold.get("passage"):
        return normalize(gold["passage"]) in text
    if gold.get("section"):
        return gold["section"].lower() in chunk.section.lower()
    return all(
        any(normalize(alt) in text for alt in ([f] if isinstance(f, str) else f))
        for f in gold.get("facts", [])
    )


def retrieval_quality(
    index: RetrievalIndex, queries: list[dict[str, Any]], ks: tuple[int, ...] = (1, 3, 5, 10)
) -> dict[str, Any]:
    """recall@k (share of queries with a relevant chunk in the top k) and MRR (mean of 1 /
    rank of the first relevant chunk, 0 when none is in the top max(ks)), with each query's
    first relevant rank."""
    depth = max(ks)
    hits = index.search([q["query"] for q in queries], depth)
    ranks: list[int | None] = []
    for q, found in zip(queries, hits, strict=True):
        first = next((h.rank for h in found if relevant(h.chunk, q)), None)
        ranks.append(first)
    n = len(queries)
    out: dict[str, Any] = {
        f"recall@{k}": sum(r is not None and r <= k for r in ranks) / n for k in ks
    }
    out["mrr"] = sum(1 / r for r in ranks if r is not None) / n
    out["queries"] = n
    out["per_query"] = [
        {"line": q["line"], "query": q["query"], "first_relevant_rank": r}
        for q, r in zip(queries, ranks, strict=True)
    ]
    return out
