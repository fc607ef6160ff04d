"""Loaders turn the bytes of real files into sections with pages and headings, or say why not."""

from __future__ import annotations

import pytest

from ingest.loaders import LoadError, decode_text, load_document
from tests.documents import (
    certificate_encrypted_pdf_bytes,
    docx_bytes,
    pdf_bytes,
    pdf_declaring_more_pages,
    truncated_pdf_bytes,
)

PAGES = ["Volcanoes erupt basalt.", "Tides follow the Moon.", "Bees dance to talk."]


# --- markdown ---------------------------------------------------------------------


def test_markdown_sections_follow_headings() -> None:
    doc = load_document(
        "guide.md", b"Intro line.\n\n# Install\n\nRun make chat.\n\n## Linux ##\n\nUse apt.\n"
    )
    assert [(s.heading, s.text) for s in doc.sections] == [
        (None, "Intro line."),
        ("Install", "Install\n\nRun make chat."),
        ("Linux", "Linux\n\nUse apt."),
    ]
    assert all(s.page is None for s in doc.sections)


def test_markdown_underlined_heading_is_a_heading() -> None:
    doc = load_document("g.md", b"Setup\n=====\n\nSteps here.\n")
    assert doc.sections[0].heading == "Setup"


def test_markdown_hash_inside_code_block_is_not_a_heading() -> None:
    doc = load_document("g.md", b"# Real\n\n```sh\n# just a shell comment\nls\n```\n")
    assert [s.heading for s in doc.sections] == ["Real"]
    assert "# just a shell comment" in doc.sections[0].text


# --- plain text -------------------------------------------------------------------


def test_txt_reads_utf8() -> None:
    assert load_document("a.txt", "naïve café ✓".encode()).sections[0].text == "naïve café ✓"


def test_txt_falls_back_to_cp1252_for_legacy_windows_files() -> None:
    data = "“Quoted” café – déjà vu".encode("cp1252")
    assert load_document("a.txt", data).sections[0].text == "“Quoted” café – déjà vu"


def test_txt_falls_back_to_latin1_when_cp1252_cannot_decode() -> None:
    # 0x81 is undefined in cp1252 but a (control) character in latin-1.
    assert decode_text(b"caf\xe9 ok \x81") == "café ok \x81"


def test_txt_with_utf16_bom_is_decoded() -> None:
    assert load_document("a.txt", "Привет, мир".encode("utf-16")).sections[0].text == "Привет, мир"


def test_binary_junk_named_txt_is_refused() -> None:
    with pytest.raises(LoadError, match="binary file, not text"):
        load_document("junk.txt", bytes(range(256)) * 8)


def test_binary_junk_without_nul_bytes_is_refused() -> None:
    with pytest.raises(LoadError, match="binary file, not text: it is full of control characters"):
        load_document("junk.txt", bytes(range(1, 32)) * 40)


def test_empty_file_is_refused() -> None:
    with pytest.raises(LoadError, match="empty file"):
        load_document("empty.md", b"")


def test_blank_file_is_refused() -> None:
    with pytest.raises(LoadError, match="no text found"):
        load_document("blank.txt", b"  \n\n\t \n")


# --- HTML -------------------------------------------------------------------------


def test_html_keeps_main_text_and_drops_scripts_navigation_header_and_footer() -> None:
    page = (
        b"<html><head><title>T</title><style>p{color:red}</style></head><body>"
        b"<header>Site header</header><nav>Home | About</nav>"
        b"<p>Real <b>content</b> here.</p><script>var secret = 1;</script>"
        b"<footer>Copyright</footer></body></html>"
    )
    text = " ".join(s.text for s in load_document("p.html", page).sections)
    assert "Real content here." in text
    for noise in ("Site header", "Home", "Copyright", "secret", "color", "<p>"):
        assert noise not in text


def test_html_headings_become_section_headings() -> None:
    page = (
        b"<html><body><h1>Guide</h1><p>One.</p>"
        b"<h2>Uploads</h2><ul><li>a</li><li>b</li></ul></body></html>"
    )
    doc = load_document("p.htm", page)
    assert [(s.heading, s.text) for s in doc.sections] == [
        ("Guide", "Guide\n\nOne."),
        ("Uploads", "Uploads\n\na\n\nb"),
    ]


