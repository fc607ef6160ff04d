"""Loaders: the bytes of one file to :class:`~ingest.document.Section` s, as they are read.

Each format has one generator ``read_<format>(data, extraction)`` yielding sections;
:func:`read_sections` picks one by file suffix and :func:`load_document` collects
them into a :class:`~ingest.document.Document`. Loaders take bytes, not paths, so
the pipeline reads each file exactly once (for its hash and its text) and tests
can feed them plain values.

Loaders stream, because a file's size on disk says little about its cost: a
section is yielded as soon as it is complete and its text is counted on the
:class:`~ingest.limits.Extraction`, so a file over ``RAG_MAX_TEXT_MB`` is refused
as soon as it passes the limit and memory never holds a parse tree of the whole
file. HTML goes through lxml's event parser (no tree at all); a ``.docx`` is read
with ``lxml.etree.iterparse`` straight from its zip member, after the zip
directory showed that the member stays under ``RAG_MAX_INFLATED_MB``.

PDF pages without a text layer and ``.png``/``.jpg`` files are read by OCR
(:mod:`ingest.ocr`) when the :class:`~ingest.limits.Extraction` carries a reader.

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
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Any

from ingest.document import Document, LoadError, Section
from ingest.limits import Extraction, Limits
from ingest.ocr import IMAGE_SUFFIXES, FileOcr, PdfPageImages, load_image

__all__ = [
    "IMAGE_SUFFIXES",
    "LOADERS",
    "NEEDS_OCR",
    "SUPPORTED_SUFFIXES",
    "LoadError",
    "decode_text",
    "load_document",
    "read_sections",
    "supported_suffixes",
]

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


def read_txt(data: bytes, extraction: Extraction) -> Iterator[Section]:
    """A plain text file: one section without page or heading."""
    yield Section(extraction.add(_normalise_newlines(decode_text(data))))


# --- markdown -------------------------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def read_md(data: bytes, extraction: Extraction) -> Iterator[Section]:
    """A Markdown file, split into sections at ``#`` and underlined (setext) headings.

    Lines inside fenced code blocks are never taken for headings. Each section's
    text starts with its heading (without the ``#`` marks) so the heading is
    searchable too.
    """
    heading: str | None = None  # the heading of the section being collected
    body: list[str] = []
    fence: str | None = None
    for line in _lines(_normalise_newlines(decode_text(data))):
        extraction.add(line)
        fence_match = _FENCE.match(line)
        if fence_match or fence is not None:
            fence = _next_fence(fence, fence_match.group(1) if fence_match else None)
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
        if atx or setext:
            title = ((atx.group(2) or "").strip() or None) if atx else body.pop().strip()
            yield from _md_section(heading, body)
            heading, body = title, []
        else:
            body.append(line)
    yield from _md_section(heading, body)


def _lines(text: str) -> Iterator[str]:
    """``text.split("\\n")``, one line at a time."""
    start = 0
    while (end := text.find("\n", start)) >= 0:
        yield text[start:end]
        start = end + 1
    yield text[start:]


def _next_fence(fence: str | None, marker: str | None) -> str | None:
    """The open code fence after a line: opened by a marker, closed by a matching one."""
    if marker is None:
        return fence
    if fence is None:
        return marker[0] * 3
    return None if marker.startswith(fence) else fence


def _md_section(heading: str | None, body: list[str]) -> Iterator[Section]:
    text = "\n".join(body).strip()
    if heading:
        text = f"{heading}\n\n{text}".strip()
    if text:
        yield Section(text, heading=heading)


# --- HTML -----------------------------------------------------------------------

_HTML_DROP = frozenset(
    "script style nav header footer noscript template svg head form button iframe object "
    "canvas".split()
)
_HTML_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_HTML_BLOCKS = frozenset(
    "p div section article main aside li ul ol dl dt dd table tr blockquote pre figure "
    "figcaption address details summary hr body html".split()
)
_HTML_CELLS = frozenset({"td", "th"})
# Strings that do not count as a heading's text (BeautifulSoup's get_text skips them too).
_HTML_NOT_TEXT = frozenset({"script", "style", "template", "rt", "rp"})
_FEED_CHARS = 1 << 20
_SPACES = re.compile(r"\s+")


def read_html(data: bytes, extraction: Extraction) -> Iterator[Section]:
    """An HTML page's readable text, split into sections at ``<h1>``–``<h6>``.

    Scripts, styles, navigation, headers and footers are dropped. When the page
    has a ``<main>`` (or a single ``<article>``), only that is read. Text before
    the first heading gets the page ``<title>`` as its heading.

    The page is parsed twice with lxml's event parser, building no tree: once for
    its outline (title, ``<main>``, ``<article>`` s), once for the text.
    """
    from bs4.dammit import UnicodeDammit

    if b"\x00" in data[:4096] and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise LoadError("binary file, not HTML: it contains NUL bytes")
    # UnicodeDammit honours BOMs and <meta charset> before guessing, as BeautifulSoup does.
    markup = UnicodeDammit(data, is_html=True).unicode_markup
    if markup is None:
        markup = data.decode("utf-8", "replace")
    outline = _HtmlOutline()
    for _ in _parse_html(markup, outline):
        pass
    yield from _parse_html(markup, _HtmlText(outline, extraction))


def _parse_html(markup: str, target: Any) -> Iterator[Section]:
    """Feed ``markup`` to an lxml parser with ``target`` and yield the sections it completes."""
    from lxml import etree

    parser = etree.HTMLParser(target=target, no_network=True, remove_pis=True)
    try:
        for start in range(0, len(markup), _FEED_CHARS):
            parser.feed(markup[start : start + _FEED_CHARS])
            yield from target.take()
        parser.close()
    except etree.LxmlError as exc:
        raise LoadError(f"damaged HTML: {exc}") from exc
    yield from target.take()


class _HtmlOutline:
    """lxml parser target noting what decides how a page is read: title, main, articles."""

    def __init__(self) -> None:
        self.title: str | None = None
        self.has_main = False
        self.articles = 0
        self._in_title = False
        self._title: list[str] = []
        self._data: list[str] = []

    def start(self, tag: str, attrib: object) -> None:
        self._flush()
        if tag == "title" and self.title is None:
            self._in_title = True
        self.has_main = self.has_main or tag == "main"
        self.articles += tag == "article"

    def end(self, tag: str) -> None:
        self._flush()
        if tag == "title" and self._in_title:
            self._in_title = False
            self.title = " ".join(self._title)

    def data(self, text: str) -> None:
        if self._in_title:
            self._data.append(text)

    def comment(self, text: str) -> None:
        self._flush()

    def close(self) -> None:
        self.end("title")

    def take(self) -> list[Section]:
        return []

    def _flush(self) -> None:
        text = "".join(self._data).strip()
        self._data.clear()
        if text:
            self._title.append(text)


class _HtmlText:
    """lxml parser target turning a page's events into sections (see :func:`read_html`).

    Depths say where the parser is: inside the part that is read (``root``), a
    dropped element, a heading, a ``<pre>``. Text between two events is one
    string, as BeautifulSoup sees it, before whitespace is collapsed.
    """

    def __init__(self, outline: _HtmlOutline, extraction: Extraction) -> None:
        self.extraction = extraction
        self.root = "main" if outline.has_main else "article" if outline.articles == 1 else None
        self.root_depth: int | None = 0 if self.root is None else None
        self.depth = 0
        self.drop_depth: int | None = None
        self.heading_depth: int | None = None
        self.skip_depth: int | None = None  # strings inside a heading that are not its text
        self.pre_depth: int | None = None
        self.heading: str | None = outline.title or None
        self.heading_text: list[str] = []
        self.parts: list[str] = []
        self.pending: list[str] = []
        self.ready: list[Section] = []

    @property
    def reading(self) -> bool:
        return self.root_depth is not None and self.drop_depth is None

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        self._flush_data()
        self.depth += 1
        if self.root_depth is None:
            if tag == self.root:
                self.root_depth, self.root = self.depth, None  # only the first one is read
            return
        if not self.reading:
            return
        if self.heading_depth is not None:
            if tag in _HTML_NOT_TEXT and self.skip_depth is None:
                self.skip_depth = self.depth
        elif tag in _HTML_DROP or "hidden" in attrib:
            self.drop_depth = self.depth
        elif tag in _HTML_HEADINGS:
            self._flush_section()
            self.heading_depth, self.heading_text = self.depth, []
        elif tag == "br":
            self._append("\n")
        elif tag in _HTML_BLOCKS:
            self._append("\n\n")
            if tag == "pre" and self.pre_depth is None:
                self.pre_depth = self.depth
        elif tag in _HTML_CELLS:
            self._append(" | ")

    def end(self, tag: str) -> None:
        self._flush_data()
        depth, self.depth = self.depth, self.depth - 1
        if self.drop_depth == depth:
            self.drop_depth = None
        elif not self.reading:
            return
        elif self.skip_depth == depth:
            self.skip_depth = None
        elif self.heading_depth == depth:
            self.heading_depth = None
            self.heading = " ".join(self.heading_text) or self.heading
            self._append(f"{self.heading}\n\n")
        elif self.heading_depth is None and tag in _HTML_BLOCKS:
            self._append("\n\n")
        if self.pre_depth == depth:
            self.pre_depth = None
        if self.root_depth == depth:
            self.root_depth = None  # past the part that is read: the rest is ignored

    def data(self, text: str) -> None:
        self.pending.append(text)

    def comment(self, text: str) -> None:
        self._flush_data()

    def close(self) -> None:
        self._flush_data()
        self._flush_section()

    def take(self) -> list[Section]:
        ready, self.ready = self.ready, []
        return ready

    def _flush_data(self) -> None:
        text = "".join(self.pending)
        self.pending.clear()
        if not text or not self.reading:
            return
        if self.heading_depth is not None:
            if self.skip_depth is None and text.strip():
                self.heading_text.append(self.extraction.add(text.strip()))
        else:
            self._append(text if self.pre_depth is not None else _SPACES.sub(" ", text))

    def _append(self, text: str) -> None:
        self.parts.append(self.extraction.add(text))
        if len(self.parts) > 4096:  # many small strings cost far more than one long one
            self.parts[:] = ["".join(self.parts)]

    def _flush_section(self) -> None:
        text = _tidy_html_text("".join(self.parts))
        self.parts.clear()
        if text:
            self.ready.append(Section(text, heading=self.heading))


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


# The words every "this file needs OCR" error holds: the ingest state remembers failed
# files by hash and does not parse them again, except these once OCR can read them.
NEEDS_OCR = "need OCR"
# A page with fewer characters than this in its text layer (none, or a stamped page
# number over a scan) is read by OCR instead.
_MIN_TEXT_LAYER_CHARS = 10


def read_pdf(data: bytes, extraction: Extraction) -> Iterator[Section]:
    """A PDF, one section per page with its 1-based page number.

    Pages are extracted one at a time; a page that fails is skipped with a
    warning. A page without a text layer is rendered and read by OCR when
    ``extraction.ocr`` is set (its section says ``ocr=True``), until the file's
    OCR time budget runs out; the pages left unread are named in a warning.
    When fewer pages come out than the file declares (pypdf silently
    skips a damaged page tree) the document carries a warning saying so.
    Empty, truncated, encrypted and not-really-PDF files raise :class:`LoadError`.
    """
    if not data.strip():
        raise LoadError("empty PDF: the file has no content")
    if b"%PDF-" not in data[:1024]:
        raise LoadError(
            "not a PDF: the file does not start with %PDF- (is it another format renamed to .pdf?)"
        )
    extracted, found, scanned = 0, False, 0
    with _captured_pypdf_log() as pypdf_messages, PdfPageImages(data) as images:
        reader, declared, pages = _open_pdf(data)
        for number in range(1, pages + 1):
            text = _page_text(reader, number, extraction.warnings)
            if text is None:
                continue
            extracted += 1
            ocr = False
            if len(text) < _MIN_TEXT_LAYER_CHARS and extraction.ocr is not None:
                scanned += 1
                if read := _ocr_page(images, number, extraction.ocr, extraction.warnings):
                    text, ocr = read, True
            if text:
                found = True
                yield Section(extraction.add(text), page=number, ocr=ocr)
    if extraction.ocr is not None and (warning := extraction.ocr.skipped_warning()):
        extraction.warnings.append(warning)
    if declared is not None and extracted < declared:
        why = f" ({pypdf_messages[0]})" if pypdf_messages else ""
        extraction.warnings.append(
            f"PDF declares {declared} pages but only {extracted} could be read; "
            f"the file is probably damaged{why}"
        )
    if not found:
        if pages == 0:
            raise LoadError("damaged PDF: no pages could be read")
        if extraction.ocr is None:
            raise LoadError(
                f"PDF has no extractable text (scanned pages {NEEDS_OCR}, which is off: "
                "set RAG_OCR=1 to read them)"
            )
        if scanned:
            raise LoadError("PDF has no text layer and OCR found no text on its pages")
        raise LoadError("PDF has no extractable text")


def _ocr_page(images: PdfPageImages, number: int, ocr: FileOcr, warnings: list[str]) -> str:
    """The OCR text of page ``number``; ``""`` when the budget is spent or it cannot render."""
    if ocr.expired:
        ocr.skipped.append(number)
        return ""
    try:
        pixels = images.page(number)
    except LoadError as exc:
        warnings.append(f"{exc} and was skipped")
        return ""
    return ocr.read(pixels).strip()


def read_image(data: bytes, extraction: Extraction) -> Iterator[Section]:
    """A ``.png`` or ``.jpg`` file: one page, read by OCR (``ocr=True``, page 1)."""
    if extraction.ocr is None:
        raise LoadError(f"image files {NEEDS_OCR}, which is off: set RAG_OCR=1 to read them")
    text = extraction.ocr.read(load_image(data)).strip()
    if not text:
        raise LoadError("OCR found no text in the image")
    yield Section(extraction.add(text), page=1, ocr=True)


def _open_pdf(data: bytes) -> tuple[Any, int | None, int]:
    """The reader, the page count the file declares (None when unknown) and the pages found."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            # An owner password alone only restricts editing: the empty user password opens it.
            if not reader.decrypt(""):
                raise LoadError("encrypted PDF: cannot read without a password")
        return reader, _declared_page_count(reader), len(reader.pages)
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


def _page_text(reader: Any, number: int, warnings: list[str]) -> str | None:
    """The stripped text of one page; ``None`` (and a warning) when the page cannot be read."""
    from pypdf.errors import DependencyError, FileNotDecryptedError

    try:
        return (reader.pages[number - 1].extract_text() or "").strip()
    except (FileNotDecryptedError, DependencyError) as exc:
        raise LoadError(f"encrypted PDF: cannot read it ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types on a bad page
        warnings.append(f"page {number} could not be read ({_pdf_reason(exc)}) and was skipped")
        return None


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
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_W_BODY, _W_P, _W_R, _W_T, _W_TR, _W_TC = (f"{_W}{n}" for n in ("body", "p", "r", "t", "tr", "tc"))
_W_HYPERLINK, _W_BR, _W_VAL, _W_TYPE = (f"{_W}{n}" for n in ("hyperlink", "br", "val", "type"))
# What python-docx's Run.text makes of a run's other content elements.
_RUN_TEXT = {f"{_W}tab": "\t", f"{_W}ptab": "\t", f"{_W}cr": "\n", f"{_W}noBreakHyphen": "-"}
_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"


def read_docx(data: bytes, extraction: Extraction) -> Iterator[Section]:
    """A Word .docx file, split into sections at paragraphs styled Title or Heading N.

    Table rows become lines of cells separated by ``|``. The body is read with
    ``iterparse`` and every paragraph is dropped from memory once its text is out.
    """
    if not data:
        raise LoadError("empty .docx: the file has no content")
    heading: str | None = None
    body: list[str] = []
    with _docx_errors(), _open_zip(data) as package:
        document, styles = _docx_parts(package, extraction.limits)
        is_heading = _docx_heading_styles(package, styles)
        for text, styled_heading in _docx_blocks(package.open(document), is_heading):
            text = extraction.add(text.strip())
            if text and styled_heading:
                yield from _docx_section(heading, body)
                heading, body = text, [text]
            elif text:
                body.append(text)
        yield from _docx_section(heading, body)


@contextmanager
def _open_zip(data: bytes) -> Iterator[zipfile.ZipFile]:
    try:
        package = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise LoadError(
            "not a valid .docx file: it is not a zip archive (old .doc and password-protected "
            "Word files are not supported)"
        ) from exc
    with package:
        yield package


@contextmanager
def _docx_errors() -> Iterator[None]:
    """Any failure of zip or XML while reading becomes one sentence about a damaged file."""
    from lxml import etree

    try:
        yield
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, zlib.error) as exc:
        raise LoadError(f"damaged .docx file: {exc}") from exc
    except etree.LxmlError as exc:
        raise LoadError(f"damaged .docx file: {type(exc).__name__}: {exc}") from exc


def _docx_parts(package: zipfile.ZipFile, limits: Limits) -> tuple[str, str | None]:
    """The zip members of the main document and its styles, checked against the inflated limit."""
    document = _relationship(package, "_rels/.rels", "/officeDocument", "") or "word/document.xml"
    folder, _, name = document.rpartition("/")
    styles = _relationship(package, f"{folder}/_rels/{name}.rels", "/styles", folder)
    if styles is not None and styles not in package.namelist():
        styles = None  # python-docx reads such a file with default styles too
    for member in (document, styles):
        if member is not None:
            limits.check_inflated(member, package.getinfo(member).file_size)
    return document, styles


def _relationship(package: zipfile.ZipFile, rels: str, kind: str, folder: str) -> str | None:
    """The zip member a relationship of type ``...kind`` in ``rels`` points at, if any."""
    if rels not in package.namelist() or package.getinfo(rels).file_size > 1 << 20:
        return None  # a relationships file is a few hundred bytes; a huge one is not read
    for rel in _parse_xml(package.read(rels)).iter(_REL):
        if rel.get("Type", "").endswith(kind) and rel.get("TargetMode") != "External":
            target = rel.get("Target", "")
            path = target if target.startswith("/") else f"{folder}/{target}"
            return str(PurePosixPath(path.lstrip("/")))
    return None


def _docx_heading_styles(
    package: zipfile.ZipFile, styles: str | None
) -> Callable[[str | None], bool]:
    """Whether a paragraph style id is a heading style (Title, Heading N) of this document.

    As python-docx does, a paragraph without a style, or with an unknown one, has
    the default paragraph style.
    """
    names: dict[str, str] = {}
    default = ""
    if styles is not None:
        for style in _parse_xml(package.read(styles)).iter(f"{_W}style"):
            if style.get(f"{_W}type") != "paragraph":
                continue
            name_el = style.find(f"{_W}name")
            name = name_el.get(_W_VAL, "") if name_el is not None else ""
            names[style.get(f"{_W}styleId", "")] = name
            if style.get(f"{_W}default") in ("1", "true", "on"):
                default = name
    headings = {sid for sid, name in names.items() if _DOCX_HEADING.match(name)}
    default_is_heading = bool(_DOCX_HEADING.match(default))
    return lambda sid: sid in headings if sid in names else default_is_heading


def _parse_xml(data: bytes) -> Any:
    from lxml import etree

    # No entity expansion: a few hundred bytes of nested entities can expand to gigabytes.
    return etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))


