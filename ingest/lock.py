"""The one-writer lock: Chroma corrupts a store silently when two processes write it.

Every writer of a data directory (``python -m ingest``, the chat app's upload
ingest) holds ``DATA_DIR/ingest.lock`` while it writes. The lock is an OS file
lock (``filelock``), so it is released when the holder dies, even by SIGKILL,
and a stale lock file never blocks anyone.

>>> import tempfile
>>> settings = Settings(_env_file=None, data_dir=tempfile.mkdtemp())
>>> with writer_lock(settings):
...     try:
...         with writer_lock(settings, timeout_s=0):  # a second writer, even in this process
...             pass
...     except IngestLocked as locked:
...         print(str(locked).split(" (")[0].startswith("Another ingest is writing"))
True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from rag.errors import IngestLocked
from rag.settings import Settings


def lock_path(settings: Settings) -> Path:
    """The lock file guarding ``settings.data_dir``."""
    return settings.data_dir / "ingest.lock"


@contextmanager
def writer_lock(settings: Settings, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the data directory's writer lock for the duration of the block.

    Waits up to ``timeout_s`` (default ``settings.lock_timeout_s``, ``RAG_LOCK_TIMEOUT``;
    0 tries once) and then raises :class:`~rag.errors.IngestLocked`.
    """
    wait = settings.lock_timeout_s if timeout_s is None else timeout_s
    path = lock_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    # thread_local=False: the chat app may ingest from a worker thread; is_singleton
    # is off (the default) so two calls in one process also exclude each other.
    lock = FileLock(path, timeout=wait, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        waited = f" after waiting {wait:g} s" if wait > 0 else ""
        raise IngestLocked(
            f"Another ingest is writing {settings.data_dir}{waited} (lock file {path}): "
            "wait for it to finish and run again, or set RAG_LOCK_TIMEOUT=SECONDS to wait longer."
        ) from None
    try:
        yield
    finally:
        lock.release()
