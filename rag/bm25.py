"""BM25 keyword index over every chunk in the store (the lexical half of hybrid search).

Dense vectors find passages that *mean* the same as a question; BM25 finds the
exact words: setting names, error messages, product codes. The index is one
SQLite file: it ships inside Python's ``sqlite3``, updates in place, and every
change is one transaction, so a reader sees the index before a change or after
it, never half of one. This module decides how text becomes tokens and keeps the
index in step with the store.

The index lives in ``DATA_DIR/bm25/index.sqlite3``. Each chunk's id, source,
page, heading and text are kept, so a BM25 hit becomes a :class:`~rag.store.Chunk`
without another Chroma round-trip; beside them, a forward index (each chunk's
term ids and counts, two small blobs) and the vocabulary. A searcher turns the
forward index into numpy postings on its first search (:mod:`rag.postings`) and
scores every chunk that shares a word with the question with Lucene's BM25,
exactly: about a millisecond at 100k chunks, where scoring SQLite rows (FTS5,
format 4) took 35-65 ms. After a write it updates those postings instead of
loading them again: rowids are never reused, so new chunks are the rows above
its last rowid, and the ``removed`` table logs which chunks each write dropped.
The file is stamped with the store generation it matches.

Ingest calls :func:`publish` once at the end of a run that changed the store: it
bumps the generation and re-indexes only the sources whose file hash differs
from what the index holds (and drops the sources that are gone), in one
transaction; its cost follows the changed sources, not the store (the chunk and
token totals are kept in ``meta``, the sources' hashes in an index). Readers call
:func:`load_bm25_index`, which acts only when the stamp does not match: it
rebuilds from the local store (an ingest that was killed, or an older index),
and on a Chroma server, where the owner ingests from another machine and each
machine keeps its own index, re-reads the sources that changed.

>>> index = Bm25Index.from_chunks(
...     [
...         Chunk("config.md#0", "config.md", 0, "Set RAG_DOCS_DIR to ingest another folder."),
...         Chunk("ollama.md#0", "ollama.md", 0, "Ollama listens on port 11434."),
...     ],
...     generation="g1",
... )
>>> [(c.source, round(s, 2)) for c, s in index.search("RAG_DOCS_DIR", 3)]
[('config.md', 0.74)]
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from rag.postings import MAX_TF, TERM_FREQ, TERM_ID, Postings
from rag.settings import Settings
from rag.store import Chunk, ChunkStore, bump_generation, read_generation

# Bump when tokenisation or the schema changes: an index of another format is rebuilt.
INDEX_FORMAT = 5
# Runs of 2+ letters/digits. Underscores split, so RAG_DOCS_DIR also matches "docs dir".
_TOKEN = re.compile(r"[^\W_]{2,}")
# The English stopwords of bm25s, which this index used before FTS5.
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is",
    "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there",
    "these", "they", "this", "to", "was", "will", "with",
})
_INDEX_FILE = "index.sqlite3"
# A reader that finds the index stale waits this long for a writer's transaction.
_BUSY_TIMEOUT_S = 300.0
_INSERT_BATCH = 2000
# Dropped chunks logged for searchers at least up to this many (see Bm25Index._stamp).
_REMOVED_KEPT = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    idx INTEGER NOT NULL,
    page INTEGER,
    heading TEXT,
    text TEXT NOT NULL,
    file_sha256 TEXT NOT NULL,
    ocr INTEGER NOT NULL DEFAULT 0
);
-- Covers sources(): the source hashes are read without touching the chunks' text.
CREATE INDEX IF NOT EXISTS chunks_by_source ON chunks (source, file_sha256);
-- Term ids, assigned once and never reused (a term of deleted chunks just has no postings).
CREATE TABLE IF NOT EXISTS vocab (id INTEGER PRIMARY KEY, term TEXT NOT NULL UNIQUE);
-- The forward index, apart from the text so that loading it reads only these bytes:
-- each chunk's token count, distinct term ids (int32) and their counts (uint16).
CREATE TABLE IF NOT EXISTS doc_terms (
    rowid INTEGER PRIMARY KEY,
    ntokens INTEGER NOT NULL,
    term_ids BLOB NOT NULL,
    tfs BLOB NOT NULL
);
-- Chunks dropped, by the write that dropped them: a searcher holding the postings of an
-- earlier write removes these and adds the rows above its last rowid, instead of reloading.
CREATE TABLE IF NOT EXISTS removed (rowid INTEGER PRIMARY KEY, write INTEGER NOT NULL);
"""

