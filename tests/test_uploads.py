"""Files dropped into the chat: names within the byte limit, a sentence per file, one ingest."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.lock import writer_lock
from ingest.uploads import MAX_NAME_BYTES, add_uploads, sanitize_filename, save_upload
from rag.retrieve import Retriever
from rag.settings import Settings
from tests.documents import zip_bomb_docx

CJK_NAME = "東京湾の潮汐観測記録" * 15 + ".md"  # 150 CJK characters: 450 bytes of UTF-8


def _upload(tmp_path: Path, name: str, data: bytes | str) -> Path:
    """A file as Chainlit leaves an upload: a temporary path, the real name kept apart."""
    path = tmp_path / "chainlit-files" / f"upload-{abs(hash(name))}"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_a_long_name_is_cut_to_the_filesystems_byte_limit_keeping_the_extension() -> None:
    assert len(CJK_NAME) == 153 and len(CJK_NAME.encode()) > MAX_NAME_BYTES
    safe = sanitize_filename(CJK_NAME)
    assert safe.endswith(".md") and CJK_NAME.startswith(safe.removesuffix(".md"))
    assert len(safe.encode()) <= MAX_NAME_BYTES - len("-9999")
    latin = sanitize_filename("a" * 400 + ".pdf")
    assert latin == "a" * 100 + ".pdf"  # the readable limit binds first for short characters


def test_a_clash_gets_a_numbered_name_within_the_byte_limit(settings: Settings) -> None:
    tmp = settings.docs_dir.parent
    first = save_upload(_upload(tmp, "one", "# One\n\nfirst"), CJK_NAME, settings)
    again = save_upload(_upload(tmp, "one-again", "# One\n\nfirst"), CJK_NAME, settings)
    other = save_upload(_upload(tmp, "two", "# Two\n\nsecond"), CJK_NAME, settings)
    assert again.already_present and again.name == first.name
    assert other.renamed and other.name.endswith("-2.md")
    assert len(other.name.encode()) <= MAX_NAME_BYTES
    assert sorted(p.name for p in settings.docs_dir.iterdir()) == sorted([first.name, other.name])


@pytest.mark.embedder
def test_three_files_dropped_together_with_a_150_character_cjk_name_are_all_saved_and_ingested(
    settings: Settings, tmp_path: Path
) -> None:
    files = [
        (_upload(tmp_path, "a", "# Kayaks\n\nThe Tidewater 12 is a touring kayak."), "kayaks.md"),
        (_upload(tmp_path, "b", "# 潮汐\n\nSpring tides come at new and full moon."), CJK_NAME),
        (_upload(tmp_path, "c", "Sourdough needs a starter fed every day."), "bread.txt"),
    ]
    outcome = add_uploads(files, settings)

    cjk_saved = sanitize_filename(CJK_NAME)
    assert outcome.lines == (
        "Added kayaks.md to the knowledge base.",
        f"Added {cjk_saved} to the knowledge base.",
        "Added bread.txt to the knowledge base.",
        "3 passages are searchable now; ask about them.",
    )
    assert sorted(p.name for p in settings.docs_dir.iterdir()) == sorted(
        ["kayaks.md", cjk_saved, "bread.txt"]
    )
    assert outcome.report is not None and sorted(outcome.report.added) == sorted(
        ["kayaks.md", cjk_saved, "bread.txt"]
    )
    hits = Retriever(settings).search("when are spring tides?", 1)
    assert hits[0].source == cjk_saved


@pytest.mark.embedder
def test_a_file_that_cannot_be_saved_is_a_sentence_and_the_others_are_ingested(
    settings: Settings, tmp_path: Path
) -> None:
    vanished = tmp_path / "chainlit-files" / "gone"  # the temporary upload disappeared
    files = [
        (_upload(tmp_path, "a", "# Notes\n\nKeep the skeg up when landing."), "notes.md"),
        (vanished, "lost.md"),
        (_upload(tmp_path, "b", b"MZ\x90\x00"), "tool.exe"),
        (_upload(tmp_path, "c", b""), "empty.txt"),
    ]
    outcome = add_uploads(files, settings)

    assert outcome.lines[0] == "Added notes.md to the knowledge base."
    assert outcome.lines[1] == "lost.md was not added: No such file or directory."
    assert outcome.lines[2].startswith("tool.exe was not added: .exe cannot be read.")
    assert outcome.lines[3] == "empty.txt was not added: the file is empty."
    assert outcome.lines[4] == "1 passage is searchable now; ask about them."
    assert [p.name for p in settings.docs_dir.iterdir()] == ["notes.md"]


@pytest.mark.embedder
def test_uploads_obey_the_ingest_limits_and_say_which_setting_refused_them(
    settings: Settings, tmp_path: Path
) -> None:
    files = [
        (_upload(tmp_path, "bomb", zip_bomb_docx(120)), "report.docx"),
        (_upload(tmp_path, "fine", "# Fine\n\nA small note."), "fine.md"),
    ]
    outcome = add_uploads(files, settings)

    assert outcome.lines[0] == (
        "report.docx was saved but could not be read: file too large when unpacked: "
        "word/document.xml inflates to 120.0 MB, above the 100 MB limit "
        "(raise RAG_MAX_INFLATED_MB to ingest it)."
    )
    assert outcome.lines[1:] == (
        "Added fine.md to the knowledge base.",
        "1 passage is searchable now; ask about them.",
    )


def test_when_the_store_is_busy_the_files_are_kept_and_the_message_says_why(
    settings: Settings, tmp_path: Path
) -> None:
    files = [(_upload(tmp_path, "a", "# A\n\nalpha"), "a.md")]
    with writer_lock(settings):  # another ingest is writing the store
        outcome = add_uploads(files, settings)
    assert outcome.report is None
    assert outcome.lines[0] == "a.md was saved as a.md but is not ingested yet."
    assert outcome.lines[1].startswith(f"Another ingest is writing {settings.data_dir}")
    assert (settings.docs_dir / "a.md").is_file()


def test_the_same_file_dropped_again_is_recognised(settings: Settings, tmp_path: Path) -> None:
    path = _upload(tmp_path, "a", "# A\n\nalpha")
    save_upload(path, "a.md", settings)
    with writer_lock(settings):
        outcome = add_uploads([(path, "a.md")], settings)
    assert outcome.saved[0].already_present and not outcome.saved[0].renamed
