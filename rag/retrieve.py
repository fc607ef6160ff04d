"""Hybrid retrieval: dense vectors from Chroma plus BM25, fused by reciprocal rank.

The chat app, the OpenAI-compatible API and both CLIs call :func:`retrieve`
(or a :class:`Retriever`) and get typed :class:`Hit` values back, best first.

Each search embeds the question once (ONNX, no torch), asks Chroma for
``settings.candidates`` nearest chunks and BM25 for as many keyword matches,
and merges the two rankings with reciprocal rank fusion: a chunk scores
``1 / (rrf_k + rank)`` in every list it appears in. RRF needs no score
calibration between cosine similarities and BM25 scores, which live on
unrelated scales.

A :class:`Retriever` is cached per process and settings. Before each search it
reads the store's generation token (one small file); when an ingest has
committed since, it reopens Chroma and reloads the BM25 index, so a
long-running app sees new documents without a restart.

>>> dense = [(Chunk("guide.pdf#4", "guide.pdf", 4, "Raise the skeg.", page=3), 0.81)]
>>> lexical = [(Chunk("faq.md#0", "faq.md", 0, "Skeg or rudder?"), 7.2), (dense[0][0], 5.1)]
>>> [(h.label, h.dense_rank, h.bm25_rank) for h in fuse(dense, lexical, k=2, rrf_k=60)]
[('guide.pdf, page 3', 1, 2), ('faq.md', None, 1)]
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from rag.bm25 import Bm25Index, load_bm25_index
from rag.errors import NoDocuments
from rag.settings import Settings
from rag.store import Chunk, ChunkStore, forget_cached_clients, read_generation

Mode = Literal["hybrid", "dense", "bm25"]
MODES: tuple[Mode, ...] = ("hybrid", "dense", "bm25")


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk: where it comes from, its text, and how it ranked.

    ``score`` is the fused RRF score in hybrid mode (the cosine similarity in
    dense mode, the BM25 score in bm25 mode); higher is better. The ranks are
    1-based positions in each method's own list, None when the method did not
    return the chunk.
    """

    chunk_id: str
    source: str  # relative to the docs folder, "/" separators
    page: int | None  # 1-based page for PDFs, None for formats without pages
    heading: str | None
    text: str
    score: float
    dense_rank: int | None = None
    bm25_rank: int | None = None
    # Cosine similarity to the question when the dense half returned this chunk: the
    # relevance gate's signal (RRF scores only say how chunks rank against each other).
    similarity: float | None = None
    ocr: bool = False  # the text was read by OCR from a scanned page or an image

    @property
    def label(self) -> str:
        """Where the passage comes from, for people and the model: ``guide.pdf, page 3``.

        OCR'd text says so (``scan.pdf, page 3 (OCR)``): its words may be misread.
        """
        where = f"{self.source}, page {self.page}" if self.page is not None else self.source
        return f"{where} (OCR)" if self.ocr else where


def fuse(
    dense: list[tuple[Chunk, float]],
    lexical: list[tuple[Chunk, float]],
    k: int,
    rrf_k: int,
) -> list[Hit]:
    """Merge two ranked lists by reciprocal rank fusion and keep the best ``k``.

    Ties (equal fused score) keep the dense order first, then the lexical one,
    so results are deterministic.
    """
    scores: dict[str, float] = {}
    chunks: dict[str, Chunk] = {}
    dense_rank: dict[str, int] = {}
    bm25_rank: dict[str, int] = {}
    similarity = {chunk.id: score for chunk, score in dense}
    for ranks, ranked in ((dense_rank, dense), (bm25_rank, lexical)):
        for rank, (chunk, _score) in enumerate(ranked, start=1):
            if chunk.id in ranks:  # a method listing a chunk twice counts once
                continue
            ranks[chunk.id] = rank
            chunks.setdefault(chunk.id, chunk)
            scores[chunk.id] = scores.get(chunk.id, 0.0) + 1.0 / (rrf_k + rank)
    order = sorted(scores, key=lambda cid: -scores[cid])  # sorted() is stable
    return [
        _hit(chunks[cid], scores[cid], dense_rank.get(cid), bm25_rank.get(cid), similarity.get(cid))
        for cid in order[:k]
    ]


def _hit(
    chunk: Chunk,
    score: float,
    dense_rank: int | None,
    bm25_rank: int | None,
    similarity: float | None = None,
) -> Hit:
    return Hit(
        chunk_id=chunk.id,
        source=chunk.source,
        page=chunk.page,
        heading=chunk.heading,
        text=chunk.text,
        score=score,
        dense_rank=dense_rank,
        bm25_rank=bm25_rank,
        similarity=similarity,
        ocr=chunk.ocr,
    )


