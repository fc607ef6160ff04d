"""What the store holds, per source file: the ingest state in a small SQLite file.

One row per source: the sha256 of the bytes last ingested, how many chunks
they gave, and a ``status`` that doubles as an intent log:

- ``pending``: a writer is about to change (or is changing) this source's chunks.
  It is committed *before* Chroma is touched, so after a SIGKILL the next run
  knows exactly which sources may be half-written and repairs them.
- ``done``: the store holds exactly this source's chunks for ``sha256``.
- ``failed``: the file could not be read (``error`` says why); it has no chunks.

Two flags live in the ``meta`` table: ``dirty`` (the store changed but the
generation bump and BM25 rebuild may not have happened yet) and ``rebuild``
(a ``--rebuild`` started and must finish). ``store`` records which Chroma
collection the state describes, ``vectors`` the settings its chunks were made with.

Every method commits on its own (SQLite's journal makes each one atomic), so
the file is consistent whenever the process dies.

>>> import tempfile
>>> with IngestState(Path(tempfile.mkdtemp()) / "ingest-state.sqlite3") as state:
...     state.mark_pending("guide.md")  # committed before the store is touched
...     state.mark_done(("guide.md", "ab12", 7))
...     state.get("guide.md")
SourceState(source='guide.md', sha256='ab12', chunks=7, status='done', error=None)
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["pending", "done", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    source TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL DEFAULT '',
    chunks INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    error TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class SourceState:
    """The recorded state of one source file."""

    source: str
    sha256: str
    chunks: int
    status: Status
    error: str | None = None


class IngestState:
    """The per-source ingest state, stored in SQLite at ``path``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # isolation_level=None: autocommit; multi-row writes open their own transaction.
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database file."""
        self._db.close()

    def __enter__(self) -> IngestState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading -------------------------------------------------------------

    def all(self) -> dict[str, SourceState]:
        """Every recorded source, by source path."""
        rows = self._db.execute("SELECT source, sha256, chunks, status, error FROM sources")
        return {row[0]: SourceState(*row) for row in rows}

    def get(self, source: str) -> SourceState | None:
        """The recorded state of one source, or ``None`` if it was never seen."""
        row = self._db.execute(
            "SELECT source, sha256, chunks, status, error FROM sources WHERE source = ?", (source,)
        ).fetchone()
        return SourceState(*row) if row else None

    def get_meta(self, key: str) -> str | None:
        """A value from the meta table, or ``None``."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # --- writing (each call is one committed transaction) ---------------------

    def mark_pending(self, *sources: str) -> None:
        """Record the intent to change these sources' chunks; call before touching the store."""
        self._upsert_many([(source, "", 0, "pending", None) for source in sources], keep_sha=True)

    def mark_done(self, *entries: tuple[str, str, int]) -> None:
        """Record ``(source, sha256, chunks)``: the store now holds exactly these chunks."""
        self._upsert_many([(src, sha, n, "done", None) for src, sha, n in entries])

    def mark_failed(self, source: str, sha256: str, error: str) -> None:
        """Record that this content could not be ingested (and has no chunks in the store)."""
        self._upsert(source, sha256, 0, "failed", error)

    def forget(self, source: str) -> None:
        """Drop a source whose chunks were removed from the store."""
        with self._db:
            self._db.execute("DELETE FROM sources WHERE source = ?", (source,))

    def clear(self) -> None:
        """Forget every source (the store was reset)."""
        with self._db:
            self._db.execute("DELETE FROM sources")

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (or with ``None`` delete) a meta value."""
        with self._db:
            if value is None:
                self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

    def _upsert(
        self, source: str, sha256: str, chunks: int, status: Status, error: str | None
    ) -> None:
        self._upsert_many([(source, sha256, chunks, status, error)])

    def _upsert_many(
        self, rows: list[tuple[str, str, int, Status, str | None]], *, keep_sha: bool = False
    ) -> None:
        # keep_sha: a pending row keeps the old hash so a repair can tell
        # "was ingested before" (updated) from "is new" (added). Only a done (or
        # already pending) row had chunks; a failed row's hash must not count.
        sha_update = (
            "sha256 = CASE WHEN sources.status IN ('done', 'pending') THEN sources.sha256 "
            "ELSE '' END"
            if keep_sha
            else "sha256 = excluded.sha256"
        )
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")  # all rows or none
        try:
            self._db.executemany(
                "INSERT INTO sources (source, sha256, chunks, status, error, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(source) DO UPDATE SET "
                f"{sha_update}, chunks = excluded.chunks, status = excluded.status, "
                "error = excluded.error, updated_at = excluded.updated_at",
                [(*row, now) for row in rows],
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
