"""The chunk store: one Chroma collection holding chunk text, metadata and vectors.

The same code talks to an embedded, persistent Chroma (``DATA_DIR/chroma``) or,
when ``CHROMA_HOST`` is set, to a Chroma server. Vectors are always computed by
us (:mod:`rag.embed`) and passed in: Chroma's default embedding function would
try to download a model.

Chroma allows one writing process per store. Writers take the ingest lock
(:mod:`ingest.lock`); after each committed change they bump the *generation*
so that long-lived readers (the chat app) know to reopen and see fresh vectors
instead of Chroma's cached index. The generation lives with the store: a file in
the data folder for the local store, the collection's metadata on a Chroma server
(so that readers on other machines see it too; one metadata read costs about as
much as one query, ~2.5 ms on loopback).

>>> import tempfile
>>> store = ChunkStore(Settings(_env_file=None, data_dir=tempfile.mkdtemp()))
>>> vector = np.eye(1, 384, dtype=np.float32)
>>> store.add([Chunk("guide.md#0", "guide.md", 0, "Run make chat.", heading="Set-up")], vector)
>>> store.count(), [(c.id, c.heading, round(sim, 3)) for c, sim in store.query(vector[0], k=1)]
(1, [('guide.md#0', 'Set-up', 1.0)])
"""

from __future__ import annotations

import functools
import os
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from rag.errors import NoDocuments, RagError
from rag.settings import Settings

# Bump when Chunk.embedded_text changes: stores embedded the old way are re-embedded.
EMBEDDED_TEXT_VERSION = 1
# Chroma rejects batches above its max_batch_size (5461 for the embedded store).
_WRITE_BATCH = 4000
# get(limit=...) above a few thousand ids hits SQLite's variable limit.
_READ_PAGE = 2000
# The collection metadata key holding the store generation on a Chroma server.
_GENERATION_KEY = "rag_generation"


@dataclass(frozen=True)
class Chunk:
    """A piece of one source file, the unit that is embedded, stored and retrieved."""

    id: str  # stable: "<source>#<index>"
    source: str  # path relative to the docs folder, with "/" separators
    index: int  # position of the chunk within its source
    text: str
    page: int | None = None  # 1-based page for paged formats (PDF, image), else None
    heading: str | None = None  # nearest heading above the chunk, if any
    file_sha256: str = ""  # content hash of the source file the chunk came from
    ocr: bool = False  # read by OCR from a scanned page or an image

    def embedded_text(self) -> str:
        """What the embedder reads for this chunk: its file's title and heading, then its text.

        A passage rarely repeats the name of what it describes ("It listens on
        11434" under "Ollama" in configuration.md), so its place is embedded with
        it. On the QA sets this raised hybrid recall@1 from 0.806 to 0.851 over
        docs/ (67 questions) and cost one question of 50 on the test corpus (0.980
        to 0.960). BM25 indexes the bare text: headings there lowered its recall@1.
        """
        title = PurePosixPath(self.source).stem.replace("-", " ").replace("_", " ")
        place = f"{title} - {self.heading}" if self.heading else title
        return f"{place}\n{self.text}"

    def metadata(self) -> dict[str, str | int | bool]:
        """The Chroma metadata of this chunk: source, index, hash; page, heading, ocr if set."""
        # Chroma metadata values cannot be None, so absent fields are omitted.
        meta: dict[str, str | int | bool] = {
            "source": self.source,
            "index": self.index,
            "file_sha256": self.file_sha256,
        }
        if self.page is not None:
            meta["page"] = self.page
        if self.heading:
            meta["heading"] = self.heading
        if self.ocr:
            meta["ocr"] = True
        return meta

    @classmethod
    def from_record(cls, chunk_id: str, text: str, meta: dict[str, Any]) -> Chunk:
        """The chunk back from a Chroma record: its id, document text and :meth:`metadata`."""
        page = meta.get("page")
        return cls(
            id=chunk_id,
            source=str(meta.get("source", "")),
            index=int(meta.get("index", 0)),
            text=text or "",
            page=int(page) if page is not None else None,
            heading=meta.get("heading") or None,
            file_sha256=str(meta.get("file_sha256", "")),
            ocr=bool(meta.get("ocr", False)),
        )


