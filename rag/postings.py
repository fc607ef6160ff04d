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

    rowids: np.ndarray  # int64, position -> chunk rowid, ascending
    lengths: np.ndarray  # int64, position -> tokens in the chunk
    norms: np.ndarray  # float64, position -> K1 * (1 - B + B * length / average length)
    indptr: np.ndarray  # int64, term id -> first posting
    docs: np.ndarray  # int32, posting -> position
    tfs: np.ndarray  # uint16, posting -> occurrences in that chunk
    total: int  # tokens in the snapshot

    @classmethod
    def from_rows(cls, rows: Iterable[Row]) -> Postings:
        """The postings of forward-index rows (rowids ascending; each chunk's term ids distinct)."""
        rowids, lengths, terms, docs, tfs = _columns(list(rows), first_position=0)
        # Stable: within one term the postings keep the ascending positions of ``docs``.
        order = np.argsort(terms, kind="stable")
        vocabulary = int(terms.max()) + 1 if len(terms) else 0
        return cls._of(rowids, lengths, _offsets(terms, vocabulary), docs[order], tfs[order])

    def updated(self, removed: np.ndarray, added: Sequence[Row]) -> Postings:
        """These postings without the chunks ``removed`` (rowids), with ``added`` rows.

        ``added`` rowids must be above every rowid here (the index never reuses one).
        Costs a few passes over the arrays, not the sort of :meth:`from_rows`.
        """
        rowids, lengths, indptr, docs, tfs = self.rowids, self.lengths, self.indptr, self.docs, self.tfs
        keep = np.isin(rowids, removed, invert=True)
        if not keep.all():
            position = np.cumsum(keep) - 1  # old position -> new position
            kept = keep[docs]
            indptr = np.concatenate([[0], np.cumsum(kept)])[indptr]
            docs, tfs = position[docs[kept]].astype(np.int32), tfs[kept]
            rowids, lengths = rowids[keep], lengths[keep]
        if added:
            new_rowids, new_lengths, terms, new_docs, new_tfs = _columns(
                list(added), first_position=len(rowids)
            )
            order = np.argsort(terms, kind="stable")
            terms, new_docs, new_tfs = terms[order], new_docs[order], new_tfs[order]
            vocabulary = max(len(indptr) - 1, int(terms[-1]) + 1)
            indptr = np.concatenate([indptr, np.full(vocabulary + 1 - len(indptr), indptr[-1])])
            # New chunks sit after every old one, so within a term they go last.
            at = indptr[terms + 1]
            docs, tfs = np.insert(docs, at, new_docs), np.insert(tfs, at, new_tfs)
            indptr = indptr + _offsets(terms, vocabulary)
            rowids = np.concatenate([rowids, new_rowids])
            lengths = np.concatenate([lengths, new_lengths])
        return self._of(rowids, lengths, indptr, docs, tfs)

    @classmethod
    def _of(
        cls, rowids: np.ndarray, lengths: np.ndarray, indptr: np.ndarray, docs: np.ndarray,
        tfs: np.ndarray,
    ) -> Postings:
        """Postings from term-sorted columns, with the chunk norms of their average length."""
        total = int(lengths.sum())
        count = len(rowids)
        # The plain definition's operations, elementwise, so each chunk's norm is identical.
        norms = K1 * (1 - B + B * lengths / (total / count)) if count else lengths.astype(float)
        return cls(rowids, lengths, norms, indptr, docs, tfs, total)

    @property
    def count(self) -> int:
        """Chunks in the snapshot."""
        return len(self.rowids)

    def df(self, term: int) -> int:
        """How many chunks hold term id ``term``."""
        lo, hi = self._slice(term)
        return hi - lo

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


def _columns(
    rows: list[Row], first_position: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """rowids, lengths (per chunk) and terms, positions, counts (per posting) of ``rows``."""
    rowids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    lengths = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
    terms = np.frombuffer(b"".join(r[2] for r in rows), dtype=TERM_ID).astype(np.int64)
    tfs = np.frombuffer(b"".join(r[3] for r in rows), dtype=TERM_FREQ)
    per_doc = np.fromiter((len(r[2]) // TERM_ID.itemsize for r in rows), np.int64, len(rows))
    positions = np.arange(first_position, first_position + len(rows), dtype=np.int32)
    return rowids, lengths, terms, np.repeat(positions, per_doc), tfs


def _offsets(terms: np.ndarray, vocabulary: int) -> np.ndarray:
    """Where each term id's postings start (and, last, end) when ``terms`` are sorted."""
    indptr = np.zeros(vocabulary + 1, dtype=np.int64)
    np.cumsum(np.bincount(terms, minlength=vocabulary), out=indptr[1:])
    return indptr


def _ids(*ids: int) -> bytes:
    return np.array(ids, dtype=TERM_ID).tobytes()


def _tfs(*tfs: int) -> bytes:
    return np.array(tfs, dtype=TERM_FREQ).tobytes()
