"""BM25 keyword index over every chunk in the store (the lexical half of hybrid search).

Dense vectors find passages that *mean* the same as a question; BM25 finds the
exact words: setting names, error messages, product codes. The scoring is
``bm25s`` (a maintained, sparse-matrix BM25); this module only decides how text
becomes tokens and how the index is kept next to the store.

The index is persisted under ``DATA_DIR/bm25`` with the store generation it was
built from, plus each chunk's id, source, page, heading and text, so a BM25 hit
becomes a :class:`~rag.store.Chunk` without another Chroma round-trip.

Writers call :func:`rebuild_bm25_index` after a changing ingest; readers call
:func:`load_bm25_index`, which rebuilds only when the saved stamp does not
match the store (a crashed or older ingest).

>>> index = Bm25Index(
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

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import bm25s
import numpy as np

from rag.settings import Settings
from rag.store import Chunk, ChunkStore, read_generation

# Bump when tokenisation or the file layout changes: older indexes are rebuilt.
INDEX_FORMAT = 1
# Runs of 2+ letters/digits. Underscores split, so RAG_DOCS_DIR also matches "docs dir".
_TOKEN = re.compile(r"[^\W_]{2,}")
_STOPWORDS = frozenset(bm25s.stopwords.STOPWORDS_EN)
_CURRENT = "CURRENT"
_META = "meta.json"
_CHUNKS = "chunks.json"
_UNFINISHED_MAX_AGE_S = 600.0


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` without English stopwords (corpus and queries alike)."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS]


def index_dir(settings: Settings) -> Path:
    """The folder holding saved BM25 indexes (``DATA_DIR/bm25``)."""
    return settings.data_dir / "bm25"


class Bm25Index:
    """BM25 over a fixed list of chunks, stamped with the store generation it was built from."""

    def __init__(
        self, chunks: Sequence[Chunk], generation: str, bm25: bm25s.BM25 | None = None
    ) -> None:
        self.chunks = list(chunks)
        self.generation = generation
        self._bm25 = bm25
        corpus = [tokenize(c.text) for c in self.chunks] if bm25 is None else []
        # bm25s raises on a corpus without a single word (only stopwords and
        # one-letter words): such a store has no BM25 hits, and dense search alone.
        if any(corpus):
            self._bm25 = bm25s.BM25()
            # Indexing lists of strings lets bm25s build its own vocabulary.
            self._bm25.index(corpus, show_progress=False)

    def __len__(self) -> int:
        return len(self.chunks)

    def search(self, query: str, k: int) -> list[tuple[Chunk, float]]:
        """The ``k`` best chunks for ``query`` with their BM25 scores, best first.

        Chunks sharing no word with the query are never returned, so fewer than
        ``k`` results (or none) are normal.
        """
        tokens = tokenize(query)
        if self._bm25 is None or not tokens or k <= 0:
            return []
        vocab = self._bm25.vocab_dict
        ids = [vocab[t] for t in tokens if t in vocab]
        if not ids:
            return []
        scores = self._bm25.get_scores_from_ids(ids)
        n = min(k, len(scores))
        top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.chunks[i], float(scores[i])) for i in top if scores[i] > 0]

    def save(self, settings: Settings) -> Path:
        """Write the index under ``DATA_DIR/bm25`` and make it the current one atomically.

        Each save goes to a fresh folder and then ``CURRENT`` is replaced, so a
        reader loading at the same time sees either the old or the new index,
        never half of one.
        """
        root = index_dir(settings)
        root.mkdir(parents=True, exist_ok=True)
        folder = root / f"idx-{uuid.uuid4().hex[:12]}"
        folder.mkdir()
        if self._bm25 is not None:
            self._bm25.save(str(folder), show_progress=False)
        records = [[c.id, c.source, c.index, c.page, c.heading, c.text, c.ocr] for c in self.chunks]
        (folder / _CHUNKS).write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        meta = {
            "format": INDEX_FORMAT,
            "generation": self.generation,
            "count": len(self.chunks),
            "bm25": self._bm25 is not None,
        }
        # meta.json last: a folder without it is an unfinished save and is never loaded.
        (folder / _META).write_text(json.dumps(meta), encoding="utf-8")
        previous = _current_folder(root)
        tmp = root / f"{_CURRENT}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(folder.name)
        os.replace(tmp, root / _CURRENT)
        _remove_old_folders(root, keep={folder.name, previous.name if previous else ""})
        return folder

    @classmethod
    def load(cls, settings: Settings) -> Bm25Index | None:
        """The saved current index, or None when there is none or it is unreadable."""
        folder = _current_folder(index_dir(settings))
        if folder is None:
            return None
        try:
            meta = json.loads((folder / _META).read_text(encoding="utf-8"))
            if meta.get("format") != INDEX_FORMAT:
                return None
            records = json.loads((folder / _CHUNKS).read_text(encoding="utf-8"))
            bm25 = (
                bm25s.BM25.load(str(folder), show_progress=False, verbosity=0)
                if meta.get("bm25", bool(records))
                else None
            )
        except (OSError, ValueError):
            # Removed by a concurrent save, or damaged: the caller rebuilds.
            return None
        # Records saved before OCR existed have no seventh field: not OCR'd.
        chunks = [
            Chunk(id=i, source=s, index=n, page=p, heading=h, text=t, ocr=bool(rest and rest[0]))
            for i, s, n, p, h, t, *rest in records
        ]
        return cls(chunks, str(meta.get("generation", "")), bm25)


def rebuild_bm25_index(settings: Settings, store: ChunkStore | None = None) -> int:
    """Rebuild the BM25 index from every chunk in the store and save it; returns the chunk count.

    Called by ingest once at the end of a run that changed the store (after
    ``bump_generation``), so the saved stamp matches the generation readers see.
    """
    return len(_build_and_save(settings, store))


def _build_and_save(settings: Settings, store: ChunkStore | None) -> Bm25Index:
    # Read the generation *before* the chunks: if a writer commits meanwhile, the
    # stamp is older than the content and the next reader rebuilds, never the reverse.
    generation = read_generation(settings)
    store = store or ChunkStore(settings)
    index = Bm25Index(list(store.iter_chunks()), generation)
    index.save(settings)
    return index


def load_bm25_index(settings: Settings, store: ChunkStore | None = None) -> Bm25Index:
    """The saved index when it matches the store generation, else a fresh rebuild (saved too)."""
    generation = read_generation(settings)
    index = Bm25Index.load(settings)
    if index is not None and index.generation == generation:
        return index
    return _build_and_save(settings, store)


def _current_folder(root: Path) -> Path | None:
    try:
        name = (root / _CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    folder = root / name
    return folder if name and folder.is_dir() else None


def _remove_old_folders(root: Path, keep: Iterable[str]) -> None:
    # The previous index stays one more round for readers that just read CURRENT,
    # and a folder without meta.json may be another process's save in progress.
    keep = set(keep)
    now = time.time()
    for child in root.iterdir():
        if not child.is_dir() or not child.name.startswith("idx-") or child.name in keep:
            continue
        if (child / _META).exists() or now - child.stat().st_mtime > _UNFINISHED_MAX_AGE_S:
            shutil.rmtree(child, ignore_errors=True)
