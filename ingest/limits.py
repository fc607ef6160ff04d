"""What one file may cost to ingest, whatever its size on disk.

``RAG_MAX_FILE_MB`` bounds the bytes read, but not the work they stand for: a
630 KB ``.docx`` can inflate to 200 MiB of paragraphs, and a 50 MB web page can
hold enough text for 50,000 chunks. :class:`Limits` carries the three bounds
that keep one file from holding the writer lock (and the memory) for long:

- ``RAG_MAX_INFLATED_MB``: the unpacked size of each zip member a loader reads,
  checked from the zip directory before anything is inflated;
- ``RAG_MAX_TEXT_MB``: the text extracted from one file, counted as it is extracted,
  so a loader stops as soon as a file goes over it;
- ``RAG_MAX_CHUNKS_PER_FILE``: the chunks one file may give, counted before any is embedded.

A loader counts its text on an :class:`Extraction`, which also collects the
warnings of the file being read.

>>> extraction = Extraction(Limits(max_text_mb=0.00001))   # 10 characters
>>> extraction.add("0123456789")
'0123456789'
>>> extraction.add("one more")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ingest.document.LoadError: too much text: more than 1e-05 MB extracted (raise RAG_MAX_TEXT_MB ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ingest.document import LoadError

if TYPE_CHECKING:
    from ingest.ocr import FileOcr
    from rag.settings import Settings

_MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The bounds of one file, in the settings' units; ``None`` leaves a bound open."""

    max_inflated_mb: float | None = None
    max_text_mb: float | None = None
    max_chunks: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """``RAG_MAX_INFLATED_MB``, ``RAG_MAX_TEXT_MB`` and ``RAG_MAX_CHUNKS_PER_FILE``."""
        return cls(settings.max_inflated_mb, settings.max_text_mb, settings.max_chunks_per_file)

    def check_inflated(self, member: str, size: int) -> None:
        """Refuse a zip member whose declared unpacked ``size`` (bytes) is over the limit."""
        if self.max_inflated_mb is not None and size > self.max_inflated_mb * _MB:
            raise LoadError(
                f"file too large when unpacked: {member} inflates to {size / _MB:.1f} MB, above "
                f"the {self.max_inflated_mb:g} MB limit (raise RAG_MAX_INFLATED_MB to ingest it)"
            )

    def check_chunks(self, count: int) -> None:
        """Refuse a file once it has given ``count`` chunks, more than the limit."""
        if self.max_chunks is not None and count > self.max_chunks:
            raise LoadError(
                f"too many chunks: more than {self.max_chunks} (raise RAG_MAX_CHUNKS_PER_FILE "
                "to ingest it, or split the file)"
            )


@dataclass
class Extraction:
    """The running account of one file being read: its limits, its text so far, its warnings.

    ``ocr`` reads pages without a text layer and images; ``None`` when OCR is off.
    """

    limits: Limits = field(default_factory=Limits)
    warnings: list[str] = field(default_factory=list)
    chars: int = 0
    ocr: FileOcr | None = None

    def add(self, text: str) -> str:
        """Count ``text`` as extracted and return it; :class:`LoadError` once over the limit.

        Characters are counted, not encoded bytes: cheap, and never more than the bytes.
        """
        self.chars += len(text)
        limit = self.limits.max_text_mb
        if limit is not None and self.chars > limit * _MB:
            raise LoadError(
                f"too much text: more than {limit:g} MB extracted (raise RAG_MAX_TEXT_MB "
                "to ingest it, or split the file)"
            )
        return text
