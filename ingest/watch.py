"""A docs folder that stays in sync: changes under it are ingested by themselves.

:func:`watch_docs` follows ``settings.docs_dir`` with ``watchfiles`` (inotify on
Linux, FSEvents on macOS) until its stop event is set. It ingests once at the
start (what changed while nothing watched, and the repair of an ingest a kill
interrupted), then once per burst of changes: a burst ends after
:data:`QUIET_MS` without a change, or after :data:`MAX_BURST_MS` of changes, so
copying a hundred files costs one or a few ingests, not a hundred.

Each ingest is the normal pipeline (:func:`ingest.pipeline.ingest`) in a worker
thread, so the caller's event loop never blocks, under the one-writer lock: while
another writer (``python -m ingest``, an upload in the chat) holds it, the watcher
waits and tries again. The pipeline is incremental by content hash, so a file
someone else already ingested costs a hash and nothing more, and a change the
watcher missed is caught by the next ingest, which always scans the whole folder.

After an ingest that changed something, or found a file newly unreadable,
``on_change`` receives a :class:`FolderSynced`; its :meth:`~FolderSynced.summary`
is the short notice (``"2 files added, 1 updated"``). Without Chainlit::

    async def show(synced: FolderSynced) -> None:
        print(synced.summary())

    asyncio.run(watch_docs(settings, show))   # until Ctrl+C
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change, DefaultFilter, awatch

from ingest.loaders import SUPPORTED_SUFFIXES
from ingest.pipeline import ingest
from ingest.report import Failure, IngestReport
from rag.errors import IngestLocked, RagError
from rag.settings import Settings

__all__ = ["FolderSynced", "watch_docs"]

log = logging.getLogger(__name__)

# An editor's save or a copy of many files is a burst of events; one ingest follows it.
QUIET_MS = 500
MAX_BURST_MS = 5_000
# How long the watcher waits for a change before it yields an empty set (and waits again).
IDLE_MS = 1_000
# Short waits for the lock, retried, so that stopping never waits on a long lock wait.
LOCK_WAIT_S = 1.0
LOCK_RETRY_S = 1.0


@dataclass(frozen=True)
class FolderSynced:
    """What one ingest of the watched folder changed, and the files that just became unreadable."""

    report: IngestReport
    new_failures: tuple[Failure, ...] = ()

    def summary(self) -> str:
        """The notice for people: ``"2 files added, 1 updated, 1 removed"`` and new failures."""
        counts = [
            (len(self.report.added), "added"),
            (len(self.report.updated), "updated"),
            (len(self.report.removed), "removed"),
        ]
        parts: list[str] = []
        for n, verb in counts:
            if n:
                noun = "" if parts else (" file" if n == 1 else " files")  # said once, first
                parts.append(f"{n}{noun} {verb}")
        parts += [f"{f.path} could not be read ({f.error})" for f in self.new_failures]
        return ", ".join(parts)


OnChange = Callable[[FolderSynced], Awaitable[None]]


async def watch_docs(
    settings: Settings, on_change: OnChange, *, stop_event: asyncio.Event | None = None
) -> None:
    """Ingest ``settings.docs_dir`` now and after every burst of changes, until ``stop_event``.

    ``on_change`` is awaited after each ingest that changed the store or met a
    newly unreadable file; an error it raises is logged and watching goes on. An
    ingest that fails (the embedding model missing, the folder gone) is logged with
    its sentence, and the next change tries again. Returns when ``stop_event`` is
    set, or at once (with a warning in the log) when the docs folder does not exist.
    """
    docs = settings.docs_dir
    if not docs.is_dir():
        log.warning("Not watching %s: the folder does not exist (RAG_DOCS_DIR).", docs)
        return
    stop = stop_event or asyncio.Event()
    try:
        await _follow(settings, _Syncer(settings, on_change, stop), stop)
    except OSError as exc:  # e.g. the system's limit of inotify watches is reached
        log.warning(
            "Stopped watching %s (%s): run `python -m ingest` after changing it, or raise the "
            "limit (sysctl fs.inotify.max_user_watches) and restart the app.",
            docs,
            exc,
        )


async def _follow(settings: Settings, syncer: _Syncer, stop: asyncio.Event) -> None:
    """Ingest once the watches are in place, then after each burst of changes."""
    docs = settings.docs_dir
    first = True
    async for changes in awatch(
        docs,
        watch_filter=_DocsFilter(settings),
        debounce=MAX_BURST_MS,
        step=QUIET_MS,
        stop_event=stop,
        # A quiet spell yields an empty set: the first one says the watches are in place,
        # so the first ingest runs only then and no change can slip between the two.
        rust_timeout=IDLE_MS,
        yield_on_timeout=True,
        # The folder may hold files its owner cannot read (a mounted share); skip them.
        ignore_permission_denied=True,
    ):
        if changes:
            log.info("%d change(s) under %s: ingesting", len(changes), docs)
        elif not first:
            continue
        first = False
        await syncer.sync()


class _Syncer:
    """Runs one ingest at a time for the watcher and remembers which files already failed."""

    def __init__(self, settings: Settings, on_change: OnChange, stop: asyncio.Event) -> None:
        # Short lock waits, retried here, keep the worker thread quick to give up on stop.
        self.settings = settings.with_overrides(lock_timeout_s=LOCK_WAIT_S)
        self.on_change = on_change
        self.stop = stop
        self.failed: set[str] | None = None  # None until the first ingest: all are known then

    async def sync(self) -> None:
        """Ingest the folder (waiting for the lock), then tell ``on_change`` what changed."""
        report = await self._ingest()
        if report is None:
            return
        failed = {f.path: f for f in report.failed}
        known = set(failed) if self.failed is None else self.failed
        self.failed = set(failed)
        synced = FolderSynced(report, tuple(f for p, f in failed.items() if p not in known))
        if not (report.changed or synced.new_failures):
            return
        try:
            await self.on_change(synced)
        except Exception:  # noqa: BLE001 - a notice that failed must not stop the watching
            log.exception("telling the chats about the ingested changes failed")

    async def _ingest(self) -> IngestReport | None:
        while not self.stop.is_set():
            try:
                return await asyncio.to_thread(ingest, self.settings)
            except IngestLocked:
                await _wait(self.stop, LOCK_RETRY_S)  # another writer: its turn first
            except RagError as exc:
                log.warning("The docs folder was not ingested: %s", exc)
                return None
            except Exception:  # noqa: BLE001 - the watcher outlives one bad ingest
                log.exception("ingesting the watched docs folder failed")
                return None
        return None


class _DocsFilter(DefaultFilter):
    """The changes that can matter to an ingest: documents, folders and deletions.

    Hidden files and folders (editor swap files, ``.git``) and files no loader reads
    are left out, as the scan leaves them out; so is the data folder, should it lie
    inside the docs folder, or every ingest would trigger the next.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(ignore_paths=[str(settings.data_dir.resolve())])
        self.docs = settings.docs_dir.resolve()

    def __call__(self, change: Change, path: str) -> bool:
        if not super().__call__(change, path):
            return False
        try:
            parts = Path(path).resolve().relative_to(self.docs).parts
        except ValueError:
            parts = Path(path).parts[-1:]
        if any(part.startswith(".") for part in parts):
            return False
        # A deleted path may have been a folder of documents: it cannot be told any more.
        return Path(path).suffix.lower() in SUPPORTED_SUFFIXES or not os.path.isfile(path)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