def chunk_id(source: str, index: int) -> str:
    """The stable id of the ``index``-th chunk of ``source``."""
    return f"{source}#{index}"


class ChunkStore:
    """A Chroma collection of :class:`Chunk` records with cosine-distance vectors."""

    def __init__(
        self,
        settings: Settings,
        *,
        stamp: Mapping[str, str] | None = None,
        create: bool = True,
    ) -> None:
        """Open the collection ``settings.collection``.

        ``stamp``: metadata a collection created here starts with (and keeps through
        :meth:`reset`); Chroma creates a collection atomically, so of two writers
        creating one at once, only the first one's stamp is kept. ``create=False``
        (readers) raises :class:`NoDocuments` instead of creating a missing collection.
        """
        self.settings = settings
        self._stamp = dict(stamp or {})
        self._client = _open_client(settings)
        if create:
            self._collection = self._open_or_create()
            return
        from chromadb.errors import NotFoundError

        try:
            self._collection = self._client.get_collection(
                name=settings.collection, embedding_function=None
            )
        except NotFoundError:
            raise NoDocuments(str(settings.docs_dir)) from None

    def _open_or_create(self) -> Any:
        return self._client.get_or_create_collection(
            name=self.settings.collection,
            embedding_function=None,
            configuration={"hnsw": {"space": "cosine"}},
            metadata=self._stamp or None,
        )

    @property
    def location(self) -> str:
        """Where the store lives, for messages: a folder or ``host:port``."""
        s = self.settings
        return f"http://{s.chroma_host}:{s.chroma_port}" if s.chroma_host else str(s.chroma_dir)

    def count(self) -> int:
        """Number of chunks in the store."""
        return self._collection.count()

    @property
    def collection_id(self) -> str:
        """Chroma's id of the collection: a reset (drop and recreate) gives a new one."""
        return str(self._collection.id)

    def source_summary(self, page_size: int = _READ_PAGE) -> dict[str, tuple[str, int]]:
        """``{source: (file sha256, chunk count)}`` over the whole store, from metadata only.

        A source whose chunks disagree on the hash (half rewritten) has hash ``""``.
        """
        found: dict[str, tuple[str, int]] = {}
        offset = 0
        while True:
            res = self._collection.get(include=["metadatas"], limit=page_size, offset=offset)
            if not res["ids"]:
                return found
            for meta in res["metadatas"]:
                source, sha = str(meta.get("source", "")), str(meta.get("file_sha256", ""))
                held, count = found.get(source, (sha, 0))
                found[source] = (held if held == sha else "", count + 1)
            offset += len(res["ids"])

    def metadata(self) -> dict[str, Any]:
        """The collection's metadata as the store holds it now (read again, not cached)."""
        fresh = self._client.get_collection(name=self.settings.collection, embedding_function=None)
        return dict(fresh.metadata or {})

    def update_metadata(self, changes: Mapping[str, str]) -> None:
        """Set these keys of the collection's metadata, keeping the others.

        Chroma's ``modify`` replaces the whole metadata, so it is read and merged first.
        """
        self._collection.modify(metadata={**self.metadata(), **changes})

    def add(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Write chunks with their vectors; an existing id is overwritten, never duplicated."""
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        for start in range(0, len(chunks), _WRITE_BATCH):
            part = chunks[start : start + _WRITE_BATCH]
            self._collection.upsert(
                ids=[c.id for c in part],
                documents=[c.text for c in part],
                metadatas=[c.metadata() for c in part],
                embeddings=np.asarray(vectors[start : start + _WRITE_BATCH], dtype=np.float32),
            )

    def delete_source(self, source: str) -> None:
        """Remove every chunk of one source file (a no-op when it has none)."""
        self._collection.delete(where={"source": source})

    def query(
        self, vector: np.ndarray, k: int, *, sources: Sequence[str] = ()
    ) -> list[tuple[Chunk, float]]:
        """The ``k`` nearest chunks to a unit vector, with cosine similarity, best first.

        ``sources`` limits the search to chunks of those files (empty: every file).
        Raises :class:`NoDocuments` when the store is empty.
        """
        # No count() check up front: it costs ~5 ms per query at 100k chunks.
        # An empty collection either returns nothing or, if it never had a
        # segment on disk, raises "Nothing found on disk".
        try:
            res = self._collection.query(
                query_embeddings=[np.asarray(vector, dtype=np.float32)],
                n_results=k,
                where=_source_filter(sources),
                include=["documents", "metadatas", "distances"],
            )
        except Exception as exc:  # chromadb raises a bare InternalError here
            if "Nothing found on disk" in str(exc):
                raise NoDocuments(str(self.settings.docs_dir)) from exc
            raise
        if not res["ids"] or not res["ids"][0]:
            if sources:
                return []  # those files have no chunks; the store itself is not empty
            raise NoDocuments(str(self.settings.docs_dir))
        ids, docs, metas, dists = (
            res["ids"][0],
            res["documents"][0],
            res["metadatas"][0],
            res["distances"][0],
        )
        return [
            (Chunk.from_record(i, d, dict(m or {})), 1.0 - float(dist))
            for i, d, m, dist in zip(ids, docs, metas, dists, strict=True)
        ]

    def iter_chunks(
        self, page_size: int = _READ_PAGE, *, source: str | None = None
    ) -> Iterator[Chunk]:
        """Every chunk in the store (or of one ``source``), read page by page (BM25, audits)."""
        where = _source_filter([source] if source is not None else [])
        offset = 0
        while True:
            res = self._collection.get(
                where=where, include=["documents", "metadatas"], limit=page_size, offset=offset
            )
            ids = res["ids"]
            if not ids:
                return
            for i, d, m in zip(ids, res["documents"], res["metadatas"], strict=True):
                yield Chunk.from_record(i, d, dict(m or {}))
            offset += len(ids)

    def iter_vectors(self, page_size: int = _READ_PAGE) -> Iterator[tuple[Chunk, np.ndarray]]:
        """Every chunk with its stored unit vector, page by page (for the browser search index)."""
        offset = 0
        while True:
            res = self._collection.get(
                include=["documents", "metadatas", "embeddings"], limit=page_size, offset=offset
            )
            ids = res["ids"]
            if not ids:
                return
            rows = zip(ids, res["documents"], res["metadatas"], res["embeddings"], strict=True)
            for i, d, m, v in rows:
                yield Chunk.from_record(i, d, dict(m or {})), np.asarray(v, dtype=np.float32)
            offset += len(ids)

    def chunks_of(self, source: str, count: int | None = None) -> list[Chunk]:
        """The chunks of one source file, in chunk order (none when it has none).

        ``count``, when the caller knows how many chunks the source has, lets them be
        read by id: about 5 ms at 100k chunks, where Chroma's filter on the source
        takes 30-800 ms. If fewer come back, the source is read by filter after all.
        """
        if count:
            found = self._by_ids([chunk_id(source, i) for i in range(count)])
            if len(found) == count and all(c.source == source for c in found):
                return sorted(found, key=lambda c: c.index)
        return sorted(self.iter_chunks(source=source), key=lambda c: c.index)

    def _by_ids(self, ids: Sequence[str]) -> list[Chunk]:
        found: list[Chunk] = []
        for start in range(0, len(ids), _READ_PAGE):
            res = self._collection.get(
                ids=list(ids[start : start + _READ_PAGE]), include=["documents", "metadatas"]
            )
            found += (
                Chunk.from_record(i, d, dict(m or {}))
                for i, d, m in zip(res["ids"], res["documents"], res["metadatas"], strict=True)
            )
        return found

    def reset(self) -> None:
        """Drop and recreate the collection (``python -m ingest --rebuild``), keeping its stamp.

        Raises :class:`StoreTaken` when another writer created the collection again
        between the drop and the re-creation (its stamp is not this store's).
        """
        from chromadb.errors import NotFoundError

        try:
            self._client.delete_collection(self.settings.collection)
        except NotFoundError:
            pass  # nothing to drop; any other failure must surface
        self._collection = self._open_or_create()
        held = dict(self._collection.metadata or {})
        if any(held.get(key) != value for key, value in self._stamp.items()):
            raise StoreTaken(
                f"Another ingest created the collection {self.settings.collection!r} at "
                f"{self.location} while this one was rebuilding it; nothing more was written."
            )


class StoreTaken(RagError):
    """Another writer took the collection while this one was recreating it."""


# Chroma's process-wide cache of local clients is not thread-safe: two threads opening one
# store at once (a chat's search and the docs folder watch's ingest) break each other's client.
_CLIENT_CACHE = threading.Lock()


def _source_filter(sources: Sequence[str]) -> dict[str, Any] | None:
    """Chroma's ``where`` for chunks of ``sources``; None (no filter) when empty."""
    if not sources:
        return None
    if len(sources) == 1:
        return {"source": sources[0]}
    return {"source": {"$in": list(sources)}}


def _open_client(settings: Settings) -> Any:
    # Imported here: chromadb takes ~0.6 s to import and the CLIs print help without it.
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    if settings.chroma_host:
        try:
            return _http_client(settings.chroma_host, settings.chroma_port)
        except Exception as exc:  # connection errors vary by transport
            raise RagError(
                f"Could not reach the Chroma server at {settings.chroma_host}:{settings.chroma_port}"
                f" ({exc}). Start it with `chroma run --path DIR --port {settings.chroma_port}`"
                " or unset CHROMA_HOST to use the local store."
            ) from exc
    settings.chroma_dir.mkdir(parents=True, exist_ok=True)
    with _CLIENT_CACHE:
        return chromadb.PersistentClient(
            path=str(settings.chroma_dir), settings=ChromaSettings(anonymized_telemetry=False)
        )


@functools.cache
def _http_client(host: str, port: int) -> Any:
    """One client per server and process: making one costs ~145 ms, a request ~2.5 ms.

    Readers ask the server for the generation before every search, so they must
    not pay for a new client each time.
    """
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    return chromadb.HttpClient(
        host=host, port=port, settings=ChromaSettings(anonymized_telemetry=False)
    )


def forget_cached_clients() -> None:
    """Drop Chroma's process-wide client cache so the next open reads fresh state from disk.

    A reader that keeps a client open sees new counts but a stale vector index
    after another process wrote the store; reopening after this call fixes it.
    """
    from chromadb.api.shared_system_client import SharedSystemClient

    with _CLIENT_CACHE:
        SharedSystemClient.clear_system_cache()


def _generation_file(settings: Settings) -> Path:
    return settings.data_dir / "store-generation"


def read_generation(settings: Settings) -> str:
    """A token that changes whenever a writer commits a change to the store ("" if never)."""
    if settings.chroma_host:
        return _server_generation(settings)
    try:
        return _generation_file(settings).read_text().strip()
    except FileNotFoundError:
        return ""


def bump_generation(settings: Settings) -> str:
    """Record that the store changed; returns the new generation token."""
    token = uuid.uuid4().hex
    if settings.chroma_host:
        ChunkStore(settings, create=False).update_metadata({_GENERATION_KEY: token})
        return token
    path = _generation_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(token)
    os.replace(tmp, path)  # atomic, so a reader never sees half a token
    return token


def _server_generation(settings: Settings) -> str:
    """The generation in the server collection's metadata ("" when it has none, or no collection)."""
    from chromadb.errors import NotFoundError

    try:
        collection = _open_client(settings).get_collection(
            name=settings.collection, embedding_function=None
        )
    except NotFoundError:
        return ""
    except RagError:
        raise
    except Exception as exc:  # httpx and Chroma raise many kinds: say it as a sentence
        raise RagError(
            f"The Chroma server at {settings.chroma_host}:{settings.chroma_port} did not answer "
            f"({type(exc).__name__}: {exc}). Check that `chroma run` is still running there, "
            "or unset CHROMA_HOST to use the local store."
        ) from exc
    return str((collection.metadata or {}).get(_GENERATION_KEY, ""))
