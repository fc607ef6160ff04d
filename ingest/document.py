"""The typed values a loader hands to the chunker: a source file's text in sections.

A :class:`Section` is a run of text that shares one page and one nearest heading.
Loaders produce them, the chunker consumes them; both can be tested with plain
values, no files needed.

>>> doc = Document("guide/intro.md", (Section("Install\\n\\nRun make chat.", heading="Install"),))
>>> doc.text_chars
23
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rag.errors import RagError


class LoadError(RagError):
    """A file could not be turned into text; the message says why, in one sentence."""


@dataclass(frozen=True)
class Section:
    """Text under one heading on one page.

    ``page`` is 1-based for paged formats (PDF, images) and ``None`` otherwise;
    ``heading`` is the nearest heading above the text (``None`` before the first);
    ``ocr`` says the text was read from the page's pixels, not from a text layer.
    """

    text: str
    page: int | None = None
    heading: str | None = None
    ocr: bool = False


@dataclass(frozen=True)
class Document:
    """One source file as text: its path relative to the docs folder and its sections.

    ``warnings`` are sentences about problems that did not stop the load
    (for example a PDF that yielded fewer pages than it declares).
    """

    source: str
    sections: tuple[Section, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def text_chars(self) -> int:
        """Characters of text over all sections (0 means there is nothing to index)."""
        return sum(len(s.text.strip()) for s in self.sections)
