"""Lucene BM25 over an in-memory inverted index: numpy arrays of one index snapshot.

:class:`rag.bm25.Bm25Index` keeps, for every chunk, the ids of its terms and how
often each occurs (a forward index, two small blobs a chunk). Searching the SQLite
rows directly means touching every chunk that shares a word with the question in
Python: 10,000-25,000 chunks for a six-word question at 100k chunks, 35-65 ms.
:class:`Postings` turns one snapshot of those rows into term-major arrays once,
so scoring a question is a handful of numpy operations over the postings of its
words, about a millisecond at 100k chunks.

The scores are bit for bit those of the plain definition (one chunk at a time,
summing over the question's words; ``tests/test_bm25.py`` checks it): the same
float64 operations in the same order per chunk, so ranking and ties are unchanged.
Build one with :meth:`Postings.from_rows`:

>>> p = Postings.from_rows([(7, 3, _ids(0, 1), _tfs(2, 1)), (9, 2, _ids(1), _tfs(2))])
>>> [(int(r), round(float(s), 3)) for r, s in zip(*p.top([1, 0], 5))]
[(7, 0.439), (9, 0.111)]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# Lucene's BM25, as bm25s computed it before: FTS5's bm25() has k1=1.2 and an idf that is
# zero for a word in half the chunks, which ranked the QA sets' answers lower.
K1 = 1.5
B = 0.75
# Blob layouts of the forward index (little-endian, whatever the machine).
TERM_ID = np.dtype("<i4")
TERM_FREQ = np.dtype("<u2")
# A word repeated more often than this in one chunk counts this often (uint16 blobs).
MAX_TF = int(np.iinfo(TERM_FREQ).max)

Row = tuple[int, int, bytes, bytes]
"""One chunk of the forward index: rowid, token count, term ids blob, term counts blob."""


def idf(count: int, df: int) -> float:
    """Lucene's idf of a word found in ``df`` of ``count`` chunks (always above zero)."""
    return math.log(1 + (count - df + 0.5) / (df + 0.5))


@dataclass(frozen=True)
class Postings:
    """Term-major postings of one index snapshot: which chunks hold each term, how often.

    ``indptr[t]:indptr[t + 1]`` slices ``docs`` (positions into ``rowids``) and
    ``tfs`` for term id ``t``, positions ascending.
    """

    rowids: np.ndarray  # int64, position -> chunk rowid
    norms: np.ndarray  # float64, position -> K1 * (1 - B + B * length / average length)
    indptr: np.ndarray  # int64, term id -> first posting
    docs: np.ndarray  # int32, posting -> position
    tfs: np.ndarray  # uint16, posting -> occurrences in that chunk
    total: int  # tokens in the snapshot

    @classmethod
    def from_rows(cls, rows: Iterable[Row]) -> Postings:
        """The postings of forward-index rows (any order; each chunk's term ids distinct)."""
        rows = list(rows)
        rowids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        lengths = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        terms = np.frombuffer(b"".join(r[2] for r in rows), dtype=TERM_ID)
        tfs = np.frombuffer(b"".join(r[3] for r in rows), dtype=TERM_FREQ)
        per_doc = np.fromiter((len(r[2]) // TERM_ID.itemsize for r in rows), np.int64, len(rows))
        docs = np.repeat(np.arange(len(rows), dtype=np.int32), per_doc)
        # Stable: within one term the postings keep the ascending positions of ``docs``.
        order = np.argsort(terms, kind="stable")
        vocabulary = int(terms.max()) + 1 if len(terms) else 0
        indptr = np.zeros(vocabulary + 1, dtype=np.int64)
        np.cumsum(np.bincount(terms, minlength=vocabulary), out=indptr[1:])
        total = int(lengths.sum())
        count = len(rows)
        # The plain definition's operations, elementwise, so each chunk's norm is identical.
        norms = K1 * (1 - B + B * lengths / (total / count)) if count else lengths.astype(float)
        return cls(rowids, norms, indptr, docs[order], tfs[order], total)

    @property
    def count(self) -> int:
        """Chunks in the snapshot."""
        return len(self.rowids)

    def df(self, term: int) -> int:
        """How many chunks hold term id ``term``."""
        if term < 0 or term + 1 >= len(self.indptr):
            return 0
        return int(self.indptr[term + 1] - self.indptr[term])

    def scores(self, query: Sequence[int]) -> np.ndarray:
        """Every chunk's BM25 score for ``query`` term ids, by position (0: no shared word).

        ``query`` is in the question's order, a repeated word each time: sums are
        added in that order, as the plain definition adds them.
        """
        scores = np.zeros(self.count, dtype=np.float64)
        for term in query:
            lo, hi = self._slice(term)
            if lo == hi:
                continue
            docs = self.docs[lo:hi]
            tf = self.tfs[lo:hi].astype(np.float64)
            # (idf * tf) / (tf + norm): the plain definition's order of operations; positions in
            # one term's slice are distinct, so the fancy-index += adds each once.
            scores[docs] += idf(self.count, hi - lo) * tf / (tf + self.norms[docs])
        return scores

    def top(
        self, query: Sequence[int], k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rowids, scores) of at least the ``k`` best chunks, unordered, scores above 0.

        Every chunk tied with the ``k``-th best score is included, so the caller can
        break ties by chunk id and keep exactly ``k``. ``allowed`` (rowids) limits
        the result to those chunks.
        """
        scores = self.scores(query)
        if allowed is not None:
            scores[~np.isin(self.rowids, allowed)] = 0.0
        matched = np.flatnonzero(scores > 0)
        if len(matched) > k > 0:
            kth = np.partition(scores[matched], len(matched) - k)[len(matched) - k]
            matched = matched[scores[matched] >= kth]
        elif k <= 0:
            matched = matched[:0]
        return self.rowids[matched], scores[matched]

    def _slice(self, term: int) -> tuple[int, int]:
        if term < 0 or term + 1 >= len(self.indptr):
            return 0, 0
        return int(self.indptr[term]), int(self.indptr[term + 1])


def _ids(*ids: int) -> bytes:
    return np.array(ids, dtype=TERM_ID).tobytes()


def _tfs(*tfs: int) -> bytes:
    return np.array(tfs, dtype=TERM_FREQ).tobytes()