def _docx_blocks(
    xml: Any, is_heading: Callable[[str | None], bool]
) -> Iterator[tuple[str, bool]]:
    """The body's paragraphs and table rows in order, as ``(text, has a heading style)``."""
    from lxml import etree

    events = etree.iterparse(
        xml, events=("end",), tag=(_W_P, _W_TR), resolve_entities=False, no_network=True
    )
    for _event, element in events:
        parent = element.getparent()
        if element.tag == _W_TR:
            if parent is not None and _parent_tag(parent) == _W_BODY:
                yield _row_line(element), False
            _forget(element)
        elif parent is not None and parent.tag == _W_BODY:
            yield _paragraph_text(element), is_heading(_paragraph_style(element))
            _forget(element)
        elif next(element.iterancestors(_W_TR), None) is None:
            _forget(element)  # in a content control or a text box: not body text
        # A paragraph in a table cell waits for its row.


def _parent_tag(element: Any) -> str | None:
    parent = element.getparent()
    return parent.tag if parent is not None else None


def _forget(element: Any) -> None:
    """Free a parsed element and its earlier siblings: iterparse would keep the whole tree."""
    element.clear(keep_tail=False)
    parent = element.getparent()
    while element.getprevious() is not None:
        del parent[0]


def _paragraph_style(paragraph: Any) -> str | None:
    style = paragraph.find(f"{_W}pPr/{_W}pStyle")
    return style.get(_W_VAL) if style is not None else None


