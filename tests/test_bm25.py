"""The BM25 index: tokenisation, exact-word matches, persistence with the generation stamp,
and incremental updates that stay equal to a full rebuild."""

from __future__ import annotations

import math
import random
import sqlite3
import threading
import time

import numpy as np
import pytest

from rag.bm25 import (
    Bm25Index,
    index_path,
    load_bm25_index,
    publish,
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
    index = Bm25Index.from_chunks(_chunks(), generation="g1")
    hits = index.search("port 11434", 3)
    assert hits[0][0].source == "ollama.md"
    assert hits[0][1] > 0


def test_chunks_sharing_no_word_with_the_query_are_not_returned() -> None:
    index = Bm25Index.from_chunks(_chunks(), generation="g1")
    assert [c.source for c, _ in index.search("skeg", 10)] == ["manual.pdf"]
    assert index.search("zeppelin", 10) == []
    assert index.search("the and of", 10) == []  # only stopwords


def test_rebuild_saves_index_stamped_with_store_generation(settings: Settings) -> None:
    store = _fill(settings, _chunks())
    assert rebuild_bm25_index(settings, store) == 3
    index = Bm25Index.open(index_path(settings))
    assert index.generation == read_generation(settings) != ""
    assert len(index) == 3


def test_saved_index_keeps_page_and_source_of_each_chunk(settings: Settings) -> None:
    _fill(settings, _chunks())
    rebuild_bm25_index(settings)
    loaded = Bm25Index.open(index_path(settings))
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
    assert Bm25Index.open(index_path(settings)).generation == read_generation(settings)


def test_empty_store_gives_an_empty_index_without_errors(settings: Settings) -> None:
    assert rebuild_bm25_index(settings, ChunkStore(settings)) == 0
    index = load_bm25_index(settings)
    assert len(index) == 0
    assert index.search("anything", 5) == []


def test_index_of_an_older_format_is_rebuilt_from_the_store(settings: Settings) -> None:
    store = _fill(settings, _chunks())
    rebuild_bm25_index(settings, store)
    with sqlite3.connect(index_path(settings)) as db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'format'")
    index = load_bm25_index(settings, store)
    assert len(index) == 3 and index.generation == read_generation(settings)
    assert [c.source for c, _ in index.search("skeg", 5)] == ["manual.pdf"]


def test_publish_removes_the_folder_indexes_of_the_previous_format(settings: Settings) -> None:
    root = index_path(settings).parent
    (root / "idx-0123456789ab").mkdir(parents=True)
    (root / "CURRENT").write_text("idx-0123456789ab")
    publish(settings, ChunkStore(settings), {})
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith("index.sqlite3")) == []


def test_reader_waits_for_a_publishing_writer_instead_of_rebuilding(settings: Settings) -> None:
    store = _fill(settings, _chunks())
    rebuild_bm25_index(settings, store)
    writer = Bm25Index.open(index_path(settings))
    loaded: list[Bm25Index] = []
    with writer.transaction():
        # The writer's generation is visible before its index commits.
        generation = bump_generation(settings)
        reader = threading.Thread(target=lambda: loaded.append(load_bm25_index(settings, store)))
        reader.start()
        time.sleep(0.5)
        assert not loaded  # blocked on the write lock, not rebuilding from a stale stamp
        writer.replace_sources({"ollama.md": []}, generation)
    reader.join(timeout=60)
    assert len(loaded[0]) == 2  # the writer's index, not a rebuild from the store's 3 chunks
    assert loaded[0].generation == generation


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
    saved = Bm25Index.open(index_path(settings))
    assert saved.generation == read_generation(settings)
    hits = Retriever(settings).search("is it there", 3)
    assert [(h.source, h.bm25_rank) for h in hits] == [("filler.txt", None)]
    assert hits[0].dense_rank == 1


# --- incremental updates --------------------------------------------------------------

