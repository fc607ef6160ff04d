"""BM25 keyword index over every chunk in the store (the lexical half of hybrid search).

Dense vectors find passages that *mean* the same as a question; BM25 finds the
exact words: setting names, error messages, product codes. The index is SQLite's
FTS5 full-text index, ranked with its built-in ``bm25()``: it ships inside
Python's ``sqlite3``, updates in place, and every change is one transaction, so
a reader sees the index before a change or after it, never half of one. This
module decides how text becomes tokens and keeps the index in step with the store.

The index lives in ``DATA_DIR/bm25/index.sqlite3``. Each chunk's id, source,
page, heading and text are kept beside its tokens, so a BM25 hit becomes a
:class:`~rag.store.Chunk` without another Chroma round-trip, and the file is
stamped with the store generation it matches.

Ingest calls :func:`publish` once at the end of a run that changed the store: it
bumps the generation and re-indexes only the sources whose file hash differs
from what the index holds (and drops the sources that are gone), in one
transaction. Readers call :func:`load_bm25_index`, which rebuilds from the store
only when the stamp does not match (an ingest that was killed, or an older index).

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

import heapq
import math
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from rag.settings import Settings
from rag.store import Chunk, ChunkStore, bump_generation, read_generation

# Bump when tokenisation or the schema changes: an index of another format is rebuilt.
INDEX_FORMAT = 4
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
    tokens TEXT NOT NULL,
    ntokens INTEGER NOT NULL,
    ocr INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS chunks_by_source ON chunks (source);
-- Tokens come from tokenize(), joined by spaces: FTS5 only splits them again,
-- so documents and queries are cut by the same rule. Contentless: the tokens are
-- kept in chunks, which is also what deleting a row from the index needs.
CREATE VIRTUAL TABLE IF NOT EXISTS terms USING fts5 (
    tokens, content = '', tokenize = 'unicode61 remove_diacritics 0'
);
-- Document frequency per term, for the scores computed in Python (see search).
CREATE VIRTUAL TABLE IF NOT EXISTS term_docs USING fts5vocab (terms, 'row');
"""

