"""Incremental ingest: the docs folder into the chunk store, changing only what changed.

``ingest(settings)`` scans the docs folder and, under the one-writer lock:

1. repairs sources a killed run left ``pending`` (their chunks are deleted, and
   the file, if it still exists, is ingested again below);
2. reads each file once and hashes its bytes: a file whose sha256 matches the
   state is *unchanged* and is not parsed; a file that failed before with the
   same bytes is reported again without being parsed;
3. loads and chunks each new or changed file into a spool on disk, within the
   limits of :mod:`ingest.limits` (inflated size, text, chunks per file), then
   embeds and writes the chunks in batches under the intent log
   (:mod:`ingest.writer`), so memory holds one batch whatever the file's size;
4. deletes the chunks of files that disappeared (not of those in a folder that
   could not be listed: that folder is reported in ``failed``);
5. when anything changed: bumps the store generation and updates the BM25 index
   in place: only the sources whose hash the index does not hold are re-read.

On a Chroma server (``CHROMA_HOST``) the collection is first claimed for this
data folder (:mod:`ingest.owner`): one owned by another data folder is refused
before anything is written, so it is never reset from here.

The state records the settings that decide what chunks and vectors are (model
checksum, precision, chunk sizes: :func:`vector_fingerprint`); when they change,
the store is reset and every file re-ingested, so old and new vectors never mix.

Every store change is bracketed by the intent log in :mod:`ingest.state`, so a
SIGKILL at any moment leaves at most the ``pending`` sources to redo, and chunk
ids are stable (``source#index``) with delete-before-add, so nothing is ever
duplicated. A file that cannot be read is reported in ``failed`` with a sentence
and holds no chunks; it never stops the rest.

Usage (``python -m ingest`` does the same)::

    report = ingest(settings)
    print(report.summary())
    # Ingested 12 files: 3 added, 1 updated, 1 removed, 7 unchanged, 1 failed; 345 chunks in store.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.chunker import CHUNKER_VERSION, Chunker
from ingest.document import LoadError
from ingest.limits import Extraction, Limits
from ingest.loaders import NEEDS_OCR, read_sections, supported_suffixes
from ingest.lock import writer_lock
from ingest.ocr import Ocr, OcrStats
from ingest.owner import Claim, claim, this_folder
from ingest.report import Failure, IngestReport
from ingest.scan import SourceFile, scan_docs
from ingest.state import IngestState, SourceState
from ingest.writer import BatchWriter, ChunkSpool, PreparedFile
from rag.bm25 import publish
from rag.errors import RagError
from rag.settings import Settings
from rag.store import EMBEDDED_TEXT_VERSION, ChunkStore

if TYPE_CHECKING:
    from rag.embed import Embedder

__all__ = ["DocsFolderMissing", "Failure", "IngestReport", "ingest", "state_path"]


# Chunks are embedded and written this many embedding batches at a time (128 by
# default), across files: fuller ONNX batches and fewer Chroma round trips than one
# file at a time, while a kill loses little embedding work and memory holds little.
_COMMIT_EMBED_BATCHES = 8


class DocsFolderMissing(RagError):
    """The docs folder to ingest does not exist."""


def state_path(settings: Settings) -> Path:
    """The SQLite file holding the per-source ingest state."""
    return settings.data_dir / "ingest-state.sqlite3"


def ingest(
    settings: Settings, *, rebuild: bool = False, progress: bool = False, take_over: bool = False
) -> IngestReport:
    """Bring the store in line with ``settings.docs_dir``; see the module docstring.

    ``rebuild`` resets the store and the state and ingests everything again.
    ``progress`` shows a tqdm bar on stderr. ``take_over`` makes this data folder
    the owner of a server collection another one owns (it is then rebuilt). Raises
    :class:`~rag.errors.IngestLocked` when another process is writing,
    :class:`~ingest.owner.CollectionOwned` when another data folder owns the server
    collection, :class:`DocsFolderMissing`, and :class:`~rag.errors.ModelMissing`
    when the embedding model is not exported.
    """
    docs = settings.docs_dir
    if not docs.is_dir():
        raise DocsFolderMissing(
            f"The docs folder {docs} does not exist: create it and put your files in it, "
            "or name another folder (python -m ingest DIR, or RAG_DOCS_DIR)."
        )
    with writer_lock(settings), IngestState(state_path(settings)) as state:
        if not settings.chroma_host:
            run = _IngestRun(settings, ChunkStore(settings), state, progress=progress)
            return run.run(rebuild=rebuild)
        me = this_folder(settings, state)
        store = ChunkStore(settings, stamp=me.metadata())
        claimed = claim(store, me, take_over=take_over)
        run = _IngestRun(settings, store, state, progress=progress)
        if (notice := claimed.notice()) is not None:
            run.report.warnings.append(Failure(store.location, notice))
        if claimed.how is not Claim.OWNED:
            # Readers elsewhere learn the generation from the collection: publish once.
            state.set_meta("dirty", "1")
        # Taken over, the collection holds another folder's files, which this state never knew.
        return run.run(rebuild=rebuild or claimed.how is Claim.TAKEN_OVER)


class _IngestRun:
    """One ingest under the lock: owns the store, the state and the lazily loaded models."""

    def __init__(
        self, settings: Settings, store: ChunkStore, state: IngestState, *, progress: bool
    ) -> None:
        self.settings = settings
        self.store = store
        self.state = state
        self.progress = progress
        self.report = IngestReport()
        self._chunker: Chunker | None = None
        self._embedder: Embedder | None = None
        self._max_bytes = int(settings.max_file_mb * 1024 * 1024)
        self._limits = Limits.from_settings(settings)
        # One engine for the whole run, loaded by the first page that needs it.
        self._ocr = Ocr.from_settings(settings, on_page=self._count_ocr_page)
        self._bar: Any = None  # the tqdm bar when progress is shown
        self._writer = BatchWriter(
            store,
            state,
            self.report,
            embed=lambda texts: self.embedder.embed(texts),
            batch_size=settings.embed_batch * _COMMIT_EMBED_BATCHES,
        )

    # --- the run ------------------------------------------------------------

    def run(self, *, rebuild: bool) -> IngestReport:
        reingest = self._reset_if_needed(rebuild)
        repaired = self._repair_pending()
        self._audit()
        known = self.state.all()
        scan = scan_docs(self.settings.docs_dir, supported_suffixes(self.settings.ocr))
        seen = {f.source for f in scan.files} | {f.path for f in scan.failed}

        for failure in scan.failed:
            self._fail(failure.path, "", failure.error, known.get(failure.path))
        # A folder that could not be listed says nothing about its files: they are
        # kept as they are, not removed as if deleted.
        self.report.failed.extend(scan.unlisted)
        seen |= {s for s in known if any(_inside(s, f.path) for f in scan.unlisted)}
        for file in self._with_progress(scan.files):
            was_ingested = repaired.get(file.source, False) or file.source in reingest
            prepared = self._prepare(file, known.get(file.source), was_ingested)
            if prepared is not None:
                self._writer.write(prepared)
        self._writer.flush()

        for source, previous in sorted(known.items()):
            if source not in seen:
                self._remove(source, previous)
        for source, had_old in sorted(repaired.items()):
            if source not in seen and had_old:
                self.report.removed.append(source)
        self.report.removed.extend(sorted(reingest - seen - set(repaired)))

        if self.report.changed or repaired or self.state.get_meta("dirty"):
            self._publish()
        self.report.chunks = self.store.count()
        return self.report

    def _reset_if_needed(self, rebuild: bool) -> set[str]:
        """Reset the store and the state when they cannot be kept; see below.

        Returns the sources that had chunks before a reset caused by changed
        chunking or embedding settings (they are reported as updated).
        """
        # The state must describe this very collection; a state made for another
        # store (CHROMA_HOST changed, data dir copied) cannot be trusted, so the
        # store is rebuilt. The "rebuild" flag makes a killed reset finish next time.
        key = f"{self.store.location}#{self.settings.collection}"
        recorded = self.state.get_meta("store")
        fingerprint = vector_fingerprint(self.settings)
        reingest: set[str] = set()
        if not (rebuild or self.state.get_meta("rebuild") or (recorded and recorded != key)):
            has_content = bool(self.state.all() or self.store.count())
            if recorded is None and has_content:
                pass  # an unstamped state from an older run: fall through to a reset
            elif self.state.get_meta("vectors") != fingerprint and has_content:
                # Chunks cut or embedded with other settings would mix with the new
                # ones in one store and rank against each other meaninglessly.
                reingest = {s for s, r in self.state.all().items() if r.status == "done"}
                self.report.warnings.append(
                    Failure(
                        self.store.location,
                        f"{_what_changed(self.state.get_meta('vectors'), fingerprint)}; "
                        "every file was re-ingested",
                    )
                )
            else:
                self.state.set_meta("store", key)
                self.state.set_meta("vectors", fingerprint)
                return reingest
        self.state.set_meta("rebuild", "1")
        self.state.set_meta("dirty", "1")
        # Re-ingested files keep their hashes, so the BM25 index must re-read everything.
        self.state.set_meta("bm25_rebuild", "1")
        self.store.reset()
        self.state.clear()
        self.state.set_meta("store", key)
        self.state.set_meta("vectors", fingerprint)
        self.state.set_meta("rebuild", None)
        return reingest

    def _repair_pending(self) -> dict[str, bool]:
        """Delete the chunks of sources a killed run left pending.

        Returns ``{source: it had been ingested before}``.
        """
        repaired: dict[str, bool] = {}
        for source, row in self.state.all().items():
            if row.status != "pending":
                continue
            self.state.set_meta("dirty", "1")
            self.store.delete_source(source)
            self.state.forget(source)
            repaired[source] = bool(row.sha256)
        return repaired

    def _audit(self) -> None:
        """Rebuild when the store does not hold the chunks the state says it does.

        After the repair the two always agree, unless something outside ingest
        changed the store (its folder deleted, another tool writing the collection);
        then the state cannot be trusted, and one ``count()`` is cheap to check.
        """
        expected = sum(r.chunks for r in self.state.all().values() if r.status == "done")
        actual = self.store.count()
        if actual != expected:
            self.report.warnings.append(
                Failure(
                    self.store.location,
                    f"the store holds {actual} chunks but the ingest state expects {expected}; "
                    "it was rebuilt from the docs folder",
                )
            )
            self._reset_if_needed(rebuild=True)

    def _prepare(
        self, file: SourceFile, previous: SourceState | None, was_ingested: bool
    ) -> PreparedFile | None:
        """Read, hash, load and chunk one file; ``None`` when unchanged or failed.

        ``was_ingested``: a repaired source that had chunks (so it counts as updated).
        """
        source = file.source
        try:
            data = read_source(file.path, self._max_bytes, self.settings.max_file_mb)
        except LoadError as exc:
            self._fail(source, "", str(exc), previous)
            return None
        sha = hashlib.sha256(data).hexdigest()
        if previous is not None and previous.sha256 == sha:
            if previous.status == "done":
                self.report.unchanged.append(source)
                return None
            # A file that failed for want of OCR is read again once OCR is on.
            retry = self._ocr is not None and NEEDS_OCR in previous.error
            if previous.status == "failed" and previous.error and not retry:
                self.report.failed.append(Failure(source, previous.error))
                return None
        try:
            spool, warnings = self._spool(source, data, sha)
        except LoadError as exc:
            self._fail(source, sha, str(exc), previous)
            return None
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the run
            # Parser libraries raise anything on input they do not handle (pypdf raises
            # NotImplementedError for certificate-encrypted PDFs); the file fails alone.
            self._fail(source, sha, _unexpected_load_error(exc), previous)
            return None
        if not len(spool):
            spool.close()
            self._fail(source, sha, "no text found: nothing to index", previous)
            return None
        was_ingested = was_ingested or (previous is not None and previous.status == "done")
        return PreparedFile(
            source, sha, spool, previous is not None, was_ingested, tuple(warnings)
        )

    def _spool(self, source: str, data: bytes, sha: str) -> tuple[ChunkSpool, list[str]]:
        """Load and chunk ``data`` into a spool, within the file limits; and the load warnings."""
        extraction = Extraction(self._limits, ocr=self._ocr.for_file() if self._ocr else None)
        spool = ChunkSpool(source, sha, self.settings.data_dir)
        try:
            sections = read_sections(source, data, extraction)
            for chunk in self.chunker.iter_chunks(source, sections, sha):
                spool.append(chunk)
                self._limits.check_chunks(len(spool))
        except BaseException:
            spool.close()
            raise
        return spool, extraction.warnings

    def _fail(self, source: str, sha: str, error: str, previous: SourceState | None) -> None:
        """Report a failed file; if it had chunks (an older, readable version), remove them."""
        self.report.failed.append(Failure(source, error))
        # No source is pending here: _repair_pending resolved them all before the scan.
        if previous is not None and previous.status == "done":
            self.state.set_meta("dirty", "1")
            self.state.mark_pending(source)
            self.store.delete_source(source)
        # Remembering the hash lets the next run report the error without parsing again.
        self.state.mark_failed(source, sha, error)

    def _remove(self, source: str, previous: SourceState) -> None:
        """Delete the chunks of a file that is gone from the docs folder."""
        if previous.status == "failed":
            self.state.forget(source)  # it never had chunks: nothing to report
            return
        self.state.set_meta("dirty", "1")
        self.state.mark_pending(source)
        self.store.delete_source(source)
        self.state.forget(source)
        self.report.removed.append(source)

    def _publish(self) -> None:
        """Tell readers the store changed: new generation, BM25 index updated to match."""
        rows = {s: r for s, r in self.state.all().items() if r.status == "done"}
        publish(
            self.settings,
            self.store,
            {s: r.sha256 for s, r in rows.items()},
            rebuild=bool(self.state.get_meta("bm25_rebuild")),
            chunk_counts={s: r.chunks for s, r in rows.items()},
        )
        self.state.set_meta("bm25_rebuild", None)
        self.state.set_meta("dirty", None)

    # --- helpers bound to this run -------------------------------------------

    @property
    def chunker(self) -> Chunker:
        # Loaded on first use: a run where nothing changed needs no model at all.
        if self._chunker is None:
            self._chunker = Chunker.from_settings(self.settings)
        return self._chunker

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from rag.embed import get_embedder

            self._embedder = get_embedder(self.settings)
        return self._embedder

    def _with_progress(self, files: list[SourceFile]) -> list[SourceFile]:
        if not self.progress or not files:
            return files
        from tqdm import tqdm

        self._bar = tqdm(files, desc="ingest", unit="file", file=sys.stderr, leave=False)
        return self._bar  # type: ignore[no-any-return]

    def _count_ocr_page(self, stats: OcrStats) -> None:
        """After each page read by OCR: count it in the report and on the progress bar."""
        self.report.ocr_pages = stats.pages
        if self._bar is not None:
            self._bar.set_postfix_str(f"{stats.pages} pages OCR'd", refresh=True)


def read_source(path: Path, max_bytes: int, max_mb: float) -> bytes:
    """The bytes of one file, read once; :class:`LoadError` with a sentence when impossible."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise LoadError("cannot read the file: it vanished or is a broken symlink") from None
    except OSError as exc:
        raise LoadError(f"cannot read the file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        # Reading a FIFO would block the ingest forever; devices and sockets are not documents.
        raise LoadError("cannot read the file: it is not a regular file (a pipe, device or socket)")
    if info.st_size > max_bytes:
        raise LoadError(
            f"file too large: {info.st_size / 1024 / 1024:.1f} MB, above the {max_mb:g} MB limit "
            "(raise RAG_MAX_FILE_MB to ingest it)"
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except PermissionError:
        raise LoadError("cannot read the file: permission denied") from None
    except OSError as exc:
        raise LoadError(f"cannot read the file: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # it grew after the size check
        raise LoadError(f"file too large: above the {max_mb:g} MB limit (raise RAG_MAX_FILE_MB)")
    return data


def vector_fingerprint(settings: Settings) -> str:
    """The settings that decide what the chunks and their vectors are, as a JSON string.

    Recorded in the ingest state; when it changes, the store is rebuilt. Raises
    :class:`~rag.errors.ModelMissing` when the embedding model is not exported.
    """
    from rag.embed import read_manifest

    manifest = read_manifest(settings.embedder_dir)
    files = manifest.get("files", {})
    return json.dumps(
        {
            "embed_precision": settings.embed_precision,
            "model_sha256": files.get(settings.embed_precision, {}).get("sha256", ""),
            "tokenizer_sha256": manifest.get("tokenizer", {}).get("sha256", ""),
            "chunk_tokens": settings.chunk_tokens,
            "chunk_overlap": settings.chunk_overlap,
            "embed_max_tokens": settings.embed_max_tokens,
            "chunker_version": CHUNKER_VERSION,
            "embedded_text_version": EMBEDDED_TEXT_VERSION,
        },
        sort_keys=True,
    )


def _what_changed(recorded: str | None, current: str) -> str:
    """``"the chunking or embedding settings changed (chunk_tokens 220 -> 100)"``, for people."""
    try:
        old = json.loads(recorded) if recorded else {}
    except ValueError:
        old = {}
    if not old:
        return "the ingest state does not record the settings its chunks were made with"
    new = json.loads(current)
    changes = ", ".join(
        f"{key} {old.get(key)} -> {new[key]}" for key in sorted(new) if old.get(key) != new[key]
    )
    return f"the chunking or embedding settings changed ({changes})"


def _unexpected_load_error(exc: Exception) -> str:
    """The sentence for a file whose parser raised something other than :class:`LoadError`."""
    detail = str(exc).strip()
    if isinstance(exc, NotImplementedError):
        return "uses a feature the parser does not support" + (f" ({detail})" if detail else "")
    return f"could not read the file ({type(exc).__name__}{': ' + detail if detail else ''})"


def _inside(source: str, folder: str) -> bool:
    """Whether ``source`` lies in ``folder``, both relative to the docs folder (``.``: the root)."""
    return folder == "." or source.startswith(folder.rstrip("/") + "/")
