"""What an ingest run did: the :class:`IngestReport` the CLI prints and the chat app shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Failure:
    """A file that was not ingested (or ingested with a warning), and why, in one sentence.

    ``path`` is relative to the docs folder, with ``/`` separators.
    """

    path: str
    error: str


@dataclass
class IngestReport:
    """Sources by outcome (relative to the docs folder) and the chunks in the store afterwards."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    warnings: list[Failure] = field(default_factory=list)
    chunks: int = 0
    ocr_pages: int = 0  # pages (and images) read by OCR in this run

    @property
    def changed(self) -> bool:
        """Whether the run added, replaced or removed anything."""
        return bool(self.added or self.updated or self.removed)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object: counts per outcome, the failures, and the chunks in the store."""
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "removed": len(self.removed),
            "unchanged": len(self.unchanged),
            "failed": [{"path": f.path, "error": f.error} for f in self.failed],
            "chunks": self.chunks,
        }

    def summary(self) -> str:
        """One line for people, e.g. ``Ingested 12 files: 3 added, ...; 345 chunks in store.``"""
        files = len(self.added) + len(self.updated) + len(self.unchanged) + len(self.failed)
        n = self.ocr_pages
        ocr = f" {n} page{'s' if n != 1 else ''} read by OCR." if n else ""
        return (
            f"Ingested {files} file{'s' if files != 1 else ''}: {len(self.added)} added, "
            f"{len(self.updated)} updated, {len(self.removed)} removed, "
            f"{len(self.unchanged)} unchanged, {len(self.failed)} failed; "
            f"{self.chunks} chunk{'s' if self.chunks != 1 else ''} in store.{ocr}"
        )
