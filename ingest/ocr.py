"""OCR: the text of scanned PDF pages and of image files, read offline.

RapidOCR (``rapidocr-onnxruntime``) detects and recognises text lines with the
PP-OCRv4 ONNX models inside its wheel, on the ONNX Runtime the embedder already
uses; ``pypdfium2`` renders a PDF page to pixels. Nothing is downloaded.

One :class:`Ocr` serves a whole ingest run: its engine is loaded on the first page
that needs it (a run without scans never imports RapidOCR, and the query path never
does), and it counts the pages it read for the progress bar. Each file gets a
:class:`FileOcr` from :meth:`Ocr.for_file`, which holds that file's time budget
(``RAG_OCR_SECONDS_PER_FILE``): a page costs seconds on a CPU, and a 500-page scan
must not hold the writer lock for an hour. Memory holds one page at a time,
rendered at ``OCR_DPI`` and never more than ``MAX_SIDE_PX`` on its longest side.

>>> ocr = Ocr(seconds_per_file=60)
>>> file_ocr = ocr.for_file()
>>> file_ocr.expired, ocr.stats.pages      # nothing loaded or read yet
(False, 0)
>>> print(FileOcr(ocr, deadline=0.0).skipped_warning())   # no page was skipped
None
>>> describe_pages([3, 4, 5, 9])
'pages 3-5, 9'
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from ingest.document import LoadError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from rag.settings import Settings

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_SIDE_PX",
    "OCR_DPI",
    "FileOcr",
    "Ocr",
    "OcrStats",
    "OcrUnavailable",
    "PdfPageImages",
    "describe_pages",
    "load_image",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# Pages are rendered at 200 dpi: at 150 dpi, noisy JPEG-compressed scans kept only 0.64
# of their words (words ran together), at 200 dpi with the space boost below 0.97, for
# twice the CPU (bench/RESULTS.md). An A4 page is then 1654 x 2339 grey pixels, 4 MB.
OCR_DPI = 200
# The longest side RapidOCR works on (its default, 2000, would shrink a 200 dpi A4
# page again); shrinking to it ourselves keeps a poster-sized page or a 50-megapixel
# photo out of memory.
MAX_SIDE_PX = 2400
# The recogniser often drops the space between two words ("thisseason"), which
# costs both BM25 and the reader. Its space probability is scaled by this before
# decoding: on the generated scans, 8 raised word accuracy at 200 dpi from 0.94 to
# 0.97-0.98 without splitting words (bench/RESULTS.md).
_SPACE_BOOST = 8.0
# Pillow refuses images above twice its own bomb limit (179 Mpx); this is the
# decoded size we accept at all, before shrinking (a 12,000 x 8,000 scan passes).
_MAX_IMAGE_PIXELS = 100_000_000


class OcrUnavailable(LoadError):
    """OCR was needed but its package is not installed (the file fails, the run goes on)."""


@dataclass
class OcrStats:
    """Pages read by OCR in one run and the seconds they took (engine loading included)."""

    pages: int = 0
    seconds: float = 0.0


class Ocr:
    """The OCR engine of one ingest run, loaded on first use; see the module docstring.

    ``seconds_per_file`` is each file's budget, ``threads`` ONNX Runtime's intra-op
    threads (0: one per core), ``on_page`` is called with the stats after every page.
    """

    def __init__(
        self,
        *,
        seconds_per_file: float,
        threads: int = 0,
        on_page: Callable[[OcrStats], None] | None = None,
    ) -> None:
        if seconds_per_file <= 0:
            raise ValueError(f"seconds_per_file must be positive, got {seconds_per_file}")
        self.seconds_per_file = seconds_per_file
        self.threads = threads
        self.on_page = on_page
        self.stats = OcrStats()
        self._engine: Any = None

    @classmethod
    def from_settings(
        cls, settings: Settings, on_page: Callable[[OcrStats], None] | None = None
    ) -> Ocr | None:
        """The run's OCR per ``RAG_OCR`` and ``RAG_OCR_SECONDS_PER_FILE``; ``None`` when off."""
        if not settings.ocr:
            return None
        return cls(
            seconds_per_file=settings.ocr_seconds_per_file,
            threads=settings.threads,
            on_page=on_page,
        )

    def for_file(self) -> FileOcr:
        """A reader for the next file, whose time budget starts now."""
        return FileOcr(self, time.monotonic() + self.seconds_per_file)

    def read(self, image: np.ndarray) -> str:
        """The text lines found in a greyscale (or BGR) image, top to bottom, one per line."""
        started = time.monotonic()
        result, _elapsed = self.engine(image)
        self.stats.pages += 1
        self.stats.seconds += time.monotonic() - started
        if self.on_page is not None:
            self.on_page(self.stats)
        return "\n".join(line[1] for line in result or () if line[1].strip())

    @property
    def engine(self) -> Any:
        """The RapidOCR engine, created on first use (about half a second)."""
        if self._engine is None:
            started = time.monotonic()
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:
                # "need OCR" (loaders.NEEDS_OCR): the file is read again once it is installed.
                raise OcrUnavailable(
                    "scanned pages and images need OCR, and its package rapidocr-onnxruntime is "
                    f"not installed ({exc}): run make install, or set RAG_OCR=0 to skip them"
                ) from exc
            # -1 is ONNX Runtime's own default, one thread per core, like RAG_THREADS=0.
            threads = self.threads or -1
            engine = RapidOCR(
                intra_op_num_threads=threads, inter_op_num_threads=1, max_side_len=MAX_SIDE_PX
            )
            _boost_spaces(engine, _SPACE_BOOST)
            self._engine = engine
            self.stats.seconds += time.monotonic() - started
        return self._engine


