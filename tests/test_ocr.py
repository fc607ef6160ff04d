"""OCR of scanned PDF pages and image files: real RapidOCR on pages the tests draw.

The pages are known sentences rendered with Pillow (tests/scans.py), so the
words OCR gives back can be counted; they are ingested for real (Chroma, ONNX
embedder, BM25) and searched the way the chat searches. A page costs several
seconds of CPU, so the ingested folder is shared by the tests that only read it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ingest.loaders import load_document
from ingest.ocr import FileOcr, Ocr, describe_pages, load_image
from ingest.pipeline import ingest
from ingest.report import IngestReport
from ingest.uploads import UploadRejected, add_uploads, save_upload
from rag.bm25 import Bm25Index, index_path
from rag.retrieve import Hit, Retriever
from rag.settings import Settings
from rag.store import Chunk, ChunkStore
from tests.documents import pdf_bytes
from tests.scans import SCANNED_PAGES, image_bytes, mixed_pdf, scanned_pdf, word_accuracy
from tests.support import REPO, make_settings

TEXT_PAGE = "The kayak rental desk opens at eight and closes when the tide turns."
# Words of each scan that only it holds, as a person would search for them.
LIGHTHOUSE = "lighthouse keeper schooner leather ledger"
WAREHOUSE = "Harrogate warehouse walnut furniture parcels refund"
ORCHARD = "orchard russet apples quince beekeepers"


@pytest.fixture(scope="module")
def scanned_store(
    tmp_path_factory: pytest.TempPathFactory, embedder_model: None
) -> tuple[Settings, IngestReport]:
    """A docs folder with a half-scanned PDF, a JPEG and a transparent PNG, ingested once."""
    settings = make_settings(tmp_path_factory.mktemp("ocr"))
    docs = settings.docs_dir
    (docs / "letters.pdf").write_bytes(mixed_pdf([("text", TEXT_PAGE), ("scan", SCANNED_PAGES[0])]))
    (docs / "receipt.jpg").write_bytes(image_bytes(SCANNED_PAGES[1], "JPEG"))
    (docs / "notes.png").write_bytes(image_bytes(SCANNED_PAGES[2], "PNG", transparent=True))
    report = ingest(settings)
    assert report.failed == [], report.failed
    return settings, report


def _top(settings: Settings, query: str) -> Hit:
    return Retriever(settings).search(query, k=1)[0]


def test_a_scanned_pdf_page_is_found_by_search_with_its_page_number_and_the_ocr_label(
    scanned_store: tuple[Settings, IngestReport],
) -> None:
    settings, report = scanned_store
    hit = _top(settings, LIGHTHOUSE)
    assert (hit.source, hit.page, hit.ocr) == ("letters.pdf", 2, True)
    assert hit.label == "letters.pdf, page 2 (OCR)"
    accuracy = word_accuracy(SCANNED_PAGES[0], hit.text)
    print(f"word accuracy of the scanned page: {accuracy:.3f}")
    assert accuracy >= 0.85, hit.text
    # The page with a text layer is read from it, and says nothing about OCR.
    text_hit = _top(settings, "kayak rental desk tide")
    assert (text_hit.page, text_hit.ocr, text_hit.label) == (1, False, "letters.pdf, page 1")
    assert report.ocr_pages == 3 and report.summary().endswith(" 3 pages read by OCR.")


def test_ocr_chunks_say_so_in_their_stored_metadata(
    scanned_store: tuple[Settings, IngestReport],
) -> None:
    settings, _ = scanned_store
    chunks = list(ChunkStore(settings).iter_chunks())
    flags = {(c.source, c.page): c.ocr for c in chunks}
    assert flags == {
        ("letters.pdf", 1): False,
        ("letters.pdf", 2): True,
        ("receipt.jpg", 1): True,
        ("notes.png", 1): True,
    }
    raw = ChunkStore(settings)._collection.get(where={"ocr": True}, include=["metadatas"])
    assert sorted(m["source"] for m in raw["metadatas"]) == [
        "letters.pdf",
        "notes.png",
        "receipt.jpg",
    ]


def test_image_files_become_one_page_documents_found_by_their_words(
    scanned_store: tuple[Settings, IngestReport],
) -> None:
    settings, _ = scanned_store
    jpeg = _top(settings, WAREHOUSE)
    assert jpeg.label == "receipt.jpg, page 1 (OCR)"
    assert word_accuracy(SCANNED_PAGES[1], jpeg.text) >= 0.85, jpeg.text
    # Black text on a transparent background: read on white, not lost in black.
    png = _top(settings, ORCHARD)
    assert png.label == "notes.png, page 1 (OCR)"
    assert word_accuracy(SCANNED_PAGES[2], png.text) >= 0.85, png.text


def test_a_bm25_only_hit_keeps_its_ocr_label_through_the_saved_index(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    chunks = [
        Chunk("scan.pdf#0", "scan.pdf", 0, "brass fittings invoice", page=3, ocr=True),
        Chunk("notes.md#0", "notes.md", 0, "kayak rental desk"),
    ]
    index = Bm25Index.open(index_path(settings))
    with index.transaction():
        index.replace_all(chunks, "g1")
    index.close()
    loaded = Bm25Index.open(index_path(settings))
    found = [c for q in ("brass invoice", "kayak desk") for c, _ in loaded.search(q, 1)]
    assert [(c.id, c.ocr) for c in found] == [("scan.pdf#0", True), ("notes.md#0", False)]


def test_with_ocr_off_a_scan_fails_with_the_setting_and_images_are_skipped_until_it_is_on(
    tmp_path: Path, embedder_model: None
) -> None:
    off = make_settings(tmp_path, ocr=False)
    (off.docs_dir / "scan.pdf").write_bytes(scanned_pdf(SCANNED_PAGES[:1]))
    (off.docs_dir / "photo.png").write_bytes(image_bytes(SCANNED_PAGES[2]))
    (off.docs_dir / "guide.pdf").write_bytes(pdf_bytes([TEXT_PAGE]))
    report = ingest(off)
    assert report.added == ["guide.pdf"] and report.ocr_pages == 0
    assert [f.path for f in report.failed] == ["scan.pdf"]
    assert "RAG_OCR=1" in report.failed[0].error
    assert "photo.png" not in report.unchanged + report.removed  # not a document at all

    # Turned on, the scan that failed before is read, although its bytes did not change.
    on = ingest(make_settings(tmp_path, ocr=True))
    assert sorted(on.added) == ["photo.png", "scan.pdf"] and on.failed == []
    assert _top(make_settings(tmp_path), LIGHTHOUSE).label == "scan.pdf, page 1 (OCR)"


def test_the_time_limit_skips_the_remaining_pages_with_a_sentence_naming_the_setting(
    tmp_path: Path, embedder_model: None
) -> None:
    settings = make_settings(tmp_path, ocr_seconds_per_file=0.01)
    (settings.docs_dir / "archive.pdf").write_bytes(scanned_pdf(SCANNED_PAGES))
    report = ingest(settings)
    assert report.added == ["archive.pdf"] and report.ocr_pages == 1
    [warning] = [w for w in report.warnings if w.path == "archive.pdf"]
    assert warning.error == (
        "OCR stopped at the 0.01 s limit per file: 2 pages without a text layer were not "
        "read (pages 2-3); raise RAG_OCR_SECONDS_PER_FILE to read them"
    )
    # The first page is always read.
    assert _top(settings, LIGHTHOUSE).label == "archive.pdf, page 1 (OCR)"


def test_an_image_dropped_into_the_chat_is_ingested_and_refused_when_ocr_is_off(
    tmp_path: Path, embedder_model: None
) -> None:
    upload = tmp_path / "upload-1"
    upload.write_bytes(image_bytes(SCANNED_PAGES[1], "JPEG"))
    with pytest.raises(UploadRejected, match=r"OCR, which is off \(set RAG_OCR=1\)"):
        save_upload(upload, "receipt.jpeg", make_settings(tmp_path, ocr=False))
    settings = make_settings(tmp_path)
    outcome = add_uploads([(upload, "receipt.jpeg")], settings)
    assert outcome.lines[0] == "Added receipt.jpeg to the knowledge base.", outcome.lines
    assert _top(settings, WAREHOUSE).label == "receipt.jpeg, page 1 (OCR)"


def test_a_run_without_scans_never_imports_the_ocr_engine_or_the_pdf_renderer(
    tmp_path: Path, embedder_model: None
) -> None:
    settings = make_settings(tmp_path)
    (settings.docs_dir / "guide.pdf").write_bytes(pdf_bytes([TEXT_PAGE, "Second page of text."]))
    (settings.docs_dir / "notes.md").write_text("# Notes\n\nThe tide table is on the wall.\n")
    script = (
        "import sys\n"
        "from ingest.pipeline import ingest\n"
        "from rag.retrieve import retrieve\n"
        "from tests.support import make_settings\n"
        "from pathlib import Path\n"
        f"settings = make_settings(Path({str(tmp_path)!r}))\n"
        "assert ingest(settings).failed == []\n"
        "retrieve('tide table', settings=settings)\n"
        "heavy = ('rapidocr_onnxruntime', 'pypdfium2', 'cv2')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_a_damaged_or_foreign_image_fails_with_a_sentence() -> None:
    from ingest.document import LoadError

    with pytest.raises(LoadError, match="damaged image|not a readable image"):
        load_image(image_bytes("Short text.")[:200])
    gif = _gif_bytes()
    with pytest.raises(LoadError, match="not a PNG or JPEG image: the file holds GIF"):
        load_image(gif)
    with pytest.raises(LoadError, match="image files need OCR, which is off"):
        load_document("photo.png", image_bytes("Short text."))


def test_transparent_pixels_become_white_paper() -> None:
    pixels = load_image(image_bytes("Dark ink on clear film.", transparent=True))
    assert pixels.ndim == 2 and np.median(pixels) == 255 and pixels.min() < 64


def test_skipped_pages_are_named_as_ranges() -> None:
    assert describe_pages([7]) == "page 7"
    assert describe_pages([9, 2, 3, 4, 11, 12]) == "pages 2-4, 9, 11-12"
    file_ocr = FileOcr(Ocr(seconds_per_file=1), deadline=0.0)
    assert not file_ocr.expired  # the first page of a file is always read
    file_ocr.skipped = [5]
    assert "1 page without a text layer was not read (page 5)" in (file_ocr.skipped_warning() or "")


def _gif_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (40, 20), 255).save(buffer, "GIF")
    return buffer.getvalue()


async def test_an_answer_citing_an_image_shows_the_picture_beside_its_ocr_text(
    tmp_path: Path,
) -> None:
    import chainlit as cl

    from rag.answer import AnswerDone, AnswerStart
    from rag.grounding import Citation
    from rag.web.chat_ui import source_elements
    from tests.chat_session import ChatSession

    settings = make_settings(tmp_path)
    (settings.docs_dir / "receipt.jpg").write_bytes(image_bytes("Invoice 4471 was paid.", "JPEG"))
    hit = Hit("receipt.jpg#0", "receipt.jpg", 1, None, "Invoice 4471 was paid.", 1.0, ocr=True)
    start = AnswerStart(None, [hit], 10, 0, 0)
    done = AnswerDone(None, "It was paid [1].", 0.1, 0.2, 5, sources=[Citation(1, hit)])
    async with ChatSession():  # Chainlit elements need a session to belong to
        elements, _title = source_elements(start, done, settings)
    assert [type(e) for e in elements] == [cl.Text, cl.Image]
    assert elements[0].name == "[1] receipt.jpg, page 1 (OCR)"
    assert elements[1].path == str(settings.docs_dir / "receipt.jpg")