_ROWS = "SELECT rowid, id, source, idx, page, heading, text, file_sha256, ocr FROM chunks"
# Bound parameters per statement, well below SQLite's limit.
_MARKS = 500


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` without English stopwords (corpus and queries alike)."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS]


def indexed_text(chunk: Chunk) -> str:
    """The text BM25 indexes for ``chunk``: the one place that decides what is searchable."""
    return chunk.text


def index_dir(settings: Settings) -> Path:
    """The folder holding the BM25 index (``DATA_DIR/bm25``)."""
    return settings.data_dir / "bm25"


def index_path(settings: Settings) -> Path:
    """The SQLite file of the BM25 index."""
    return index_dir(settings) / _INDEX_FILE


@dataclass(frozen=True)
class Bm25Update:
    """What :func:`publish` changed: sources re-indexed, sources dropped, chunks written."""

    reindexed: tuple[str, ...]
    dropped: tuple[str, ...]
    chunks: int
    full: bool


class Bm25Index:
    """BM25 over the chunks of one SQLite file (or memory), stamped with a store generation.

    Open one with :meth:`open` (a file) or :meth:`from_chunks` (in memory); search
    with :meth:`search`. One instance may be shared between threads.
    """

    def __init__(self, db: sqlite3.Connection, path: Path | None = None) -> None:
        self._db = db
        # Which file (device, inode) the connection has open; None in memory.
        self._file = _file_id(path) if path is not None else None
        # One statement at a time on the shared connection; re-entered inside a transaction.
        self._lock = threading.RLock()
        # The postings of the snapshot last searched, and the write counter it was built
        # at: a writer in another process changes the file under this connection.
        self._postings: Postings | None = None
        self._postings_at = 0

    @classmethod
    def open(cls, path: Path) -> Bm25Index:
        """The index in ``path``, created empty when missing; one of another format is dropped."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        # WAL: readers keep searching the last committed index while a writer updates it.
        db.execute("PRAGMA journal_mode=WAL")
        return cls(_prepared(db), path)

    @classmethod
    def from_chunks(cls, chunks: Iterable[Chunk], generation: str) -> Bm25Index:
        """An in-memory index of ``chunks`` (tests, benchmarks, one-off searches)."""
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        index = cls(_prepared(db))
        with index.transaction():
            index.replace_all(chunks, generation)
        return index

    def is_open_on(self, path: Path) -> bool:
        """Whether this index is open on the file now at ``path`` (not one deleted since)."""
        return self._file is not None and self._file == _file_id(path)

    @property
    def generation(self) -> str:
        """The store generation this index was last brought in line with ("" if never)."""
        return self._meta("generation")

    def __len__(self) -> int:
        with self._lock:
            return int(self._meta("chunks") or 0)

    def search(
        self, query: str, k: int, *, sources: Collection[str] = ()
    ) -> list[tuple[Chunk, float]]:
        """The ``k`` best chunks for ``query`` with their BM25 scores, best first.

        Every chunk sharing a word with the query is scored (Lucene's BM25, k1 1.5,
        b 0.75); ties go by chunk id. Chunks sharing no word are never returned, so
        fewer than ``k`` results (or none) are normal. ``sources`` limits the
        ranking to chunks of those files (empty: every file).
        """
        tokens = tokenize(query)
        if not tokens or k <= 0:
            return []
        with self._lock, self._snapshot():
            postings = self._current_postings()
            # A word the question repeats counts each time, as it did with bm25s.
            ids = self._term_ids(tokens)
            query_ids = [ids[t] for t in tokens if t in ids]
            if not query_ids:
                return []
            allowed = self._rowids_of(sources) if sources else None
            rowids, scores = postings.top(query_ids, k, allowed)
            ranked = sorted(
                zip(self._chunk_ids(rowids), rowids.tolist(), scores.tolist(), strict=True),
                key=lambda hit: (-hit[2], hit[0]),
            )[:k]
            chunks = self._chunks([rowid for _, rowid, _ in ranked])
        return [(chunks[rowid], score) for _, rowid, score in ranked]

    def sources(self) -> dict[str, str]:
        """``{source: file sha256}`` of every source the index holds chunks of; a source whose
        chunks disagree on the hash (never written so) maps to "", so it is re-indexed."""
        return {source: sha for source, (sha, _) in self.source_counts().items()}

    def source_counts(self) -> dict[str, tuple[str, int]]:
        """``{source: (file sha256, chunk count)}``, the hash ``""`` when its chunks disagree."""
        with self._lock:
            rows = self._db.execute(
                "SELECT source, file_sha256, COUNT(*) FROM chunks GROUP BY source, file_sha256"
            ).fetchall()
        found: dict[str, tuple[str, int]] = {}
        for source, sha, count in rows:
            held = found.get(source)
            found[source] = (sha, count) if held is None else ("", held[1] + count)
        return found

    @property
    def store_id(self) -> str:
        """The id of the Chroma collection a server reader's index follows ("" if none)."""
        return self._meta("store_id")

    def set_store_id(self, store_id: str) -> None:
        """Record which collection this index follows; call inside :meth:`transaction`."""
        self._set_meta("store_id", store_id)

    def transaction(self) -> _Transaction:
        """A write transaction (``with index.transaction(): ...``): all of it or nothing.

        It takes SQLite's write lock at once, so two writers never interleave and a
        reader that waits for it sees the finished result.
        """
        return _Transaction(self)

    def replace_sources(self, changes: Mapping[str, Sequence[Chunk]], generation: str) -> int:
        """Give each source in ``changes`` exactly its listed chunks (none: drop it); stamp.

        Call inside :meth:`transaction`. Returns the number of chunks written.
        """
        written = 0
        for source, chunks in changes.items():
            self._drop_source(source)
            written += self._insert(chunks)
        self._stamp(generation)
        return written

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def replace_all(self, chunks: Iterable[Chunk], generation: str) -> int:
        """Make ``chunks`` the whole index and stamp it; call inside :meth:`transaction`."""
        for table in ("chunks", "doc_terms", "vocab", "removed"):
            self._db.execute(f"DELETE FROM {table}")
        # Searchers holding postings of an earlier write load them again from scratch.
        self._set_meta("rebuilt_at", str(self._this_write()))
        self._set_meta("chunks", "0")
        self._set_meta("tokens", "0")
        written = 0
        iterator = iter(chunks)
        while batch := list(islice(iterator, _INSERT_BATCH)):
            written += self._insert(batch)
        self._stamp(generation)
        return written

    # --- reading ------------------------------------------------------------------

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(self._db)

    def _current_postings(self) -> Postings:
        """The postings of what this connection sees now, brought up to date after a write."""
        # Not the generation: tests and tools may write twice under one stamp.
        writes = int(self._meta("writes") or 0)
        postings, seen = self._postings, self._postings_at
        if postings is not None and writes == seen:
            return postings
        if postings is None or seen < int(self._meta("rebuilt_at") or 0):
            rows = self._db.execute("SELECT rowid, ntokens, term_ids, tfs FROM doc_terms")
            postings = Postings.from_rows(rows)
        else:
            removed = self._db.execute("SELECT rowid FROM removed WHERE write > ?", (seen,))
            added = self._db.execute(
                "SELECT rowid, ntokens, term_ids, tfs FROM doc_terms WHERE rowid > ?",
                (int(postings.rowids.max(initial=0)),),
            ).fetchall()
            postings = postings.updated(np.array([r for (r,) in removed], np.int64), added)
        self._postings, self._postings_at = postings, writes
        return postings

    def _term_ids(self, terms: Sequence[str]) -> dict[str, int]:
        distinct = list(dict.fromkeys(terms))
        return dict(self._where_in("SELECT term, id FROM vocab", "term", distinct))

    def _rowids_of(self, sources: Collection[str]) -> np.ndarray:
        rows = self._where_in("SELECT rowid FROM chunks", "source", sorted(sources))
        return np.array([r for (r,) in rows], dtype=np.int64)

    def _chunk_ids(self, rowids: np.ndarray) -> list[str]:
        ids = dict(self._where_in("SELECT rowid, id FROM chunks", "rowid", rowids.tolist()))
        return [ids[r] for r in rowids.tolist()]

    def _chunks(self, rowids: Sequence[int]) -> dict[int, Chunk]:
        return {row[0]: _chunk(row[1:]) for row in self._where_in(_ROWS, "rowid", list(rowids))}

    def _where_in(
        self, select: str, column: str, values: Sequence[object]
    ) -> Iterator[tuple[Any, ...]]:
        """The rows of ``select ... WHERE column IN values``, in statements of at most
        :data:`_MARKS` bound values (SQLite's limit on them)."""
        for start in range(0, len(values), _MARKS):
            part = values[start : start + _MARKS]
            marks = ",".join("?" * len(part))
            yield from self._db.execute(f"{select} WHERE {column} IN ({marks})", part)

    # --- inside a transaction ---------------------------------------------------

    def _drop_source(self, source: str) -> None:
        chunks, tokens = self._db.execute(
            "SELECT count(*), coalesce(sum(ntokens), 0) FROM doc_terms WHERE rowid IN"
            " (SELECT rowid FROM chunks WHERE source = ?)",
            (source,),
        ).fetchone()
        self._db.execute(
            "INSERT OR REPLACE INTO removed (rowid, write)"
            " SELECT rowid, ? FROM chunks WHERE source = ?",
            (self._this_write(), source),
        )
        self._db.execute(
            "DELETE FROM doc_terms WHERE rowid IN (SELECT rowid FROM chunks WHERE source = ?)",
            (source,),
        )
        self._db.execute("DELETE FROM chunks WHERE source = ?", (source,))
        self._add_sizes(-chunks, -tokens)

    def _insert(self, chunks: Sequence[Chunk]) -> int:
        if not chunks:
            return 0
        # Rowids are numbered here so both tables take one executemany each, and never
        # reused, so a searcher can tell new chunks by their rowid alone.
        (last,) = self._db.execute("SELECT coalesce(max(rowid), 0) FROM chunks").fetchone()
        last = max(last, int(self._meta("next_rowid") or 1) - 1)
        self._set_meta("next_rowid", str(last + len(chunks) + 1))
        tokens = [tokenize(indexed_text(c)) for c in chunks]
        ids = self._assign_ids({t for chunk_tokens in tokens for t in chunk_tokens})
        rows = [
            (last + n, c.id, c.source, c.index, c.page, c.heading, c.text, c.file_sha256,
             int(c.ocr))
            for n, c in enumerate(chunks, start=1)
        ]
        self._db.executemany(
            "INSERT INTO chunks (rowid, id, source, idx, page, heading, text, file_sha256,"
            " ocr) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self._db.executemany(
            "INSERT INTO doc_terms (rowid, ntokens, term_ids, tfs) VALUES (?, ?, ?, ?)",
            [(row[0], len(t), *_forward(t, ids)) for row, t in zip(rows, tokens, strict=True)],
        )
        self._add_sizes(len(rows), sum(len(t) for t in tokens))
        return len(rows)

    def _assign_ids(self, terms: set[str]) -> dict[str, int]:
        """The term id of each of ``terms``, giving new terms the next free ids."""
        ordered = sorted(terms)
        self._db.executemany(
            "INSERT OR IGNORE INTO vocab (term) VALUES (?)", [(t,) for t in ordered]
        )
        return self._term_ids(ordered)

    def _stamp(self, generation: str) -> None:
        """Record the generation, and count the write so searchers update their postings."""
        write = self._this_write()
        (logged,) = self._db.execute("SELECT count(*) FROM removed").fetchone()
        if logged > max(int(self._meta("chunks") or 0), _REMOVED_KEPT):
            # The log only spares searchers a reload: past this size, one reload is cheaper.
            self._db.execute("DELETE FROM removed")
            self._set_meta("rebuilt_at", str(write))
        self._set_meta("generation", generation)
        self._set_meta("writes", str(write))

    def _this_write(self) -> int:
        """The number of the write in progress (one more than the last committed)."""
        return int(self._meta("writes") or 0) + 1

    def _add_sizes(self, chunks: int, tokens: int) -> None:
        """Keep the chunk and token totals BM25 scores need, without counting the table."""
        for key, delta in (("chunks", chunks), ("tokens", tokens)):
            self._set_meta(key, str(int(self._meta(key) or 0) + delta))

    def _meta(self, key: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else ""

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


class _Snapshot:
    """A read transaction for one search: every statement sees the same committed index.

    Inside a write transaction (already open on this connection) it adds nothing.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._began = False

    def __enter__(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
            self._began = True

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._began:
            self._db.execute("COMMIT")


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on an index, rolled back when the block raises."""

    def __init__(self, index: Bm25Index) -> None:
        self._index = index

    def __enter__(self) -> Bm25Index:
        self._index._lock.acquire()
        try:
            self._index._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._index._lock.release()
            raise
        return self._index

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._index._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._index._lock.release()


def _prepared(db: sqlite3.Connection) -> sqlite3.Connection:
    """``db`` with the schema in place; an index of another format is dropped first."""
    if _format(db) == str(INDEX_FORMAT):
        return db  # no write lock: a reader never waits here for a writer
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if row is None or row[0] != str(INDEX_FORMAT):
            # Format 4 and older had FTS5 tables (terms, term_docs) and a tokens column.
            for table in ("term_docs", "terms", "chunks", "doc_terms", "vocab"):
                db.execute(f"DROP TABLE IF EXISTS {table}")
            db.execute("DELETE FROM meta")
            db.execute("INSERT INTO meta (key, value) VALUES ('format', ?)", (str(INDEX_FORMAT),))
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return db


def _format(db: sqlite3.Connection) -> str | None:
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    except sqlite3.OperationalError:  # no meta table yet: a new file
        return None
    return row[0] if row else None


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _forward(tokens: Sequence[str], ids: Mapping[str, int]) -> tuple[bytes, bytes]:
    """One chunk's forward-index blobs: its distinct term ids and how often each occurs."""
    counts = Counter(tokens)
    term_ids = np.array([ids[t] for t in counts], dtype=TERM_ID)
    tfs = np.minimum(np.array(list(counts.values()), dtype=np.int64), MAX_TF).astype(TERM_FREQ)
    return term_ids.tobytes(), tfs.tobytes()


def _chunk(row: tuple) -> Chunk:  # type: ignore[type-arg]
    chunk_id, source, index, page, heading, text, sha, ocr = row
    return Chunk(
        chunk_id, source, index, text, page=page, heading=heading, file_sha256=sha, ocr=bool(ocr)
    )


def publish(
    settings: Settings,
    store: ChunkStore,
    wanted: Mapping[str, str],
    *,
    rebuild: bool = False,
    chunk_counts: Mapping[str, int] | None = None,
) -> Bm25Update:
    """Bump the store generation and bring the BM25 index in line with the store, at once.

    ``wanted`` maps every source the store holds to the sha256 of the file its
    chunks came from (the ingest state's ``done`` rows). Sources the index holds
    with another hash, or not at all, are read back from the store and re-indexed;
    sources not in ``wanted`` are dropped; ``rebuild`` re-reads every chunk instead
    (after the store was reset). ``chunk_counts`` (source: chunks, as the ingest state
    records them) lets the changed sources be read back by chunk id, much faster
    than by Chroma's source filter. The generation is bumped inside the index's write
    transaction, so a reader that sees the new generation waits for the matching
    index instead of rebuilding it; if the process dies before the commit, the
    index keeps its old stamp and the next reader or ingest repairs it.
    """
    _remove_folder_indexes(index_dir(settings))
    index = Bm25Index.open(index_path(settings))
    try:
        with index.transaction():
            generation = bump_generation(settings)
            if rebuild:
                written = index.replace_all(store.iter_chunks(), generation)
                return Bm25Update((), (), written, full=True)
            held = index.sources()
            stale = sorted(s for s, sha in wanted.items() if held.get(s) != sha)
            gone = sorted(set(held) - set(wanted))
            changes: dict[str, Sequence[Chunk]] = {s: [] for s in gone}
            counts = chunk_counts or {}
            changes.update((s, store.chunks_of(s, counts.get(s))) for s in stale)
            written = index.replace_sources(changes, generation)
            return Bm25Update(tuple(stale), tuple(gone), written, full=False)
    finally:
        index.close()


def rebuild_bm25_index(settings: Settings, store: ChunkStore | None = None) -> int:
    """Re-index every chunk in the store, stamped with the current generation; the chunk count.

    For tools and tests that write the store themselves; ingest uses :func:`publish`.
    """
    index = Bm25Index.open(index_path(settings))
    try:
        with index.transaction():
            # Read the generation *before* the chunks: if a writer commits meanwhile, the
            # stamp is older than the content and the next reader rebuilds, never the reverse.
            generation = read_generation(settings)
            return index.replace_all(_chunks_of(settings, store), generation)
    finally:
        index.close()


def load_bm25_index(
    settings: Settings, store: ChunkStore | None = None, *, current: Bm25Index | None = None
) -> Bm25Index:
    """The index for the current store generation, brought in line with the store when stale.

    A stale stamp usually means a writer is publishing right now: taking the write
    lock waits for it, and the stamp is checked again before changing anything.
    ``current``, an index a searcher already holds, is kept when it is still open on
    that very file: its postings are then updated, not loaded again (a second or so
    at 100k chunks).
    """
    path = index_path(settings)
    index = current if current is not None and current.is_open_on(path) else Bm25Index.open(path)
    if index.generation == read_generation(settings):
        return index
    with index.transaction():
        generation = read_generation(settings)
        if index.generation != generation:
            _catch_up(index, settings, store or _reader_store(settings), generation)
    return index


def _catch_up(index: Bm25Index, settings: Settings, store: ChunkStore, generation: str) -> None:
    """Bring a stale index in line with the store; call inside its transaction.

    Locally a stale index means a killed ingest or an older format: it is rebuilt.
    On a Chroma server it usually means the owner ingested on another machine,
    which happens after every ingest, so only the sources whose hash or chunk
    count differs from the store's are read again (at 20k chunks, 0.8 s of paging
    through the metadata instead of 3.7 s of rebuilding). A collection that was
    reset has a new id, and its index is rebuilt: re-chunked files keep their hashes.
    """
    # The generation was read before the store: if the owner writes meanwhile, the
    # stamp is older than the content and the next search catches up again.
    if not settings.chroma_host or index.store_id != store.collection_id:
        index.replace_all(store.iter_chunks(), generation)
    else:
        held, wanted = index.source_counts(), store.source_summary()
        changes: dict[str, Sequence[Chunk]] = {s: [] for s in held if s not in wanted}
        changes.update(
            (s, store.chunks_of(s, n)) for s, (sha, n) in wanted.items() if held.get(s) != (sha, n)
        )
        index.replace_sources(changes, generation)
    if settings.chroma_host:
        index.set_store_id(store.collection_id)


def _reader_store(settings: Settings) -> ChunkStore:
    # A reader must not create an empty, unowned collection on a server.
    return ChunkStore(settings, create=not settings.chroma_host)


def _remove_folder_indexes(root: Path) -> None:
    """Delete the saved-folder indexes (``idx-*``, ``CURRENT``) of the format before SQLite."""
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.is_dir() and child.name.startswith("idx-"):
            shutil.rmtree(child, ignore_errors=True)
        elif child.name == "CURRENT":
            child.unlink(missing_ok=True)


def _chunks_of(settings: Settings, store: ChunkStore | None) -> Iterator[Chunk]:
    return (store or ChunkStore(settings)).iter_chunks()