@dataclass(frozen=True)
class _Loaded:
    """What one store generation needs for searching, swapped as a whole on reload."""

    generation: str
    store: ChunkStore
    lexical: Bm25Index
    count: int
    # The ingested files, read once per generation from the BM25 index (one indexed query):
    # naming files in a question must not cost a Chroma scan per question.
    sources: tuple[str, ...] = field(default=())


class Retriever:
    """Hybrid search over one store; reloads itself when an ingest changes the store.

    ``Retriever(settings).search(question, k)`` gives the ``k`` best :class:`Hit` s.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()

    def search(
        self,
        question: str,
        k: int | None = None,
        *,
        mode: Mode = "hybrid",
        sources: Collection[str] = (),
    ) -> list[Hit]:
        """The ``k`` best chunks for ``question`` (default ``settings.top_k``), best first.

        ``mode`` picks hybrid (default), dense-only or BM25-only; the single
        modes exist for evaluation. ``sources`` limits both halves to chunks of
        those files (empty: every file). Raises :class:`NoDocuments` when nothing
        is ingested.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        k = k or self.settings.top_k
        loaded = self._fresh()
        candidates = max(self.settings.candidates, k)
        wanted = tuple(sorted(set(sources)))
        dense: list[tuple[Chunk, float]] = []
        lexical: list[tuple[Chunk, float]] = []
        if mode != "bm25":
            dense = self._dense(loaded, question, min(candidates, loaded.count), wanted)
        if mode != "dense":
            lexical = _lexical(loaded, question, candidates, wanted)
        if mode == "dense":
            return [_hit(c, s, r, None, s) for r, (c, s) in enumerate(dense[:k], start=1)]
        if mode == "bm25":
            return [_hit(c, s, None, r) for r, (c, s) in enumerate(lexical[:k], start=1)]
        return fuse(dense, lexical, k, self.settings.rrf_k)

    def sources(self) -> tuple[str, ...]:
        """The ingested files (paths relative to the docs folder), sorted.

        Raises :class:`NoDocuments` when nothing is ingested.
        """
        return self._fresh().sources

    def chunks_of(self, source: str) -> list[Chunk]:
        """Every chunk of ``source`` in reading order (empty for a file not ingested)."""
        return self._fresh().store.chunks_of(source)

    def _dense(
        self, loaded: _Loaded, question: str, n: int, sources: tuple[str, ...] = ()
    ) -> list[tuple[Chunk, float]]:
        # Imported on first use: rag.embed loads onnxruntime, which BM25-only use never needs.
        from rag.embed import get_embedder

        vector = get_embedder(self.settings).embed_query(question)
        return loaded.store.query(vector, n, sources=sources)

    def _fresh(self) -> _Loaded:
        """The loaded store and index for the current generation, reopening both when it moved."""
        generation = read_generation(self.settings)
        with self._lock:
            loaded = self._loaded
            if loaded is None or loaded.generation != generation:
                loaded = self._load(generation, previous=loaded)
                self._loaded = loaded
            return loaded

    def _load(self, generation: str, *, previous: _Loaded | None) -> _Loaded:
        s = self.settings
        docs = str(s.docs_dir)
        # Opening a missing local store would create an empty one on disk; say so instead.
        if not s.chroma_host and not s.chroma_dir.exists():
            raise NoDocuments(docs)
        if previous is not None:
            # Chroma's cached client keeps serving the vector index it loaded
            # first; only a fresh client sees what another process committed.
            forget_cached_clients()
        # Not created when missing: a reader must not make an empty, unowned server collection.
        store = ChunkStore(s, create=False)
        count = store.count()
        if count == 0:
            raise NoDocuments(docs)
        # The open index is kept, so its postings are updated rather than loaded again.
        lexical = load_bm25_index(s, store, current=previous.lexical if previous else None)
        sources = tuple(sorted(lexical.sources()))
        return _Loaded(generation, store, lexical, count, sources)


def _lexical(
    loaded: _Loaded, question: str, n: int, sources: tuple[str, ...]
) -> list[tuple[Chunk, float]]:
    """BM25's ``n`` best chunks, only among ``sources`` when given.

    Scoped, the index ranks only those files' chunks: the file's best matches may
    lie far below the store's top ``n``.
    """
    return loaded.lexical.search(question, n, sources=sources)


@functools.cache
def get_retriever(settings: Settings) -> Retriever:
    """The process-wide :class:`Retriever` for these settings (frozen, so they key the cache)."""
    return Retriever(settings)


def retrieve(
    question: str, k: int | None = None, *, settings: Settings, sources: Collection[str] = ()
) -> list[Hit]:
    """The ``k`` best chunks for ``question`` by hybrid search (see :class:`Retriever`);
    ``sources`` limits them to those files."""
    return get_retriever(settings).search(question, k, sources=sources)
