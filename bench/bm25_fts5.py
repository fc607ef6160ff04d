"""The BM25 search of index format 4, kept to measure the current one against it.

Format 4 let SQLite FTS5 pick candidates: it scored every chunk sharing a word
with the question with FTS5's own ``bm25()``, kept the best ``max(4k, 100)``, and
scored those again with Lucene's BM25 in Python. :class:`Fts5Bm25` rebuilds that
index from the same chunks into its own file, so benchmarks can run both paths
interleaved on one corpus and compare speed and results.
"""

from __future__ import annotations

import heapq
import math
import sqlite3
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

from rag.bm25 import tokenize
from rag.store import Chunk

_K1, _B = 1.5, 0.75
_POOL_FACTOR, _POOL_MIN = 4, 100
_SCHEMA = """
CREATE TABLE chunks (rowid INTEGER PRIMARY KEY, id TEXT, source TEXT, idx INTEGER,
                     text TEXT, tokens TEXT, ntokens INTEGER);
CREATE VIRTUAL TABLE terms USING fts5 (tokens, content = '',
                                       tokenize = 'unicode61 remove_diacritics 0');
CREATE VIRTUAL TABLE term_docs USING fts5vocab (terms, 'row');
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
"""


class Fts5Bm25:
    """Format 4's search over its own SQLite file; build it once with :meth:`build`."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)

    @classmethod
    def build(cls, path: Path, chunks: Iterable[Chunk], stamp: str) -> Fts5Bm25:
        """The index of ``chunks`` in ``path``, reused when it was built with ``stamp``."""
        if path.exists():
            index = cls(path)
            row = index._db.execute("SELECT value FROM meta WHERE key = 'stamp'").fetchone()
            if row and row[0] == stamp:
                return index
            index._db.close()
            path.unlink()
        index = cls(path)
        index._db.executescript(_SCHEMA)
        index._db.execute("BEGIN")
        iterator, rowid = iter(chunks), 0
        while batch := list(islice(iterator, 2000)):
            rows = []
            for chunk in batch:
                rowid += 1
                tokens = tokenize(chunk.text)
                rows.append((rowid, chunk.id, chunk.source, chunk.index, chunk.text,
                             " ".join(tokens), len(tokens)))
            index._db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            index._db.executemany(
                "INSERT INTO terms (rowid, tokens) VALUES (?, ?)", [(r[0], r[5]) for r in rows]
            )
        count, total = index._db.execute(
            "SELECT count(*), coalesce(sum(ntokens), 0) FROM chunks"
        ).fetchone()
        index._db.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("chunks", str(count)), ("tokens", str(total)), ("stamp", stamp)],
        )
        index._db.execute("COMMIT")
        return index

    def search(self, query: str, k: int) -> list[tuple[Chunk, float]]:
        """Format 4's ``Bm25Index.search``: FTS5 candidates, the best rescored, best first."""
        query_tokens = tokenize(query)
        tokens = list(dict.fromkeys(query_tokens))
        if not tokens or k <= 0:
            return []
        match = " OR ".join(f'"{t}"' for t in tokens)
        matches = self._db.execute(
            "SELECT bm25(terms), rowid FROM terms WHERE terms MATCH ?", (match,)
        ).fetchall()
        pool = [r for _, r in heapq.nsmallest(max(k * _POOL_FACTOR, _POOL_MIN), matches)]
        rows = self._db.execute(
            "SELECT id, source, idx, text, ntokens, tokens FROM chunks WHERE rowid IN"
            f" ({','.join('?' * len(pool))})",
            pool,
        ).fetchall()
        df = {t: self._df(t) for t in tokens} if rows else {}
        count, total = (int(self._meta(key)) for key in ("chunks", "tokens"))
        scored = [
            (_lucene(row[5].split(), row[4], query_tokens, df, count, total), row) for row in rows
        ]
        scored.sort(key=lambda pair: (-pair[0], pair[1][0]))
        return [
            (Chunk(row[0], row[1], row[2], row[3]), score) for score, row in scored[:k] if score > 0
        ]

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def _df(self, token: str) -> int:
        row = self._db.execute("SELECT doc FROM term_docs WHERE term = ?", (token,)).fetchone()
        return int(row[0]) if row else 0

    def _meta(self, key: str) -> str:
        return str(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])


def _lucene(
    doc: list[str], length: int, query: list[str], df: dict[str, int], count: int, total: int
) -> float:
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