def _paragraph_text(paragraph: Any) -> str:
    """A paragraph's text as python-docx gives it: its runs and the runs of its hyperlinks."""
    parts: list[str] = []
    for child in paragraph:
        if child.tag == _W_R:
            parts.append(_run_text(child))
        elif child.tag == _W_HYPERLINK:
            parts.extend(_run_text(run) for run in child if run.tag == _W_R)
    return "".join(parts)


def _run_text(run: Any) -> str:
    parts: list[str] = []
    for child in run:
        if child.tag == _W_T:
            parts.append(child.text or "")
        elif child.tag == _W_BR:  # a line break; page and column breaks are no text
            parts.append("\n" if child.get(_W_TYPE, "textWrapping") == "textWrapping" else "")
        else:
            parts.append(_RUN_TEXT.get(child.tag, ""))
    return "".join(parts)


def _row_line(row: Any) -> str:
    """A table row as ``cell | cell``: each cell's paragraphs, empty cells left out."""
    cells = (
        "\n".join(_paragraph_text(p) for p in cell if p.tag == _W_P).strip()
        for cell in row
        if cell.tag == _W_TC
    )
    return " | ".join(c for c in cells if c)


def _docx_section(heading: str | None, body: list[str]) -> Iterator[Section]:
    text = "\n\n".join(body).strip()
    if text:
        yield Section(text, heading=heading)


