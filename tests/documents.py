"""Real documents for tests: PDFs built with fpdf2, .docx with python-docx, small corpora.

Every builder returns bytes (or writes files) made by the real libraries, so
the loaders are tested against what users actually have, including damaged
variants made by cutting or overwriting real bytes.
"""

from __future__ import annotations

import io
from pathlib import Path


def pdf_bytes(
    pages: list[str], *, user_password: str | None = None, owner_password: str | None = None
) -> bytes:
    """A real PDF with one page per string; optionally encrypted (AES-128)."""
    from fpdf import FPDF
    from fpdf.enums import EncryptionMethod

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    if user_password is not None or owner_password is not None:
        pdf.set_encryption(
            owner_password=owner_password or "owner-secret",
            user_password=user_password or "",
            encryption_method=EncryptionMethod.AES_128,
        )
    return bytes(pdf.output())


def truncated_pdf_bytes(pages: list[str]) -> bytes:
    """A real PDF cut in half, as an interrupted download leaves it."""
    data = pdf_bytes(pages)
    return data[: len(data) // 2]


def pdf_declaring_more_pages(pages: list[str], declared: int) -> bytes:
    """A PDF whose page tree declares ``declared`` pages but links only ``len(pages)``.

    This is the silent failure NOTES.md describes (a damaged file yields fewer
    pages than it declares, with no exception): pypdf reads the linked pages
    and says nothing about the missing ones. The count is rewritten with the
    same number of bytes so the cross-reference offsets stay valid.
    """
    data = pdf_bytes(pages)
    old, new = b"/Count %d" % len(pages), b"/Count %d" % declared
    assert len(old) == len(new) and data.count(old) == 1, "use page counts of equal width"
    return data.replace(old, new)


def certificate_encrypted_pdf_bytes() -> bytes:
    """A PDF whose /Encrypt dictionary names the certificate handler /Adobe.PubSec.

    That is what Acrobat writes for "encrypt with certificate"; pypdf only knows
    password ("Standard") encryption and raises NotImplementedError on opening it.
    pypdf's writer has no public way to write another handler, so its encrypt
    entry is set directly.
    """
    from pypdf import PdfWriter
    from pypdf.generic import (
        ArrayObject,
        ByteStringObject,
        DictionaryObject,
        NameObject,
        NumberObject,
    )

    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    encrypt = DictionaryObject(
        {
            NameObject("/Filter"): NameObject("/Adobe.PubSec"),
            NameObject("/SubFilter"): NameObject("/adbe.pkcs7.s4"),
            NameObject("/V"): NumberObject(4),
            NameObject("/Length"): NumberObject(128),
            NameObject("/Recipients"): ArrayObject([ByteStringObject(b"\x30\x00")]),
        }
    )
    writer._add_object(encrypt)
    writer._encrypt_entry = encrypt
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def docx_bytes(blocks: list[tuple[str, str]], table: list[list[str]] | None = None) -> bytes:
    """A real .docx: ``blocks`` are (style, text); style "Title", "Heading N" or "" (body)."""
    import docx

    document = docx.Document()
    for style, text in blocks:
        if style == "Title":
            document.add_heading(text, level=0)
        elif style.startswith("Heading "):
            document.add_heading(text, level=int(style.split()[1]))
        else:
            document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, cell in enumerate(row):
                grid.cell(r, c).text = cell
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


# Prose for corpora: distinct topics so chunks and searches are easy to tell apart.
TOPICS: dict[str, str] = {
    "volcanoes": (
        "Volcanoes form where magma reaches the surface of the crust. Shield volcanoes have "
        "gentle slopes built by fluid basalt lava, while stratovolcanoes are steep cones of "
        "alternating ash and lava layers. Eruptions are monitored with seismometers, tiltmeters "
        "and gas sensors that measure sulfur dioxide."
    ),
    "bread": (
        "Sourdough bread rises thanks to wild yeast and lactic acid bacteria living in a starter. "
        "The starter is fed flour and water every day. A long cold fermentation develops flavour, "
        "and baking in a covered pot traps steam so the crust stays thin and crisp."
    ),
    "chess": (
        "In chess the opening phase develops knights and bishops toward the centre, castles the "
        "king to safety and connects the rooks. The middlegame is about plans and tactics such as "
        "forks, pins and skewers. Endgames reward an active king and passed pawns."
    ),
    "tides": (
        "Ocean tides are caused mainly by the gravitational pull of the Moon and, to a lesser "
        "degree, the Sun. Spring tides happen at new and full moon when both pull together; neap "
        "tides happen at the quarter moons. Harbours publish tide tables for sailors."
    ),
    "bees": (
        "Honey bees communicate the direction of flowers with the waggle dance. A colony has one "
        "queen, thousands of female workers and some male drones. Workers make wax, tend the brood "
        "and turn nectar into honey by evaporating water from it."
    ),
}


def prose(topic: str, paragraphs: int = 1) -> str:
    """``paragraphs`` numbered paragraphs about one topic."""
    base = TOPICS[topic]
    return "\n\n".join(f"({i + 1}) {base}" for i in range(paragraphs))


def write_corpus(docs: Path, *, paragraphs: int = 1) -> dict[str, Path]:
    """A small mixed corpus (md, txt, html, pdf, docx) under ``docs``; returns {source: path}."""
    files: dict[str, bytes] = {
        "volcanoes.md": f"# Volcanoes\n\n{prose('volcanoes', paragraphs)}\n\n## Monitoring\n\n"
        "Seismometers record the small earthquakes before an eruption.\n".encode(),
        "kitchen/bread.txt": prose("bread", paragraphs).encode(),
        "games/chess.html": (
            "<html><head><title>Chess</title><script>track()</script></head><body>"
            "<nav>Home | Games</nav><main><h1>Chess openings</h1>"
            f"<p>{prose('chess', paragraphs)}</p>"
            "</main><footer>(c) club</footer></body></html>"
        ).encode(),
        "sea/tides guide.pdf": pdf_bytes(
            [prose("tides", paragraphs), "Tide tables list high and low water."]
        ),
        "bees é.docx": docx_bytes([("Heading 1", "Bees"), ("", prose("bees", paragraphs))]),
    }
    paths: dict[str, Path] = {}
    for source, data in files.items():
        path = docs / source
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[source] = path
    return paths


# --- hostile files: small on disk, or cheap to read, and very costly to process -----------

_W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def zip_bomb_docx(inflated_mib: int, paragraph: str = "All work and no play. " * 8) -> bytes:
    """A real .docx whose ``word/document.xml`` inflates to ``inflated_mib`` MiB of paragraphs.

    The rest of the package comes from python-docx; the body is written straight
    into the zip, so building it never holds the inflated text in memory. Its
    paragraphs repeat, so the file is a few hundred KB.
    """
    import zipfile

    base = zipfile.ZipFile(io.BytesIO(docx_bytes([("", "placeholder")])))
    out = io.BytesIO()
    row = f"<w:p><w:r><w:t>{paragraph}</w:t></w:r></w:p>".encode()
    block = row * (1 << 20 // len(row) + 1)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bomb:
        for info in base.infolist():
            if info.filename != "word/document.xml":
                bomb.writestr(info, base.read(info.filename))
                continue
            with bomb.open("word/document.xml", "w", force_zip64=True) as body:
                body.write(f'<?xml version="1.0"?><w:document xmlns:w="{_W_NS}"><w:body>'.encode())
                for _ in range(inflated_mib * (1 << 20) // len(block)):
                    body.write(block)
                body.write(b"</w:body></w:document>")
    return out.getvalue()


def markup_heavy_html(total_mib: int, text_paragraphs: int = 60) -> bytes:
    """An HTML page of about ``total_mib`` MiB that is nearly all markup and script.

    ``text_paragraphs`` paragraphs of prose (under headings) are spread through it,
    so it holds little text: few chunks, much parsing.
    """
    names = sorted(TOPICS)
    noise = (
        '<div class="wrap" data-track="{n}"><span class="x" style="color:#333">'
        '<a href="/item/{n}?ref=nav&amp;s=1"><img src="/i/{n}.png" alt=""></a></span>'
        "<script>window.t{n} = [1, 2, 3];</script></div>\n"
    )
    unit = "".join(noise.format(n=n) for n in range(40)).encode()
    per_paragraph = max(total_mib * (1 << 20) // len(unit) // text_paragraphs, 1)
    parts = [b"<html><head><title>Noisy page</title></head><body>"]
    for i in range(text_paragraphs):
        topic = names[i % len(names)]
        parts.append(f"<h2>{topic} {i}</h2><p>{prose(topic)}</p>".encode())
        parts.append(unit * per_paragraph)
    parts.append(b"</body></html>")
    return b"".join(parts)


def text_heavy_html(total_mib: int) -> bytes:
    """An HTML page of about ``total_mib`` MiB of paragraphs of prose, without any heading."""
    names = sorted(TOPICS)
    unit = "".join(f"<p>{prose(t)}</p>\n" for t in names).encode()
    return b"<html><body>" + unit * (total_mib * (1 << 20) // len(unit)) + b"</body></html>"


def unbroken_text(total_mib: float) -> bytes:
    """``total_mib`` MiB of base64 on one line: not one space for WordPiece to split at."""
    import base64
    import random

    raw = random.Random(9).randbytes(int(total_mib * (1 << 20) * 3 / 4))
    return base64.b64encode(raw)