_WORDS = [f"w{n}" for n in range(60)] + ["skeg", "paddle", "rudder", "hatch", "spray", "deck"]
_QUERIES = ["skeg paddle", "w1 w2 w3", "rudder hatch w7", "spray deck", "w10", "w33 w34 deck"]


def _random_file(rng: random.Random, source: str) -> list[Chunk]:
    """A source of 1-6 chunks of random words, with a hash that changes on every edit."""
    sha = f"{rng.getrandbits(64):016x}"
    return [
        Chunk(
            id=f"{source}#{i}",
            source=source,
            index=i,
            text=" ".join(rng.choices(_WORDS, k=rng.randint(3, 40))),
            file_sha256=sha,
        )
        for i in range(rng.randint(1, 6))
    ]


def _write(store: ChunkStore, chunks: list[Chunk]) -> None:
    store.delete_source(chunks[0].source)
    vectors = np.eye(len(chunks), 384, dtype=np.float32)
    store.add(chunks, vectors)


def _top(index: Bm25Index) -> list[list[tuple[str, float]]]:
    return [[(c.id, round(s, 9)) for c, s in index.search(q, 8)] for q in _QUERIES]


def test_incremental_index_equals_a_full_rebuild_after_random_adds_edits_and_deletes(
    settings: Settings,
) -> None:
    rng = random.Random(11)
    store = ChunkStore(settings)
    files: dict[str, list[Chunk]] = {}
    for round_no in range(12):
        for _ in range(rng.randint(1, 4)):  # new files
            source = f"doc{round_no}-{rng.randint(0, 999)}.md"
            files[source] = _random_file(rng, source)
            _write(store, files[source])
        for source in rng.sample(sorted(files), k=min(2, len(files))):  # edited files
            files[source] = _random_file(rng, source)
            _write(store, files[source])
        for source in rng.sample(sorted(files), k=min(rng.randint(0, 2), len(files) - 1)):
            store.delete_source(source)  # deleted files
            del files[source]
        wanted = {s: chunks[0].file_sha256 for s, chunks in files.items()}
        publish(settings, store, wanted)

        incremental = Bm25Index.open(index_path(settings))
        full = Bm25Index.from_chunks(store.iter_chunks(), generation="full")
        assert len(incremental) == len(full) == sum(len(c) for c in files.values())
        assert incremental.sources() == wanted
        assert _top(incremental) == _top(full), f"round {round_no}"
        assert incremental.generation == read_generation(settings)
        incremental.close()


def test_publish_reads_back_only_the_sources_whose_hash_changed(settings: Settings) -> None:
    rng = random.Random(3)
    store = ChunkStore(settings)
    files = {f"f{n}.md": _random_file(rng, f"f{n}.md") for n in range(20)}
    for chunks in files.values():
        _write(store, chunks)
    first = publish(settings, store, {s: c[0].file_sha256 for s, c in files.items()})
    assert len(first.reindexed) == 20

    files["f3.md"] = _random_file(rng, "f3.md")
    _write(store, files["f3.md"])
    store.delete_source("f7.md")
    del files["f7.md"]
    update = publish(settings, store, {s: c[0].file_sha256 for s, c in files.items()})
    assert (update.reindexed, update.dropped) == (("f3.md",), ("f7.md",))
    assert update.chunks == len(files["f3.md"]) and not update.full


def test_an_ingest_killed_before_publishing_is_caught_up_by_the_next_publish(
    settings: Settings,
) -> None:
    rng = random.Random(5)
    store = ChunkStore(settings)
    a, b = _random_file(rng, "a.md"), _random_file(rng, "b.md")
    _write(store, a)
    publish(settings, store, {"a.md": a[0].file_sha256})
    # A killed run wrote b.md and edited a.md but never published.
    _write(store, b)
    a = _random_file(rng, "a.md")
    _write(store, a)
    update = publish(settings, store, {"a.md": a[0].file_sha256, "b.md": b[0].file_sha256})
    assert update.reindexed == ("a.md", "b.md")
    index = Bm25Index.open(index_path(settings))
    assert _top(index) == _top(Bm25Index.from_chunks(store.iter_chunks(), generation=""))