# --- dispatch ---------------------------------------------------------------------

Loader = Callable[[bytes, Extraction], Iterator[Section]]

LOADERS: dict[str, Loader] = {
    ".md": read_md,
    ".markdown": read_md,
    ".txt": read_txt,
    ".text": read_txt,
    ".html": read_html,
    ".htm": read_html,
    ".pdf": read_pdf,
    ".docx": read_docx,
    **dict.fromkeys(IMAGE_SUFFIXES, read_image),
}
SUPPORTED_SUFFIXES = frozenset(LOADERS)


def supported_suffixes(ocr: bool) -> frozenset[str]:
    """The suffixes that are ingested: images only when OCR (``RAG_OCR``) is on.

    >>> ".png" in supported_suffixes(True), ".png" in supported_suffixes(False)
    (True, False)
    """
    return SUPPORTED_SUFFIXES if ocr else SUPPORTED_SUFFIXES - IMAGE_SUFFIXES


def read_sections(source: str, data: bytes, extraction: Extraction) -> Iterator[Section]:
    """The sections of ``data``, read lazily by the loader for ``source``'s suffix.

    Unsupported types and empty files raise :class:`LoadError` at once; a file
    without any text, over a limit or unreadable raises it while being read.
    Warnings land in ``extraction.warnings``.

    >>> extraction = Extraction()
    >>> [s.text for s in read_sections("a.txt", b"alpha", extraction)], extraction.chars
    (['alpha'], 5)
    """
    suffix = PurePosixPath(source).suffix.lower()
    loader = LOADERS.get(suffix)
    if loader is None:
        raise LoadError(f"unsupported file type {suffix or '(no extension)'}")
    if not data:
        raise LoadError("empty file: nothing to index")
    return _with_text(loader(data, extraction))


def _with_text(sections: Iterator[Section]) -> Iterator[Section]:
    found = False
    for section in sections:
        found = found or bool(section.text.strip())
        yield section
    if not found:
        raise LoadError("no text found: the file is blank or holds only markup")


def load_document(
    source: str, data: bytes, limits: Limits | None = None, ocr: FileOcr | None = None
) -> Document:
    """Load ``data`` whole with the loader for ``source``'s suffix (case-insensitive).

    ``limits`` bound what the file may cost (none by default); ``ocr`` reads scanned
    pages and images (none by default: they fail or are skipped). Raises
    :class:`LoadError` for empty files, files without any text, and anything
    the format's loader cannot read.
    """
    extraction = Extraction(limits or Limits(), ocr=ocr)
    sections = tuple(read_sections(source, data, extraction))
    return Document(source, sections, tuple(extraction.warnings))
