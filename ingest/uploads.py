"""Files a user dropped into the chat: saved into the docs folder safely, then ingested.

A browser-supplied file name is untrusted: it may carry directories (``../../x``),
Windows separators, control characters, a leading dot, or more bytes than a file
name may have (150 CJK characters are 450 bytes of UTF-8; the limit is 255).
:func:`save_upload` keeps only a sanitized base name cut to that limit (the
extension kept), refuses unsupported types and oversized files with a sentence,
and never overwrites a *different* file: a name clash gets a ``-2``, ``-3``, ...
suffix, while the very same content is recognised and not stored twice.

:func:`add_uploads` is what the chat calls for a drop of several files: each is
saved on its own (one that fails becomes a sentence about it, the others go on),
the docs folder is ingested once under the usual limits (``RAG_MAX_TEXT_MB`` and
the others apply to uploads too), and the outcome is one plain sentence per
file plus a closing line, ready to show.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> upload = root / "upload-123"
>>> _ = upload.write_text("# Plan\\n\\nLaunch on Friday.")
>>> settings = Settings(_env_file=None, docs_dir=root / "docs", data_dir=root / "data")
>>> save_upload(upload, "../My Plan.md", settings).name
'My Plan.md'
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ingest.loaders import IMAGE_SUFFIXES, supported_suffixes
from ingest.pipeline import ingest
from ingest.report import IngestReport
from rag.errors import RagError
from rag.settings import Settings

# Keeps file names readable in the UI; the byte limit below is what the filesystem allows.
MAX_STEM_CHARS = 100
MAX_NAME_BYTES = 255
# Room kept for the "-9999" a name clash may add.
_CLASH_BYTES = 5
_MAX_SUFFIX_BYTES = 16
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


@dataclass(frozen=True)
class UploadOutcome:
    """What became of a drop of files: the saved ones, the ingest report, and sentences."""

    saved: tuple[SavedUpload, ...]
    report: IngestReport | None  # None when nothing was saved or the ingest failed
    lines: tuple[str, ...]  # one sentence per file, in drop order, then a closing line

    @property
    def text(self) -> str:
        """The sentences as one message, a paragraph each."""
        return "\n\n".join(self.lines)


def sanitize_filename(name: str) -> str:
    """A safe base name: no directories, no control or shell-special characters, no leading dot.

    The name stays under ``MAX_NAME_BYTES`` of UTF-8 with room for a clash suffix,
    keeping its extension.

    >>> sanitize_filename("../../etc/pass wd.md")
    'pass wd.md'
    >>> sanitize_filename("C:\\\\Users\\\\me\\\\.hidden.txt")
    'hidden.txt'
    >>> long = sanitize_filename("計画" * 75 + ".md")
    >>> long.endswith(".md"), len(long.encode()) <= MAX_NAME_BYTES - 5
    (True, True)
    """
    base = name.replace("\\", "/").split("/")[-1]
    base = unicodedata.normalize("NFKC", base)
    base = _UNSAFE.sub("_", base)
    base = re.sub(r"[_ ]{2,}", "_", base).strip(" ._-")
    stem, suffix = _split(base)
    if len(suffix.encode()) > _MAX_SUFFIX_BYTES:  # no real extension: all of it is the stem
        stem, suffix = base, ""
    room = MAX_NAME_BYTES - _CLASH_BYTES - len(suffix.encode())
    stem = stem[:MAX_STEM_CHARS].encode()[:room].decode("utf-8", "ignore")
    return (stem.rstrip(" ._-") or "upload") + suffix


def save_upload(source: Path, name: str, settings: Settings) -> SavedUpload:
    """Copy the uploaded file at ``source`` into ``settings.docs_dir`` under a safe name.

    Raises :class:`UploadRejected` for unsupported types and files larger than
    ``settings.upload_max_mb``; ``OSError`` when the file cannot be read or written.
    """
    safe = sanitize_filename(name)
    _check_acceptable(source, name, safe, settings)
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


def add_uploads(files: Sequence[tuple[Path, str]], settings: Settings) -> UploadOutcome:
    """Save each ``(path, name the browser sent)`` into the docs folder, then ingest once.

    A file that cannot be saved is a sentence about it and never stops the
    others; the ingest that follows reports each saved file as added, already
    present, renamed or unreadable. Blocking: the chat runs it in a worker thread.
    """
    outcomes: list[SavedUpload | str] = []
    for path, name in files:
        try:
            outcomes.append(save_upload(path, name, settings))
        except RagError as exc:
            outcomes.append(str(exc))
        except OSError as exc:
            outcomes.append(f"{name} was not added: {exc.strerror or exc}.")
        except Exception as exc:  # noqa: BLE001 - one odd file must never cost the others
            outcomes.append(f"{name} was not added: {type(exc).__name__}: {exc}.")
    saved = tuple(o for o in outcomes if isinstance(o, SavedUpload))
    report: IngestReport | None = None
    closing = "Nothing new was added to the knowledge base."
    if saved:
        try:
            report = ingest(settings)
        except RagError as exc:
            closing = str(exc)
    lines = [o if isinstance(o, str) else _saved_sentence(o, report) for o in outcomes]
    if report is not None and any(_now_searchable(s, report) for s in saved):
        n = report.chunks
        closing = f"{n} passage{'s are' if n != 1 else ' is'} searchable now; ask about them."
    return UploadOutcome(saved, report, (*lines, closing))


def _check_acceptable(source: Path, name: str, safe: str, settings: Settings) -> None:
    """Refuse an upload of a type no loader reads, an empty one, or one over the size limit."""
    suffix = PurePosixPath(safe).suffix.lower()
    if suffix in IMAGE_SUFFIXES and not settings.ocr:
        raise UploadRejected(
            f"{name} was not added: images are read by OCR, which is off (set RAG_OCR=1)."
        )
    if suffix not in supported_suffixes(settings.ocr):
        kinds = ", ".join(sorted(supported_suffixes(settings.ocr)))
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


def _saved_sentence(saved: SavedUpload, report: IngestReport | None) -> str:
    """What became of one saved file, as a sentence for people."""
    if report is None:
        return f"{saved.uploaded_as} was saved as {saved.name} but is not ingested yet."
    failed = {f.path: f.error for f in report.failed}
    if saved.name in failed:
        return f"{saved.uploaded_as} was saved but could not be read: {failed[saved.name]}."
    if saved.already_present:
        return f"{saved.uploaded_as} is already in the knowledge base (as {saved.name})."
    notes = "".join(f" Note: {w.error}." for w in report.warnings if w.path == saved.name)
    if saved.renamed:
        return (
            f"Added {saved.uploaded_as} as {saved.name}, because a different file already had "
            f"that name.{notes}"
        )
    return f"Added {saved.name} to the knowledge base.{notes}"


def _now_searchable(saved: SavedUpload, report: IngestReport) -> bool:
    return not saved.already_present and saved.name not in {f.path for f in report.failed}


def _split(name: str) -> tuple[str, str]:
    path = PurePosixPath(name)
    return (path.stem, path.suffix) if path.suffix else (name, "")


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