# --- the fast path against the plain definition ---------------------------------------

# A vocabulary with a long tail, like real text: a few words in most chunks, many rare.
_ZIPF_WORDS = [f"t{n}" for n in range(400)]
_ZIPF_WEIGHTS = [1 / (n + 1) for n in range(400)]


def _reference_top(
    chunks: list[Chunk], query: str, k: int, sources: set[str] | None = None
) -> list[tuple[str, float]]:
    """Lucene BM25 (k1 1.5, b 0.75) of every chunk, one at a time, as written in the books."""
    docs = {c.id: tokenize(c.text) for c in chunks}
    count, total = len(docs), sum(len(t) for t in docs.values())
    words = tokenize(query)
    df = {w: sum(w in t for t in docs.values()) for w in set(words)}
    scored = []
    for chunk in chunks:
        tokens = docs[chunk.id]
        norm = 1.5 * (1 - 0.75 + 0.75 * len(tokens) / (total / count))
        score = 0.0
        for word in words:
            tf = tokens.count(word)
            if tf:
                idf = math.log(1 + (count - df[word] + 0.5) / (df[word] + 0.5))
                score += idf * tf / (tf + norm)
        if score > 0 and (sources is None or chunk.source in sources):
            scored.append((chunk.id, score))
    return sorted(scored, key=lambda hit: (-hit[1], hit[0]))[:k]


def _zipf_source(rng: random.Random, source: str) -> list[Chunk]:
    return [
        Chunk(
            f"{source}#{i}", source, i,
            " ".join(rng.choices(_ZIPF_WORDS, _ZIPF_WEIGHTS, k=rng.randint(1, 60))),
            file_sha256=source,
        )
        for i in range(rng.randint(1, 8))
    ]


def test_search_returns_exactly_the_reference_scores_and_order_after_random_changes() -> None:
    rng = random.Random(23)
    files = {f"s{n}.md": _zipf_source(rng, f"s{n}.md") for n in range(40)}
    index = Bm25Index.from_chunks([c for cs in files.values() for c in cs], generation="g")
    for round_no in range(8):
        changes: dict[str, list[Chunk]] = {}
        for source in rng.sample(sorted(files), k=6):  # edited or deleted
            changes[source] = [] if rng.random() < 0.4 else _zipf_source(rng, source)
        for n in range(3):  # added
            changes[f"new{round_no}-{n}.md"] = _zipf_source(rng, f"new{round_no}-{n}.md")
        with index.transaction():
            index.replace_sources(changes, generation=f"g{round_no}")
        files.update(changes)
        files = {s: cs for s, cs in files.items() if cs}
        chunks = [c for cs in files.values() for c in cs]
        for _ in range(15):
            # Repeated words, frequent words (many ties) and words no chunk has.
            query = " ".join(rng.choices(_ZIPF_WORDS + ["absent"], k=rng.randint(1, 7)))
            k = rng.choice([1, 5, 30, 10_000])
            got = [(c.id, s) for c, s in index.search(query, k)]
            assert got == _reference_top(chunks, query, k), (round_no, query, k)
        scope = set(rng.sample(sorted(files), k=3))
        got = [(c.id, s) for c, s in index.search("t1 t7 t50", 10, sources=scope)]
        assert got == _reference_top(chunks, "t1 t7 t50", 10, scope)