# FTS5's own bm25() picks the candidates; they are scored again below (see search).
_MATCHES = "SELECT bm25(terms), rowid FROM terms WHERE terms MATCH ?"
_ROWS = """
SELECT id, source, idx, page, heading, text, file_sha256, ntokens, tokens, ocr
FROM chunks WHERE rowid IN ({marks})
"""
# Lucene's BM25, as bm25s computed it before: FTS5's bm25() has k1=1.2 and an idf that is
# zero for a word in half the chunks, which ranked the QA sets' answers lower.
_K1 = 1.5
_B = 0.75
# Candidates per wanted hit: the two scores agree closely, so the true top k is among them.
_POOL_FACTOR = 4
_POOL_MIN = 100


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

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        # One statement at a time on the shared connection; re-entered inside a transaction.
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: Path) -> Bm25Index:
        """The index in ``path``, created empty when missing; one of another format is dropped."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        # WAL: readers keep searching the last committed index while a writer updates it.
        db.execute("PRAGMA journal_mode=WAL")
        return cls(_prepared(db))

    @classmethod
    def from_chunks(cls, chunks: Iterable[Chunk], generation: str) -> Bm25Index:
        """An in-memory index of ``chunks`` (tests, benchmarks, one-off searches)."""
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        index = cls(_prepared(db))
        with index.transaction():
            index.replace_all(chunks, generation)
        return index

    @property
    def generation(self) -> str:
        """The store generation this index was last brought in line with ("" if never)."""
        return self._meta("generation")

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def search(self, query: str, k: int) -> list[tuple[Chunk, float]]:
        """The ``k`` best chunks for ``query`` with their BM25 scores, best first.

        Chunks sharing no word with the query are never returned, so fewer than
        ``k`` results (or none) are normal.
        """
        # A word the question repeats counts each time, as it did with bm25s.
        query_tokens = tokenize(query)
        tokens = list(dict.fromkeys(query_tokens))
        if not tokens or k <= 0:
            return []
        # Tokens hold only letters and digits, so quoting each one is a safe FTS5 phrase.
        match = " OR ".join(f'"{t}"' for t in tokens)
        with self._lock:
            # Scoring every match in FTS5 and keeping the best in Python is several times
            # faster than FTS5's ORDER BY bm25() LIMIT, which also reads rows it drops.
            matches = self._db.execute(_MATCHES, (match,)).fetchall()
            pool = [r for _, r in heapq.nsmallest(max(k * _POOL_FACTOR, _POOL_MIN), matches)]
            rows = self._db.execute(_ROWS.format(marks=",".join("?" * len(pool))), pool)
            rows = rows.fetchall()
            df = {t: self._doc_frequency(t) for t in tokens} if rows else {}
            count, total = self._sizes()
        scored = [
            (_lucene_score(row[8].split(), row[7], query_tokens, df, count, total), row)
            for row in rows
        ]
        # Ties go by chunk id, so the order does not depend on when each chunk was indexed.
        scored.sort(key=lambda pair: (-pair[0], pair[1][0]))
        return [(_chunk(row), score) for score, row in scored[:k] if score > 0]

    def _doc_frequency(self, token: str) -> int:
        row = self._db.execute("SELECT doc FROM term_docs WHERE term = ?", (token,)).fetchone()
        return int(row[0]) if row else 0

    def _sizes(self) -> tuple[int, int]:
        """(chunks, tokens) in the index, kept in meta by every write."""
        rows = dict(self._db.execute(
            "SELECT key, value FROM meta WHERE key IN ('chunks', 'tokens')"
        ).fetchall())
        return int(rows.get("chunks", 0)), int(rows.get("tokens", 0))

    def sources(self) -> dict[str, str]:
        """``{source: file sha256}`` of every source the index holds chunks of."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT source, file_sha256 FROM chunks").fetchall()
        # A source whose chunks disagree on the hash (never written so) maps to "": re-indexed.
        found: dict[str, str] = {}
        for source, sha in rows:
            found[source] = sha if source not in found else ""
        return found

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
        self._db.execute("INSERT INTO terms (terms) VALUES ('delete-all')")
        self._db.execute("DELETE FROM chunks")
        written = 0
        iterator = iter(chunks)
        while batch := list(islice(iterator, _INSERT_BATCH)):
            written += self._insert(batch)
        self._stamp(generation)
        return written

    # --- inside a transaction ---------------------------------------------------

    def _drop_source(self, source: str) -> None:
        # A contentless FTS5 table forgets a row when given the very tokens it indexed.
        self._db.execute(
            "INSERT INTO terms (terms, rowid, tokens)"
            " SELECT 'delete', rowid, tokens FROM chunks WHERE source = ?",
            (source,),
        )
        self._db.execute("DELETE FROM chunks WHERE source = ?", (source,))

    def _insert(self, chunks: Sequence[Chunk]) -> int:
        # Rowids are numbered here so both tables take one executemany each.
        (last,) = self._db.execute("SELECT coalesce(max(rowid), 0) FROM chunks").fetchone()
        tokens = [tokenize(indexed_text(c)) for c in chunks]
        rows = [
            (last + n, c.id, c.source, c.index, c.page, c.heading, c.text, c.file_sha256,
             " ".join(t), len(t), int(c.ocr))
            for n, (c, t) in enumerate(zip(chunks, tokens, strict=True), start=1)
        ]
        self._db.executemany(
            "INSERT INTO chunks (rowid, id, source, idx, page, heading, text, file_sha256,"
            " tokens, ntokens, ocr) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self._db.executemany(
            "INSERT INTO terms (rowid, tokens) VALUES (?, ?)", [(r[0], r[8]) for r in rows]
        )
        return len(rows)

    def _stamp(self, generation: str) -> None:
        """Record the generation and the sizes BM25 scores need, at the end of a write."""
        count, total = self._db.execute(
            "SELECT count(*), coalesce(sum(ntokens), 0) FROM chunks"
        ).fetchone()
        self._set_meta("chunks", str(count))
        self._set_meta("tokens", str(total))
        self._set_meta("generation", generation)

    def _meta(self, key: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else ""

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


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
            for table in ("term_docs", "terms", "chunks"):
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


def _lucene_score(
    doc: list[str],
    length: int,
    query: Sequence[str],
    df: Mapping[str, int],
    count: int,
    total: int,
) -> float:
    """Lucene's BM25 of one chunk (its ``doc`` tokens) for the ``query`` tokens.

    ``df`` holds each query token's document frequency; ``count`` and ``total`` are
    the index's chunks and tokens (for the average length).
    """
    if not doc or not count:
        return 0.0
    norm = _K1 * (1 - _B + _B * length / (total / count))
    score = 0.0
    for token in query:
        n = df[token]
        tf = doc.count(token)
        if tf:
            score += math.log(1 + (count - n + 0.5) / (n + 0.5)) * tf / (tf + norm)
    return score


def _chunk(row: tuple) -> Chunk:  # type: ignore[type-arg]
    chunk_id, source, index, page, heading, text, sha = row[:7]
    return Chunk(
        chunk_id, source, index, text, page=page, heading=heading, file_sha256=sha, ocr=bool(row[9])
    )


def publish(
    settings: Settings,
    store: ChunkStore,
    wanted: Mapping[str, str],
    *,
    rebuild: bool = False,
) -> Bm25Update:
    """Bump the store generation and bring the BM25 index in line with the store, at once.

    ``wanted`` maps every source the store holds to the sha256 of the file its
    chunks came from (the ingest state's ``done`` rows). Sources the index holds
    with another hash, or not at all, are read back from the store and re-indexed;
    sources not in ``wanted`` are dropped; ``rebuild`` re-reads every chunk instead
    (after the store was reset). The generation is bumped inside the index's write
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
            changes.update((s, store.chunks_of(s)) for s in stale)
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


def load_bm25_index(settings: Settings, store: ChunkStore | None = None) -> Bm25Index:
    """The index for the current store generation, rebuilt from the store when it is stale.

    A stale stamp usually means a writer is publishing right now: taking the write
    lock waits for it, and the stamp is checked again before rebuilding anything.
    """
    index = Bm25Index.open(index_path(settings))
    if index.generation == read_generation(settings):
        return index
    with index.transaction():
        generation = read_generation(settings)
        if index.generation != generation:
            index.replace_all(_chunks_of(settings, store), generation)
    return index


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
