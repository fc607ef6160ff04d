"""Scanned pages for tests and the OCR benchmark: known sentences rendered to pixels.

A page is drawn with Pillow at a scanner's resolution, in a common serif font, so
the only way back to its words is OCR. :func:`scanned_pdf` wraps such pages in a
PDF with no text layer (Pillow's PDF writer embeds the bitmap and nothing else);
:func:`mixed_pdf` puts real text pages (fpdf2) and scanned ones in one file, to
check page numbers. :func:`word_accuracy` is the share of known words OCR found.
"""

from __future__ import annotations

import io
import random
import re
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from tests.documents import pdf_bytes

# Serif first: most scanned letters, books and invoices are set in a Times-like face.
_FONTS = (
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)
_A4_INCHES = (8.27, 11.69)

# Sentences with words no other test document uses, so a search for them finds
# only the scan. One list per page of the generated scans.
SCANNED_PAGES: tuple[str, ...] = (
    (
        "The lighthouse keeper logged every passing schooner in a leather ledger. "
        "Invoice 4471 for brass fittings was paid on the ninth of March. "
        "Replacement lenses arrive from the foundry in Whitby each autumn."
    ),
    (
        "Our warehouse in Harrogate ships walnut furniture within three working days. "
        "Customers may return unopened parcels within thirty days for a full refund. "
        "Questions about delivery go to the courier desk before noon."
    ),
    (
        "The orchard produced eleven crates of russet apples this season. "
        "Frost damaged the quince trees near the northern wall in February. "
        "Beekeepers moved the hives to the meadow beside the mill pond."
    ),
)


def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in _FONTS:
        if Path(path).is_file():
            return ImageFont.truetype(path, size_px)
    return ImageFont.load_default(size_px)


def page_image(
    text: str, *, dpi: int = 200, font_pt: float = 12, noisy: bool = False
) -> Image.Image:
    """An A4 page (greyscale) with ``text`` wrapped at one-inch margins, as a scanner sees it.

    ``noisy`` adds what real scans have: a grey paper tone, speckles, a slight
    blur and a skew of half a degree.
    """
    width, height = int(_A4_INCHES[0] * dpi), int(_A4_INCHES[1] * dpi)
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    font = _font(round(font_pt * dpi / 72))
    margin = dpi
    y = margin
    for line in _wrap(draw, text, font, width - 2 * margin):
        draw.text((margin, y), line, fill=0, font=font)
        y += round(font_pt * dpi / 72 * 1.5)
    if noisy:
        image = _age(image)
    return image


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: object, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:  # type: ignore[arg-type]
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


def _age(image: Image.Image) -> Image.Image:
    rng = random.Random(7)  # the same noise every run: results stay comparable
    image = image.point(lambda v: 40 + v * 0.78)  # ink is not black, paper not white
    pixels = image.load()
    for _ in range(image.width * image.height // 400):
        x, y = rng.randrange(image.width), rng.randrange(image.height)
        pixels[x, y] = rng.randrange(60, 200)
    image = image.filter(ImageFilter.GaussianBlur(0.6))
    return image.rotate(0.5, fillcolor=230, resample=Image.Resampling.BICUBIC)


def scanned_pdf(
    pages: list[str] | tuple[str, ...], *, dpi: int = 200, noisy: bool = False
) -> bytes:
    """A PDF of bitmap pages only: no text layer, as a scanner without OCR writes it."""
    images = [page_image(text, dpi=dpi, noisy=noisy) for text in pages]
    buffer = io.BytesIO()
    images[0].save(buffer, "PDF", resolution=dpi, save_all=True, append_images=images[1:])
    return buffer.getvalue()


def mixed_pdf(pages: list[tuple[str, str]], *, dpi: int = 200) -> bytes:
    """A PDF of ``("text", words)`` pages (a text layer) and ``("scan", words)`` ones (a bitmap)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for kind, text in pages:
        data = pdf_bytes([text]) if kind == "text" else scanned_pdf([text], dpi=dpi)
        writer.add_page(PdfReader(io.BytesIO(data)).pages[0])
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def image_bytes(text: str, fmt: str = "PNG", *, dpi: int = 200, transparent: bool = False) -> bytes:
    """A page of ``text`` as a PNG or JPEG file; ``transparent`` draws black on clear PNG."""
    image = page_image(text, dpi=dpi)
    if transparent:
        rgba = Image.new("RGBA", image.size, (0, 0, 0, 0))
        rgba.putalpha(image.point(lambda v: 255 - v))  # ink opaque, paper clear
        out: Image.Image = rgba
    else:
        out = image
    buffer = io.BytesIO()
    out.save(buffer, fmt, quality=90) if fmt == "JPEG" else out.save(buffer, fmt)
    return buffer.getvalue()


def words(text: str) -> list[str]:
    """Lower-case words and numbers of ``text``, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", text.lower())


def word_accuracy(known: str, found: str) -> float:
    """The share of ``known`` 's words (with repeats) that occur among ``found`` 's words."""
    want, got = words(known), set(words(found))
    return sum(w in got for w in want) / len(want) if want else 1.0