def test_a_searcher_sees_what_another_connection_wrote_since_its_last_search(
    settings: Settings,
) -> None:
    store = _fill(settings, _chunks())
    rebuild_bm25_index(settings, store)
    reader = Bm25Index.open(index_path(settings))
    assert reader.search("zeppelin", 5) == []
    writer = Bm25Index.open(index_path(settings))
    extra = Chunk("new.md#0", "new.md", 0, "Zeppelin hangar opening hours", file_sha256="x")
    with writer.transaction():
        writer.replace_sources({"new.md": [extra], "ollama.md": []}, generation="g2")
    assert [c.id for c, _ in reader.search("zeppelin", 5)] == ["new.md#0"]
    assert reader.search("11434", 5) == []
    assert len(reader) == 3


def test_listing_sources_reads_the_source_index_not_the_chunks(settings: Settings) -> None:
    # publish lists the sources on every ingest; reading every chunk's text for it took
    # over a second at 100k chunks.
    rebuild_bm25_index(settings, _fill(settings, _chunks()))
    with sqlite3.connect(index_path(settings)) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT DISTINCT source, file_sha256 FROM chunks"
        ).fetchall()
    assert "COVERING INDEX chunks_by_source" in " ".join(str(step[-1]) for step in plan)


def test_a_searcher_reloads_when_the_log_of_dropped_chunks_was_cleared(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rag.bm25._REMOVED_KEPT", 0)  # clear the log whenever it outgrows the index
    rng = random.Random(4)
    files = {f"s{n}.md": _zipf_source(rng, f"s{n}.md") for n in range(6)}
    writer = Bm25Index.open(index_path(settings))
    with writer.transaction():
        writer.replace_all([c for cs in files.values() for c in cs], generation="g0")
    reader = Bm25Index.open(index_path(settings))
    reader.search("t1", 5)
    for round_no, source in enumerate(sorted(files)[:5]):
        with writer.transaction():
            writer.replace_sources({source: []}, generation=f"g{round_no + 1}")
        del files[source]
        chunks = [c for cs in files.values() for c in cs]
        assert [(c.id, s) for c, s in reader.search("t1 t2 t3", 50)] == _reference_top(
            chunks, "t1 t2 t3", 50
        )
    with sqlite3.connect(index_path(settings)) as db:
        (cleared_at,) = db.execute("SELECT value FROM meta WHERE key = 'rebuilt_at'").fetchone()
    assert int(cleared_at) > 1  # the log was cleared after the first write at least once


def test_loader_keeps_a_searchers_open_index_unless_its_file_was_replaced(
    settings: Settings,
) -> None:
    store = _fill(settings, _chunks())
    rebuild_bm25_index(settings, store)
    held = load_bm25_index(settings, store)
    assert held.search("skeg", 1)
    bump_generation(settings)
    rebuild_bm25_index(settings, store)
    assert load_bm25_index(settings, store, current=held) is held
    # A data folder wiped and ingested again: the held connection reads a deleted file.
    for leftover in index_path(settings).parent.iterdir():
        leftover.unlink()
    rebuild_bm25_index(settings, store)
    fresh = load_bm25_index(settings, store, current=held)
    assert fresh is not held
    assert [c.source for c, _ in fresh.search("skeg", 5)] == ["manual.pdf"]


def test_publish_reads_changed_sources_by_chunk_id_and_falls_back_when_counts_are_wrong(
    settings: Settings,
) -> None:
    rng = random.Random(8)
    store = ChunkStore(settings)
    files = {f"f{n}.md": _random_file(rng, f"f{n}.md") for n in range(5)}
    for chunks in files.values():
        _write(store, chunks)
    wanted = {s: c[0].file_sha256 for s, c in files.items()}
    counts = {s: len(c) for s, c in files.items()}
    assert store.chunks_of("f1.md", counts["f1.md"]) == store.chunks_of("f1.md")
    counts["f2.md"] += 3  # a count that does not match the store: read by filter instead
    publish(settings, store, wanted, chunk_counts=counts)
    index = Bm25Index.open(index_path(settings))
    assert len(index) == sum(len(c) for c in files.values())
    assert _top(index) == _top(Bm25Index.from_chunks(store.iter_chunks(), generation=""))
