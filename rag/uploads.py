"""Saving a file a user dropped into the chat into the docs folder, safely.

A browser-supplied file name is untrusted: it may carry directories (``../../x``),
Windows separators, control characters or a leading dot. :func:`save_upload`
keeps only a sanitized base name, refuses unsupported types and oversized files
with a sentence, and never overwrites a *different* file: a name clash gets a
``-2``, ``-3``, ... suffix, while the very same content is recognised and not
stored twice. Ingesting the saved file is the caller's next step
(:func:`ingest.pipeline.ingest`).

>>> saved = save_upload(Path("/tmp/upload-123"), "../My Guide.pdf", settings)   # doctest: +SKIP
>>> saved.name
'My Guide.pdf'
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ingest.loaders import SUPPORTED_SUFFIXES
from rag.errors import RagError
from rag.settings import Settings

# Keeps file names readable in the UI and well under every filesystem's limit.
MAX_STEM_CHARS = 100
_UNSAFE = re.compile(r"[^\w\-. ()]+", re.UNICODE)


class UploadRejected(RagError):
    """An uploaded file cannot be added (type, size, name); the message says why."""


@dataclass(frozen=True)
class SavedUpload:
    """Where an uploaded file ended up in the docs folder."""

    uploaded_as: str  # the name the browser sent
    name: str  # the file name in the docs folder (relative path, no directories)
    path: Path
    renamed: bool  # a different file already had the name, so a suffix was added
    already_present: bool  # the same content was already in the docs folder under ``name``


def sanitize_filename(name: str) -> str:
    """A safe base name: no directories, no control or shell-special characters, no leading dot.

    >>> sanitize_filename("../../etc/pass wd.md")
    'pass wd.md'
    >>> sanitize_filename("C:\\\\Users\\\\me\\\\.hidden.txt")
    'hidden.txt'
    """
    base = name.replace("\\", "/").split("/")[-1]
    base = unicodedata.normalize("NFKC", base)
    base = _UNSAFE.sub("_", base)
    base = re.sub(r"[_ ]{2,}", "_", base).strip(" ._-")
    stem, suffix = _split(base)
    stem = stem[:MAX_STEM_CHARS].rstrip(" ._-") or "upload"
    return stem + suffix


def save_upload(source: Path, name: str, settings: Settings) -> SavedUpload:
    """Copy the uploaded file at ``source`` into ``settings.docs_dir`` under a safe name.

    Raises :class:`UploadRejected` for unsupported types and files larger than
    ``settings.upload_max_mb``.
    """
    safe = sanitize_filename(name)
    suffix = PurePosixPath(safe).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        kinds = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise UploadRejected(
            f"{name} was not added: {suffix or 'files without an extension'} cannot be read. "
            f"Supported types: {kinds}."
        )
    size = source.stat().st_size
    limit = settings.upload_max_mb * 1024 * 1024
    if size > limit:
        raise UploadRejected(
            f"{name} was not added: it is {size / 1024 / 1024:.1f} MB and the limit is "
            f"{settings.upload_max_mb:g} MB (RAG_UPLOAD_MAX_MB)."
        )
    if size == 0:
        raise UploadRejected(f"{name} was not added: the file is empty.")

    docs = settings.docs_dir
    docs.mkdir(parents=True, exist_ok=True)
    digest = _sha256(source)
    stem, ext = _split(safe)
    for n in range(1, 10_000):
        candidate = safe if n == 1 else f"{stem}-{n}{ext}"
        target = docs / candidate
        if target.exists():
            if target.is_file() and _sha256(target) == digest:
                return SavedUpload(name, candidate, target, renamed=n > 1, already_present=True)
            continue
        try:
            # "x" mode: another upload racing for the same name makes us try the next one
            # instead of overwriting it.
            with source.open("rb") as src, target.open("xb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
        except FileExistsError:
            continue
        return SavedUpload(name, candidate, target, renamed=n > 1, already_present=False)
    raise UploadRejected(f"{name} was not added: too many files named {safe} in {docs}.")


def _split(name: str) -> tuple[str, str]:
    path = PurePosixPath(name)
    return (path.stem, path.suffix) if path.suffix else (name, "")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