def test_html_reads_only_main_when_there_is_one() -> None:
    page = b"<body><div>Sidebar junk</div><main><p>The article.</p></main></body>"
    assert [s.text for s in load_document("p.html", page).sections] == ["The article."]


def test_html_honours_meta_charset() -> None:
    page = '<html><head><meta charset="windows-1252"></head><body><p>café “x”</p></body></html>'
    doc = load_document("p.html", page.encode("cp1252"))
    assert doc.sections[0].text == "café “x”"


# --- PDF --------------------------------------------------------------------------


def test_pdf_pages_are_numbered_from_one() -> None:
    doc = load_document("a.pdf", pdf_bytes(PAGES))
    assert [s.page for s in doc.sections] == [1, 2, 3]
    assert "Tides follow the Moon." in doc.sections[1].text
    assert doc.warnings == ()


def test_empty_pdf_is_refused() -> None:
    with pytest.raises(LoadError, match="empty file"):
        load_document("a.pdf", b"")


def test_truncated_pdf_is_refused() -> None:
    with pytest.raises(LoadError, match="damaged or truncated PDF"):
        load_document("a.pdf", truncated_pdf_bytes(PAGES))


def test_text_file_named_pdf_is_refused() -> None:
    with pytest.raises(LoadError, match="not a PDF: the file does not start with %PDF-"):
        load_document("a.pdf", b"Just some notes, not a PDF at all.\n")


def test_encrypted_pdf_is_refused_with_a_clear_sentence() -> None:
    with pytest.raises(LoadError, match="^encrypted PDF: cannot read without a password$"):
        load_document("a.pdf", pdf_bytes(PAGES, user_password="s3cret"))


def test_certificate_encrypted_pdf_is_refused_with_a_sentence_not_a_crash() -> None:
    with pytest.raises(LoadError) as refused:
        load_document("a.pdf", certificate_encrypted_pdf_bytes())
    assert str(refused.value) == (
        "encrypted PDF: its encryption method is not supported "
        "(only Standard PDF encryption handler is available)"
    )


def test_pdf_with_only_an_owner_password_is_read() -> None:
    doc = load_document("a.pdf", pdf_bytes(PAGES, owner_password="owner"))
    assert [s.page for s in doc.sections] == [1, 2, 3]


def test_pdf_yielding_fewer_pages_than_declared_gets_a_warning() -> None:
    doc = load_document("a.pdf", pdf_declaring_more_pages(PAGES, declared=7))
    assert [s.page for s in doc.sections] == [1, 2, 3]
    assert doc.warnings == (
        "PDF declares 7 pages but only 3 could be read; the file is probably damaged",
    )


def test_pdf_without_text_is_refused() -> None:
    with pytest.raises(LoadError, match="no extractable text"):
        load_document("a.pdf", pdf_bytes(["", ""]))


# --- DOCX -------------------------------------------------------------------------


def test_docx_headings_come_from_heading_styles() -> None:
    data = docx_bytes(
        [("Title", "User guide"), ("", "Welcome."), ("Heading 1", "Uploads"), ("", "Drop files.")],
        table=[["Format", "Pages"], ["PDF", "yes"]],
    )
    doc = load_document("guide.docx", data)
    assert [(s.heading, s.text) for s in doc.sections] == [
        ("User guide", "User guide\n\nWelcome."),
        ("Uploads", "Uploads\n\nDrop files.\n\nFormat | Pages\n\nPDF | yes"),
    ]


def test_file_that_is_not_a_docx_is_refused() -> None:
    with pytest.raises(LoadError, match="not a valid .docx file"):
        load_document("old.docx", b"\xd0\xcf\x11\xe0 an old binary .doc")


def test_suffix_is_matched_case_insensitively() -> None:
    assert load_document("NOTES.MD", b"# A\n\nb").sections[0].heading == "A"