def _boost_spaces(engine: Any, factor: float) -> None:
    """Make ``engine``'s CTC decoder favour the space character by ``factor``.

    Wraps the recogniser's decoder (``text_rec.postprocess_op`` in
    rapidocr-onnxruntime 1.4): it gets the per-column class probabilities, and
    the space's column is scaled before the arg-max. Another version without
    that attribute is left as it is.
    """
    recogniser = getattr(engine, "text_rec", None)
    decode = getattr(recogniser, "postprocess_op", None)
    characters = getattr(decode, "character", None)
    if decode is None or not characters or " " not in characters:
        return
    space = characters.index(" ")

    def decode_with_spaces(preds: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        preds = preds.copy()
        preds[:, :, space] *= factor
        return decode(preds, *args, **kwargs)

    recogniser.postprocess_op = decode_with_spaces


class FileOcr:
    """OCR for one file within its time budget; pages past the budget are noted, not read."""

    def __init__(self, ocr: Ocr, deadline: float) -> None:
        self.ocr = ocr
        self.deadline = deadline
        self.pages = 0  # pages of this file read so far
        self.skipped: list[int] = []  # 1-based pages left unread when the budget ran out

    @property
    def expired(self) -> bool:
        """Whether this file's budget is spent (checked before each page, never mid-page).

        The first page is always read, so a file yields some text whatever the limit
        and the engine's loading time never counts against the limit alone.
        """
        return self.pages > 0 and time.monotonic() >= self.deadline

    def read(self, image: np.ndarray) -> str:
        """The text of one page image (see :meth:`Ocr.read`)."""
        self.pages += 1
        return self.ocr.read(image)

    def skipped_warning(self) -> str | None:
        """The sentence for the ingest report when pages were skipped, else ``None``."""
        if not self.skipped:
            return None
        n = len(self.skipped)
        return (
            f"OCR stopped at the {self.ocr.seconds_per_file:g} s limit per file: {n} "
            f"page{'s' if n != 1 else ''} without a text layer {'were' if n != 1 else 'was'} "
            f"not read ({describe_pages(self.skipped)}); raise RAG_OCR_SECONDS_PER_FILE "
            "to read them"
        )


class PdfPageImages:
    """Pages of one PDF rendered to greyscale pixels, one at a time, with pypdfium2.

    The document is opened on the first page asked for, so a PDF whose pages all
    have text is never opened twice. Use as a context manager; it closes the document.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._document: Any = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._document is not None:
            self._document.close()
            self._document = None

    def page(self, number: int) -> np.ndarray:
        """The 1-based page ``number`` at ``OCR_DPI``, shrunk to ``MAX_SIDE_PX`` if larger.

        Raises :class:`LoadError` when pdfium cannot open the file or render the page.
        """
        import numpy as np
        import pypdfium2 as pdfium

        try:
            if self._document is None:
                self._document = pdfium.PdfDocument(self._data)
            page = self._document[number - 1]
            try:
                width, height = page.get_size()  # in points, 1/72 inch
                scale = min(OCR_DPI / 72, MAX_SIDE_PX / max(width, height, 1.0))
                bitmap = page.render(scale=scale, grayscale=True)
                try:
                    return np.array(bitmap.to_pil().convert("L"))
                finally:
                    bitmap.close()
            finally:
                page.close()
        except pdfium.PdfiumError as exc:
            raise LoadError(f"page {number} could not be rendered for OCR ({exc})") from exc


def load_image(data: bytes) -> np.ndarray:
    """A ``.png`` or ``.jpg`` file as greyscale pixels ready for OCR.

    Photos are turned upright by their EXIF orientation, transparent parts become
    white (dark text on a transparent background would vanish into black), and the
    image is shrunk to ``MAX_SIDE_PX``; a JPEG is decoded at a reduced size directly.
    Raises :class:`LoadError` for a damaged file, another format, or too many pixels.
    """
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.format not in ("PNG", "JPEG"):
                raise LoadError(
                    f"not a PNG or JPEG image: the file holds {opened.format or 'another format'}"
                )
            width, height = opened.size
            if width * height > _MAX_IMAGE_PIXELS:
                raise LoadError(
                    f"image too large: {width} x {height} pixels, above "
                    f"{_MAX_IMAGE_PIXELS // 1_000_000} megapixels; scale it down first"
                )
            opened.draft("L", (MAX_SIDE_PX, MAX_SIDE_PX))  # JPEG only: decode at 1/2, 1/4...
            image = ImageOps.exif_transpose(opened)
            image = _on_white(image)
            image.thumbnail((MAX_SIDE_PX, MAX_SIDE_PX))
            return np.array(image)
    except LoadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise LoadError(f"not a readable image ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for truncated data
        raise LoadError(f"damaged image: {exc}") from exc


def _on_white(image: Image.Image) -> Image.Image:
    """The image in greyscale, transparent pixels composited over white."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L")
    return image.convert("L")


def describe_pages(pages: Iterable[int]) -> str:
    """Page numbers as ranges for a sentence: ``[3, 4, 5, 9]`` -> ``'pages 3-5, 9'``."""
    ranges: list[list[int]] = []
    for page in sorted(pages):
        if ranges and page == ranges[-1][1] + 1:
            ranges[-1][1] = page
        else:
            ranges.append([page, page])
    parts = [f"{a}-{b}" if a != b else f"{a}" for a, b in ranges]
    word = "page" if len(ranges) == 1 and ranges[0][0] == ranges[0][1] else "pages"
    return f"{word} {', '.join(parts)}"
