"""Loaders: the bytes of one file to a :class:`~ingest.document.Document`.

Each format has one function ``load_<format>(source, data) -> Document``;
:func:`load_document` picks one by file suffix. Loaders take bytes, not paths,
so the pipeline reads each file exactly once (for its hash and its text) and
tests can feed them plain values.

A file that cannot be turned into text raises :class:`LoadError` whose message
is one sentence naming the problem ("encrypted PDF: cannot read without a
password"); the pipeline reports it under the file's name and goes on.

>>> doc = load_document("notes.md", b"# Setup\\n\\nRun make chat.\\n")
>>> [(s.heading, s.text) for s in doc.sections]
[('Setup', 'Setup\\n\\nRun make chat.')]
"""

from __future__ import annotations

import codecs
import io
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath

from ingest.document import Document, Section
from rag.errors import RagError


class LoadError(RagError):
    """A file could not be turned into text; the message says why, in one sentence."""


# --- plain text ---------------------------------------------------------------

_BOMS: tuple[tuple[bytes, str], ...] = (
    # UTF-32 first: its little-endian BOM starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Control characters other than tab, newline, carriage return and form feed
# hardly ever occur in text; a file full of them is binary whatever its name.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_MAX_CONTROL_RATIO = 0.01


def decode_text(data: bytes) -> str:
    """Bytes of a text file to ``str``: BOM-marked Unicode, else UTF-8, else cp1252, else latin-1.

    cp1252 (the Windows superset of latin-1) is tried before latin-1 because it
    maps curly quotes and dashes that latin-1 turns into control characters.
    Raises :class:`LoadError` for binary content (NUL bytes, many control characters).
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise LoadError(
                    f"damaged text file: it starts like {encoding} but {exc.reason}"
                ) from exc
    if b"\x00" in data:
        raise LoadError("binary file, not text: it contains NUL bytes")
    for encoding in ("utf-8", "cp1252", "latin-1"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if len(_CONTROL.findall(text)) > _MAX_CONTROL_RATIO * max(len(text), 1):
        raise LoadError("binary file, not text: it is full of control characters")
    return text


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_txt(source: str, data: bytes) -> Document:
    """A plain text file: one section without page or heading."""
    text = _normalise_newlines(decode_text(data))
    return Document(source, (Section(text),))


# --- markdown -------------------------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def load_md(source: str, data: bytes) -> Document:
    """A Markdown file, split into sections at ``#`` and underlined (setext) headings.

    Lines inside fenced code blocks are never taken for headings. Each section's
    text starts with its heading (without the ``#`` marks) so the heading is
    searchable too.
    """
    lines = _normalise_newlines(decode_text(data)).split("\n")
    sections: list[Section] = []
    heading: str | None = None  # the heading of the section being collected
    body: list[str] = []
    fence: str | None = None

    def flush() -> None:
        text = "\n".join(body).strip()
        if heading:
            text = f"{heading}\n\n{text}".strip()
        if text:
            sections.append(Section(text, heading=heading))

    for line in lines:
        fence_match = _FENCE.match(line)
        if fence_match:
            marker = fence_match.group(1)
            if fence is None:
                fence = marker[0] * 3
            elif marker.startswith(fence):
                fence = None
            body.append(line)
            continue
        if fence is not None:
            body.append(line)
            continue
        atx = _ATX.match(line)
        # A setext underline turns the one paragraph line just above it into a heading.
        setext = (
            _SETEXT.match(line)
            and body
            and body[-1].strip()
            and (len(body) == 1 or not body[-2].strip())
        )
        if atx:
            flush()
            heading = (atx.group(2) or "").strip() or None
            body = []
        elif setext:
            title = body.pop().strip()
            flush()
            heading = title
            body = []
        else:
            body.append(line)
    flush()
    return Document(source, tuple(sections))


# --- HTML -----------------------------------------------------------------------

_HTML_DROP = {
    "script",
    "style",
    "nav",
    "header",
    "footer",
    "noscript",
    "template",
    "svg",
    "head",
    "form",
    "button",
    "iframe",
    "object",
    "canvas",
}
_HTML_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_HTML_BLOCKS = {
    "p",
    "div",
    "section",
    "article",
    "main",
    "aside",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "table",
    "tr",
    "blockquote",
    "pre",
    "figure",
    "figcaption",
    "address",
    "details",
    "summary",
    "hr",
    "body",
    "html",
}
_HTML_CELLS = {"td", "th"}


def load_html(source: str, data: bytes) -> Document:
    """An HTML page's readable text, split into sections at ``<h1>``–``<h6>``.

    Scripts, styles, navigation, headers and footers are dropped. When the page
    has a ``<main>`` (or a single ``<article>``), only that is read. Text before
    the first heading gets the page ``<title>`` as its heading.
    """
    from bs4 import BeautifulSoup, Comment, Declaration, Doctype, NavigableString, Tag
    from bs4.element import CData, ProcessingInstruction

    skipped_strings = (Comment, Declaration, Doctype, CData, ProcessingInstruction)
    if b"\x00" in data[:4096] and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise LoadError("binary file, not HTML: it contains NUL bytes")
    # Given bytes, BeautifulSoup honours <meta charset> and BOMs before guessing.
    soup = BeautifulSoup(data, "html.parser")
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else ""
    root: Tag = soup
    main = soup.find("main")
    articles = soup.find_all("article")
    if isinstance(main, Tag):
        root = main
    elif len(articles) == 1:
        root = articles[0]

    sections: list[Section] = []
    heading: str | None = title or None
    parts: list[str] = []

    def flush() -> None:
        text = _tidy_html_text("".join(parts))
        if text:
            sections.append(Section(text, heading=heading))
        parts.clear()

    def walk(node: Tag, in_pre: bool) -> None:
        nonlocal heading
        for child in node.children:
            if isinstance(child, skipped_strings):
                continue
            if isinstance(child, NavigableString):
                parts.append(str(child) if in_pre else re.sub(r"\s+", " ", str(child)))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name.lower()
            if name in _HTML_DROP or child.get("hidden") is not None:
                continue
            if name in _HTML_HEADINGS:
                flush()
                heading = child.get_text(" ", strip=True) or heading
                parts.append(f"{heading}\n\n")
            elif name == "br":
                parts.append("\n")
            elif name in _HTML_BLOCKS:
                parts.append("\n\n")
                walk(child, in_pre or name == "pre")
                parts.append("\n\n")
            elif name in _HTML_CELLS:
                parts.append(" | ")
                walk(child, in_pre)
            else:
                walk(child, in_pre)

    try:
        walk(root, False)
    except RecursionError as exc:
        raise LoadError("HTML nested too deeply to read") from exc
    flush()
    return Document(source, tuple(sections))


def _tidy_html_text(text: str) -> str:
    lines = [line.strip(" \t|") if "|" in line else line.strip() for line in text.split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# --- PDF ------------------------------------------------------------------------


@contextmanager
def _captured_pypdf_log() -> Iterator[list[str]]:
    # pypdf logs recoverable damage ("incorrect startxref", "invalid object") on its
    # own logger, which would print into the ingest output. We keep the messages to
    # explain a page-count warning instead.
    messages: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("pypdf")
    handler = _Keep(level=logging.WARNING)
    old_propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = old_propagate


def load_pdf(source: str, data: bytes) -> Document:
    """A PDF, one section per page with its 1-based page number.

    Pages are extracted one at a time; a page that fails is skipped with a
    warning. When fewer pages come out than the file declares (pypdf silently
    skips a damaged page tree) the document carries a warning saying so.
    Empty, truncated, encrypted and not-really-PDF files raise :class:`LoadError`.
    """
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PyPdfError

    if not data.strip():
        raise LoadError("empty PDF: the file has no content")
    if b"%PDF-" not in data[:1024]:
        raise LoadError(
            "not a PDF: the file does not start with %PDF- (is it another format renamed to .pdf?)"
        )
    warnings: list[str] = []
    sections: list[Section] = []
    with _captured_pypdf_log() as pypdf_messages:
        try:
            reader = PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted:
                # An owner password alone only restricts editing: the empty user password opens it.
                if not reader.decrypt(""):
                    raise LoadError("encrypted PDF: cannot read without a password")
            declared = _declared_page_count(reader)
            pages = len(reader.pages)
        except LoadError:
            raise
        except (FileNotDecryptedError, DependencyError) as exc:
            raise LoadError(f"encrypted PDF: cannot read it ({exc})") from exc
        except NotImplementedError as exc:
            # pypdf decrypts only password ("Standard") encryption; certificate-based
            # /Adobe.PubSec files and other handlers raise this when opened.
            what = (
                "encrypted PDF: its encryption method is not supported"
                if b"/Encrypt" in data
                else "unsupported PDF feature"
            )
            raise LoadError(f"{what} ({_pdf_reason(exc)})") from exc
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise LoadError(f"damaged or truncated PDF: {_pdf_reason(exc)}") from exc
        extracted = 0
        for number in range(1, pages + 1):
            try:
                text = reader.pages[number - 1].extract_text() or ""
            except (FileNotDecryptedError, DependencyError) as exc:
                raise LoadError(f"encrypted PDF: cannot read it ({exc})") from exc
            except Exception as exc:  # noqa: BLE001 - pypdf raises many types on a bad page
                warnings.append(
                    f"page {number} could not be read ({_pdf_reason(exc)}) and was skipped"
                )
                continue
            extracted += 1
            text = text.strip()
            if text:
                sections.append(Section(text, page=number))
    if declared is not None and extracted < declared:
        why = f" ({pypdf_messages[0]})" if pypdf_messages else ""
        warnings.append(
            f"PDF declares {declared} pages but only {extracted} could be read; "
            f"the file is probably damaged{why}"
        )
    if not sections:
        if pages == 0:
            raise LoadError("damaged PDF: no pages could be read")
        raise LoadError(
            "PDF has no extractable text (scanned images need OCR, which is not supported)"
        )
    return Document(source, tuple(sections), tuple(warnings))


def _declared_page_count(reader: object) -> int | None:
    try:
        return int(reader.trailer["/Root"]["/Pages"]["/Count"])  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a broken page tree has no trustworthy count
        return None


def _pdf_reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# --- DOCX -----------------------------------------------------------------------

_DOCX_HEADING = re.compile(r"^(heading \d|title)$", re.IGNORECASE)


def load_docx(source: str, data: bytes) -> Document:
    """A Word .docx file, split into sections at paragraphs styled Title or Heading N.

    Table rows become lines of cells separated by ``|``.
    """
    import zipfile

    import docx
    from docx.table import Table

    if not data:
        raise LoadError("empty .docx: the file has no content")
    try:
        document = docx.Document(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise LoadError(
            "not a valid .docx file: it is not a zip archive (old .doc and password-protected "
            "Word files are not supported)"
        ) from exc
    except (KeyError, ValueError, OSError) as exc:
        raise LoadError(f"damaged .docx file: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - lxml raises its own types for broken XML
        raise LoadError(f"damaged .docx file: {type(exc).__name__}: {exc}") from exc

    sections: list[Section] = []
    heading: str | None = None
    body: list[str] = []

    def flush() -> None:
        text = "\n\n".join(body).strip()
        if text:
            sections.append(Section(text, heading=heading))

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                cells = [c.text.strip() for c in row.cells]
                line = " | ".join(c for c in cells if c)
                if line:
                    body.append(line)
            continue
        text = block.text.strip()
        style = block.style.name if block.style is not None else ""
        if text and _DOCX_HEADING.match(style or ""):
            flush()
            heading = text
            body = [text]
        elif text:
            body.append(text)
    flush()
    return Document(source, tuple(sections))


# --- dispatch ---------------------------------------------------------------------

LOADERS: dict[str, Callable[[str, bytes], Document]] = {
    ".md": load_md,
    ".markdown": load_md,
    ".txt": load_txt,
    ".text": load_txt,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
    ".docx": load_docx,
}
SUPPORTED_SUFFIXES = frozenset(LOADERS)


def load_document(source: str, data: bytes) -> Document:
    """Load ``data`` with the loader for ``source``'s suffix (case-insensitive).

    Raises :class:`LoadError` for empty files, files without any text, and
    anything the format's loader cannot read.
    """
    suffix = PurePosixPath(source).suffix.lower()
    loader = LOADERS.get(suffix)
    if loader is None:
        raise LoadError(f"unsupported file type {suffix or '(no extension)'}")
    if not data:
        raise LoadError("empty file: nothing to index")
    document = loader(source, data)
    if document.text_chars == 0:
        raise LoadError("no text found: the file is blank or holds only markup")
    return document
