"""The BM25 index: tokenisation, exact-word matches, persistence with the generation stamp."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag.bm25 import (
    Bm25Index,
    index_dir,
    load_bm25_index,
    rebuild_bm25_index,
    tokenize,
)
from rag.settings import Settings
from rag.store import Chunk, ChunkStore, bump_generation, read_generation

TEXTS = {
    "config.md": "Set RAG_DOCS_DIR to ingest another folder. The default is docs.",
    "ollama.md": "Ollama listens on port 11434 and serves the OpenAI API under /v1.",
    "manual.pdf": "Raise the skeg before landing on a beach, or the blade can bend.",
}


def _chunks() -> list[Chunk]:
    return [
        Chunk(id=f"{src}#0", source=src, index=0, text=text, page=2 if ".pdf" in src else None)
        for src, text in TEXTS.items()
    ]


def _fill(settings: Settings, chunks: list[Chunk]) -> ChunkStore:
    # Vectors do not matter to BM25; random unit vectors keep this test free of the model.
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(chunks), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = ChunkStore(settings)
    store.add(chunks, vectors)
    bump_generation(settings)
    return store


def test_tokenize_lowercases_drops_stopwords_and_splits_identifiers() -> None:
    assert tokenize("How do I set RAG_DOCS_DIR to the folder?") == [
        "how", "do", "set", "rag", "docs", "dir", "folder",
    ]


def test_exact_identifier_ranks_its_chunk_first() -> None:
    index = Bm25Index(_chunks(), generation="g1")
    hits = index.search("port 11434", 3)
    assert hits[0][0].source == "ollama.md"
    assert hits[0][1] > 0


def test_chunks_sharing_no_word_with_the_query_are_not_returned() -> None:
    index = Bm25Index(_chunks(), generation="g1")
    assert [c.source for c, _ in index.search("skeg", 10)] == ["manual.pdf"]
    assert index.search("zeppelin", 10) == []
    assert index.search("the and of", 10) == []  # only stopwords


def test_rebuild_saves_index_stamped_with_store_generation(settings: Settings) -> None:
    store = _fill(settings, _chunks())
    assert rebuild_bm25_index(settings, store) == 3
    root = index_dir(settings)
    folder = root / (root / "CURRENT").read_text()
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["generation"] == read_generation(settings)
    assert meta["count"] == 3


def test_saved_index_keeps_page_and_source_of_each_chunk(settings: Settings) -> None:
    _fill(settings, _chunks())
    rebuild_bm25_index(settings)
    loaded = Bm25Index.load(settings)
    assert loaded is not None
    chunk, _ = loaded.search("skeg landing", 1)[0]
    assert (chunk.id, chunk.source, chunk.page) == ("manual.pdf#0", "manual.pdf", 2)
    assert chunk.text == TEXTS["manual.pdf"]


def test_loader_rebuilds_when_stamp_does_not_match_store(settings: Settings) -> None:
    store = _fill(settings, _chunks())
    rebuild_bm25_index(settings, store)
    # A writer adds a chunk and bumps the generation but dies before rebuilding BM25.
    extra = Chunk(id="new.md#0", source="new.md", index=0, text="Zeppelin hangar opening hours")
    store.add([extra], np.eye(1, 384, dtype=np.float32))
    bump_generation(settings)
    index = load_bm25_index(settings, store)
    assert index.generation == read_generation(settings)
    assert [c.source for c, _ in index.search("zeppelin", 5)] == ["new.md"]
    # ... and the rebuilt index was saved, so the next reader loads it as is.
    assert Bm25Index.load(settings).generation == read_generation(settings)


def test_empty_store_gives_an_empty_index_without_errors(settings: Settings) -> None:
    assert rebuild_bm25_index(settings, ChunkStore(settings)) == 0
    index = load_bm25_index(settings)
    assert len(index) == 0
    assert index.search("anything", 5) == []


def test_old_index_folders_are_cleaned_up(settings: Settings) -> None:
    store = _fill(settings, _chunks())
    for _ in range(4):
        rebuild_bm25_index(settings, store)
    folders = [p for p in index_dir(settings).iterdir() if p.is_dir()]
    assert len(folders) <= 2  # the current one and its predecessor


@pytest.mark.embedder
def test_store_of_stopwords_only_has_no_bm25_hits_and_dense_search_still_works(
    settings: Settings,
) -> None:
    from ingest.pipeline import ingest
    from rag.retrieve import Retriever

    # Every word is an English stopword or a single letter: BM25 has nothing to index.
    text = "It is not for it to be there, and it was not in it. If it is, then no. A b c."
    assert tokenize(text) == []
    (settings.docs_dir / "filler.txt").write_text(text)
    report = ingest(settings)
    assert report.added == ["filler.txt"] and report.failed == []

    index = load_bm25_index(settings)
    assert len(index) == 1 and index.search("there then", 5) == []
    saved = Bm25Index.load(settings)
    assert saved is not None and saved.generation == read_generation(settings)
    hits = Retriever(settings).search("is it there", 3)
    assert [(h.source, h.bm25_rank) for h in hits] == [("filler.txt", None)]
    assert hits[0].dense_rank == 1
