"""Finding the files to ingest in the docs folder.

Hidden files and folders (``.git``, ``.DS_Store``, editor swap files) and files
whose suffix no loader handles are skipped silently: they are not documents, and
listing them as failures would drown the real problems. Symlinks that resolve
outside the docs folder are refused (reported as failures) so a link cannot pull
arbitrary files of the machine into the index. A folder that cannot be listed
is reported in ``Scan.unlisted``: its files are unknown, not deleted.

>>> import tempfile
>>> docs = Path(tempfile.mkdtemp())
>>> for name in ("guide/install.md", "user guide.pdf", ".git/notes.md", "photo.gif"):
...     (docs / name).parent.mkdir(parents=True, exist_ok=True)
...     _ = (docs / name).write_text("text")
>>> [f.source for f in scan_docs(docs).files]
['guide/install.md', 'user guide.pdf']
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ingest.loaders import SUPPORTED_SUFFIXES
from ingest.report import Failure


@dataclass(frozen=True)
class SourceFile:
    """A file to ingest: ``source`` relative to the docs folder with ``/`` separators."""

    source: str
    path: Path


@dataclass
class Scan:
    """The outcome of scanning the docs folder."""

    files: list[SourceFile] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    # Folders os.walk could not list ("." for the docs folder itself).
    unlisted: list[Failure] = field(default_factory=list)


def scan_docs(docs_dir: Path, suffixes: frozenset[str] = SUPPORTED_SUFFIXES) -> Scan:
    """Every file under ``docs_dir`` with one of ``suffixes`` (lower case), sorted by source path.

    ``suffixes`` defaults to every supported type; the ingest leaves images out when
    OCR is off (:func:`~ingest.loaders.supported_suffixes`).
    """
    root = docs_dir.resolve()
    scan = Scan()

    def unlisted(exc: OSError) -> None:
        # os.walk skips a folder it cannot list and says nothing unless asked; the
        # ingest must know, or it would take the folder's files for deleted.
        folder = Path(exc.filename or docs_dir).relative_to(docs_dir).as_posix()
        reason = exc.strerror or str(exc)
        scan.unlisted.append(Failure(_printable(folder), f"cannot list the folder: {reason}"))

    for dirpath, dirnames, filenames in os.walk(docs_dir, onerror=unlisted, followlinks=False):
        here = Path(dirpath)
        # os.walk does not descend into symlinked folders: those leading outside are
        # refused, those inside are skipped (their files are found at their real path).
        for name in list(dirnames):
            if name.startswith("."):
                dirnames.remove(name)
            elif (here / name).is_symlink():
                dirnames.remove(name)
                _check_link(here / name, root, docs_dir, scan)
        dirnames.sort()
        for name in filenames:
            path = here / name
            if name.startswith(".") or Path(name).suffix.lower() not in suffixes:
                continue
            source = path.relative_to(docs_dir).as_posix()
            if not _is_utf8(source):
                scan.failed.append(
                    Failure(_printable(source), "file name is not valid UTF-8: rename the file")
                )
                continue
            if path.is_symlink() and not _check_link(path, root, docs_dir, scan):
                continue
            scan.files.append(SourceFile(source, path))
    scan.files.sort(key=lambda f: f.source)
    return scan


def _check_link(path: Path, root: Path, docs_dir: Path, scan: Scan) -> bool:
    """False (and a failure recorded) when the symlink ``path`` leads outside ``root``."""
    rel = path.relative_to(docs_dir).as_posix()
    try:
        target = path.resolve()
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError for a loop
        scan.failed.append(Failure(rel, "symlink loop: the link points back at itself"))
        return False
    if target == root or target.is_relative_to(root):
        return True
    scan.failed.append(
        Failure(rel, f"symlink points outside the docs folder (to {target}) and is refused")
    )
    return False


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    # os.walk hands undecodable name bytes over as surrogates; show them as escapes.
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
