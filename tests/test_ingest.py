"""Incremental ingest into real Chroma with the real ONNX embedder, in-process."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

import ingest.pipeline as pipeline
from ingest.pipeline import DocsFolderMissing, IngestReport, ingest, state_path
from ingest.state import IngestState
from rag.embed import get_embedder
from rag.settings import Settings
from rag.store import Chunk, ChunkStore, chunk_id, forget_cached_clients, read_generation
from tests.support import make_settings
from tests.documents import (
    certificate_encrypted_pdf_bytes,
    docx_bytes,
    pdf_bytes,
    pdf_declaring_more_pages,
    prose,
    truncated_pdf_bytes,
    write_corpus,
)

pytestmark = pytest.mark.embedder

CORPUS = [
    "bees é.docx",
    "games/chess.html",
    "kitchen/bread.txt",
    "sea/tides guide.pdf",
    "volcanoes.md",
]


def _chunks(settings: Settings) -> dict[str, Chunk]:
    return {c.id: c for c in ChunkStore(settings).iter_chunks()}


def _sources(settings: Settings) -> set[str]:
    return {c.source for c in _chunks(settings).values()}


def _errors(report: IngestReport) -> dict[str, str]:
    return {f.path: f.error for f in report.failed}


@pytest.fixture
def corpus(settings: Settings) -> dict[str, Path]:
    return write_corpus(settings.docs_dir)


# --- the incremental cycle ---------------------------------------------------------


def test_first_ingest_adds_every_file_with_pages_and_headings(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    report = ingest(settings)
    assert sorted(report.added) == CORPUS
    assert report.failed == [] and report.updated == report.removed == report.unchanged == []
    chunks = _chunks(settings)
    assert report.chunks == len(chunks) and _sources(settings) == set(CORPUS)
    pdf_pages = {c.page for c in chunks.values() if c.source == "sea/tides guide.pdf"}
    assert pdf_pages == {1, 2}
    assert {c.page for c in chunks.values() if c.source != "sea/tides guide.pdf"} == {None}
    assert chunks[chunk_id("games/chess.html", 0)].heading == "Chess openings"  # the <h1>
    assert chunks[chunk_id("bees é.docx", 0)].heading == "Bees"


def test_ingested_chunks_are_searchable_by_meaning(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    ingest(settings)
    query = get_embedder(settings).embed_query("how does wild yeast make dough rise?")
    best, _score = ChunkStore(settings).query(query, k=1)[0]
    assert best.source == "kitchen/bread.txt"


def test_unchanged_file_is_not_parsed_again(settings, corpus, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ingest(settings)
    parsed: list[str] = []
    real_read = pipeline.read_sections

    def spy(source: str, data: bytes, extraction):  # type: ignore[no-untyped-def]
        parsed.append(source)
        return real_read(source, data, extraction)

    monkeypatch.setattr(pipeline, "read_sections", spy)
    generation = read_generation(settings)
    report = ingest(settings)
    assert parsed == []
    assert sorted(report.unchanged) == CORPUS and not report.changed
    assert read_generation(settings) == generation, "nothing changed, readers need not reload"


def test_changed_file_replaces_its_chunks(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    corpus["kitchen/bread.txt"].write_text(prose("bread", 6))
    ingest(settings)
    before = {i for i, c in _chunks(settings).items() if c.source == "kitchen/bread.txt"}
    assert len(before) > 1
    corpus["kitchen/bread.txt"].write_text("Rye bread needs a sour starter.")
    generation = read_generation(settings)
    report = ingest(settings)
    assert report.updated == ["kitchen/bread.txt"] and len(report.unchanged) == 4
    bread = [c for c in _chunks(settings).values() if c.source == "kitchen/bread.txt"]
    assert [(c.id, c.text) for c in bread] == [
        ("kitchen/bread.txt#0", "Rye bread needs a sour starter.")
    ]
    assert read_generation(settings) != generation


def test_reingest_removes_chunks_of_deleted_file(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    ingest(settings)
    corpus["volcanoes.md"].unlink()
    report = ingest(settings)
    assert report.removed == ["volcanoes.md"]
    assert "volcanoes.md" not in _sources(settings)
    assert IngestState(state_path(settings)).get("volcanoes.md") is None


def test_ingesting_again_and_again_never_duplicates(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    first = ingest(settings).chunks
    corpus["volcanoes.md"].write_text("# Volcanoes\n\nChanged once.")
    ingest(settings)
    corpus["volcanoes.md"].write_text(corpus["volcanoes.md"].read_text() + "\n\nChanged twice.")
    report = ingest(settings)
    chunks = _chunks(settings)
    assert report.chunks == len(chunks) == ChunkStore(settings).count()
    texts = [(c.source, c.text) for c in chunks.values()]
    assert len(texts) == len(set(texts))
    assert first >= len(chunks)


def test_rebuild_resets_the_store_and_ingests_everything(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    ingest(settings)
    store = ChunkStore(settings)
    store.add(
        [Chunk(id="stray#0", source="stray", index=0, text="orphan")],
        get_embedder(settings).embed(["orphan"]),
    )
    report = ingest(settings, rebuild=True)
    assert sorted(report.added) == CORPUS and report.unchanged == []
    assert "stray" not in _sources(settings)


def test_store_changed_behind_the_states_back_is_rebuilt(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    first = ingest(settings)
    forget_cached_clients()
    shutil.rmtree(settings.chroma_dir)  # someone deleted the store but not the state
    report = ingest(settings)
    assert sorted(report.added) == CORPUS and report.chunks == first.chunks
    assert [w.error for w in report.warnings] == [
        f"the store holds 0 chunks but the ingest state expects {first.chunks}; "
        "it was rebuilt from the docs folder"
    ]


def test_ingest_rebuilds_the_bm25_index_for_the_new_generation(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    from rag.bm25 import Bm25Index, index_path

    report = ingest(settings)
    index = Bm25Index.open(index_path(settings))
    assert index.generation == read_generation(settings) != ""
    assert len(index) == report.chunks


def test_missing_docs_folder_is_a_clear_fatal_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, docs_dir=tmp_path / "nowhere")
    with pytest.raises(DocsFolderMissing, match="The docs folder .*nowhere does not exist"):
        ingest(settings)


def test_changing_the_chunk_size_reingests_every_file(settings, corpus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ingest(settings)
    smaller = settings.with_overrides(chunk_tokens=64, chunk_overlap=8)
    report = ingest(smaller)
    assert sorted(report.updated) == CORPUS and report.unchanged == [] and report.added == []
    assert [w.error for w in report.warnings] == [
        "the chunking or embedding settings changed (chunk_overlap 40 -> 8, "
        "chunk_tokens 220 -> 64); every file was re-ingested"
    ]
    # Exactly what a fresh ingest with the new setting makes: no chunk of the old size left.
    fresh = make_settings(
        tmp_path / "fresh", docs_dir=settings.docs_dir, chunk_tokens=64, chunk_overlap=8
    )
    ingest(fresh)
    made = {i: (c.text, c.page) for i, c in _chunks(smaller).items()}
    assert made == {i: (c.text, c.page) for i, c in _chunks(fresh).items()}
    assert ingest(smaller).unchanged == sorted(CORPUS)


def test_a_store_embedded_with_fp32_is_re_embedded_with_the_int8_default(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    assert settings.embed_precision == "int8"
    first = ingest(settings.with_overrides(embed_precision="fp32"))  # a store from before
    report = ingest(settings)
    assert sorted(report.updated) == CORPUS and report.chunks == first.chunks
    assert report.warnings[0].error.startswith(
        "the chunking or embedding settings changed (embed_precision fp32 -> int8, model_sha256 "
    )
    again = ingest(settings)
    assert again.unchanged == sorted(CORPUS) and not again.warnings


def test_going_back_to_fp32_re_embeds_again(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    ingest(settings)
    report = ingest(settings.with_overrides(embed_precision="fp32"))
    assert sorted(report.updated) == CORPUS
    assert "embed_precision int8 -> fp32" in report.warnings[0].error


def test_folder_that_cannot_be_listed_keeps_its_chunks_and_is_reported(  # type: ignore[no-untyped-def]
    settings, corpus, monkeypatch
) -> None:
    """A folder os.walk cannot list: its files are unknown, not deleted.

    Tests run as root, where chmod 000 does not stop listing a folder, so the
    listing of that one folder is made to fail the way the kernel would (EACCES)
    by wrapping os.scandir; as another user the chmod alone does it.
    """
    ingest(settings)
    before = {i: c.text for i, c in _chunks(settings).items() if c.source.startswith("kitchen/")}
    kitchen = settings.docs_dir / "kitchen"
    (kitchen / "new.txt").write_text("Sourdough needs a starter.")
    kitchen.chmod(0)
    real_scandir = os.scandir

    def scandir(path=None):  # type: ignore[no-untyped-def]
        if path is not None and Path(path) == kitchen:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path) if path is not None else real_scandir()

    monkeypatch.setattr(os, "scandir", scandir)
    try:
        report = ingest(settings)
    finally:
        kitchen.chmod(0o755)
    assert _errors(report) == {"kitchen": "cannot list the folder: Permission denied"}
    assert report.removed == [] and "kitchen/bread.txt" not in report.unchanged
    after = {i: c.text for i, c in _chunks(settings).items() if c.source.startswith("kitchen/")}
    assert after == before and len(before) > 0

    monkeypatch.undo()
    again = ingest(settings)
    assert again.added == ["kitchen/new.txt"] and "kitchen/bread.txt" in again.unchanged


# --- crash repair (the kill -9 test in test_ingest_crash.py does this for real) -----


def test_pending_source_is_repaired_on_the_next_run(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    ingest(settings)
    expected = {i: c.text for i, c in _chunks(settings).items()}
    # What a SIGKILL in the middle of rewriting bread.txt leaves: a pending mark,
    # some chunks deleted, a stray chunk from the newer version written.
    with IngestState(state_path(settings)) as state:
        state.mark_pending("kitchen/bread.txt")
        state.mark_pending("gone.md")  # a new file whose write was interrupted, then deleted
    store = ChunkStore(settings)
    store.delete_source("kitchen/bread.txt")
    stray = [
        Chunk(
            id=chunk_id("kitchen/bread.txt", 5), source="kitchen/bread.txt", index=5, text="half"
        ),
        Chunk(id=chunk_id("gone.md", 0), source="gone.md", index=0, text="orphan"),
    ]
    store.add(stray, get_embedder(settings).embed([c.text for c in stray]))

    report = ingest(settings)
    assert report.updated == ["kitchen/bread.txt"]
    assert {i: c.text for i, c in _chunks(settings).items()} == expected
    with IngestState(state_path(settings)) as state:
        assert {s.status for s in state.all().values()} == {"done"}


def test_fixed_file_whose_write_was_killed_counts_as_added_not_updated(settings) -> None:  # type: ignore[no-untyped-def]
    broken = settings.docs_dir / "notes.txt"
    broken.write_bytes(b"")
    assert _errors(ingest(settings)) == {"notes.txt": "empty file: nothing to index"}
    broken.write_text("Now the notes have text.")
    # What a SIGKILL while writing the fixed file leaves: its row marked pending.
    with IngestState(state_path(settings)) as state:
        state.mark_pending("notes.txt")
    report = ingest(settings)
    assert (report.added, report.updated) == (["notes.txt"], [])


# --- bad input: each gets a sentence in `failed`, the rest is ingested ----------------


def test_bad_files_are_reported_by_name_and_the_rest_is_ingested(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    docs = settings.docs_dir
    bad = {
        "empty.txt": b"",
        "junk.txt": os.urandom(4096),
        "truncated.pdf": truncated_pdf_bytes([prose("tides")]),
        "notes.pdf": b"This is a text file with a .pdf name.\n",
        "locked.pdf": pdf_bytes([prose("bees")], user_password="pw"),
        "broken.docx": b"PK\x03\x04 not really a zip",
    }
    for name, data in bad.items():
        (docs / "bad" / name).parent.mkdir(exist_ok=True)
        (docs / "bad" / name).write_bytes(data)
    report = ingest(settings)
    errors = _errors(report)
    assert errors == {
        "bad/empty.txt": "empty file: nothing to index",
        "bad/junk.txt": "binary file, not text: it contains NUL bytes",
        "bad/truncated.pdf": "damaged or truncated PDF: Stream has ended unexpectedly",
        "bad/notes.pdf": "not a PDF: the file does not start with %PDF- "
        "(is it another format renamed to .pdf?)",
        "bad/locked.pdf": "encrypted PDF: cannot read without a password",
        "bad/broken.docx": errors["bad/broken.docx"],
    }
    assert errors["bad/broken.docx"].startswith("not a valid .docx file")
    assert sorted(report.added) == CORPUS
    assert _sources(settings) == set(CORPUS)
    # The same broken bytes are reported again next time, without parsing them again.
    again = ingest(settings)
    assert _errors(again) == errors and sorted(again.unchanged) == CORPUS


def test_certificate_encrypted_pdf_fails_alone_with_a_sentence(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    (settings.docs_dir / "sealed.pdf").write_bytes(certificate_encrypted_pdf_bytes())
    report = ingest(settings)
    assert _errors(report) == {
        "sealed.pdf": "encrypted PDF: its encryption method is not supported "
        "(only Standard PDF encryption handler is available)"
    }
    assert sorted(report.added) == CORPUS


def test_loader_raising_an_unexpected_exception_fails_only_that_file(  # type: ignore[no-untyped-def]
    settings, corpus, monkeypatch
) -> None:
    # No parser at hand raises an arbitrary exception on demand, so the loader is
    # wrapped for one file: it raises what pypdf raises for unsupported features.
    real_read = pipeline.read_sections

    def read(source: str, data: bytes, extraction):  # type: ignore[no-untyped-def]
        if source == "sea/tides guide.pdf":
            raise NotImplementedError("only Standard PDF encryption handler is available")
        return real_read(source, data, extraction)

    monkeypatch.setattr(pipeline, "read_sections", read)
    report = ingest(settings)
    assert _errors(report) == {
        "sea/tides guide.pdf": "uses a feature the parser does not support "
        "(only Standard PDF encryption handler is available)"
    }
    assert sorted(report.added) == sorted(set(CORPUS) - {"sea/tides guide.pdf"})
    assert _sources(settings) == set(report.added)


def test_pdf_with_fewer_pages_than_declared_is_ingested_with_a_warning(settings) -> None:  # type: ignore[no-untyped-def]
    (settings.docs_dir / "short.pdf").write_bytes(
        pdf_declaring_more_pages(["One.", "Two."], declared=5)
    )
    report = ingest(settings)
    assert report.added == ["short.pdf"] and report.failed == []
    assert [(w.path, w.error) for w in report.warnings] == [
        ("short.pdf", "PDF declares 5 pages but only 2 could be read; the file is probably damaged")
    ]


def test_file_over_the_size_limit_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, max_file_mb=0.01)
    (settings.docs_dir / "big.txt").write_text("word " * 5000)
    (settings.docs_dir / "small.txt").write_text("small file")
    report = ingest(settings)
    assert _errors(report) == {
        "big.txt": "file too large: 0.0 MB, above the 0.01 MB limit "
        "(raise RAG_MAX_FILE_MB to ingest it)"
    }
    assert report.added == ["small.txt"]


def test_symlink_pointing_outside_the_docs_folder_is_refused(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("private data")
    (settings.docs_dir / "link.txt").symlink_to(secret)
    (settings.docs_dir / "linkdir").symlink_to(secret.parent, target_is_directory=True)
    (settings.docs_dir / "real.md").write_text("# Real\n\ninside")
    (settings.docs_dir / "alias.md").symlink_to(settings.docs_dir / "real.md")  # inside: fine
    (settings.docs_dir / "loop.md").symlink_to(settings.docs_dir / "loop.md")
    report = ingest(settings)
    errors = _errors(report)
    assert set(errors) == {"link.txt", "linkdir", "loop.md"}
    assert errors["loop.md"] == "symlink loop: the link points back at itself"
    assert (
        errors["link.txt"] == f"symlink points outside the docs folder (to {secret}) and is refused"
    )
    assert sorted(report.added) == ["alias.md", "real.md"]
    assert all("private" not in c.text for c in _chunks(settings).values())


def test_unreadable_files_are_reported(settings) -> None:  # type: ignore[no-untyped-def]
    # Tests run as root, where chmod 000 does not stop reads; these fail for real:
    # a FIFO (reading it would block forever) and a symlink whose target is gone.
    docs = settings.docs_dir
    os.mkfifo(docs / "pipe.txt")
    (docs / "dangling.md").symlink_to(docs / "deleted-target.md")
    locked = docs / "locked.txt"
    locked.write_text("no access")
    locked.chmod(0)
    (docs / "fine.txt").write_text("fine")
    report = ingest(settings)
    errors = _errors(report)
    assert (
        errors["pipe.txt"]
        == "cannot read the file: it is not a regular file (a pipe, device or socket)"
    )
    assert errors["dangling.md"] == "cannot read the file: it vanished or is a broken symlink"
    if os.geteuid() != 0:  # only a non-root user is really refused by mode 000
        assert errors["locked.txt"] == "cannot read the file: permission denied"
    assert "fine.txt" in report.added


def test_names_with_spaces_and_non_ascii_work(settings) -> None:  # type: ignore[no-untyped-def]
    name = "Überblick/ręczny plan 計画 v2.md"
    (settings.docs_dir / name).parent.mkdir()
    (settings.docs_dir / name).write_text("# Plan\n\nZażółć gęślą jaźń.")
    report = ingest(settings)
    assert report.added == [name]
    assert _chunks(settings)[chunk_id(name, 0)].text == "Plan\n\nZażółć gęślą jaźń."
    assert ingest(settings).unchanged == [name]


def test_hidden_files_and_unsupported_types_are_ignored_silently(settings) -> None:  # type: ignore[no-untyped-def]
    docs = settings.docs_dir
    (docs / ".git").mkdir()
    (docs / ".git" / "notes.md").write_text("# git internals")
    (docs / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (docs / "photo.gif").write_bytes(b"GIF89a")
    (docs / "readme.md").write_text("# Readme\n\nhello")
    report = ingest(settings)
    assert report.added == ["readme.md"] and report.failed == []


def test_file_that_turns_unreadable_loses_its_chunks(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    ingest(settings)
    corpus["sea/tides guide.pdf"].write_bytes(truncated_pdf_bytes([prose("tides")]))
    report = ingest(settings)
    assert list(_errors(report)) == ["sea/tides guide.pdf"]
    assert "sea/tides guide.pdf" not in _sources(settings)
    # Fixed again: it comes back.
    corpus["sea/tides guide.pdf"].write_bytes(pdf_bytes([prose("tides")]))
    assert ingest(settings).added == ["sea/tides guide.pdf"]


def test_state_records_hash_and_chunk_count_per_source(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    ingest(settings)
    rows = (
        sqlite3.connect(state_path(settings))
        .execute("SELECT source, sha256, chunks, status FROM sources ORDER BY source")
        .fetchall()
    )
    per_source: dict[str, int] = {}
    for c in _chunks(settings).values():
        per_source[c.source] = per_source.get(c.source, 0) + 1
    assert [(r[0], r[2], r[3]) for r in rows] == [(s, per_source[s], "done") for s in CORPUS]
    assert rows[-1][1] == hashlib.sha256(corpus["volcanoes.md"].read_bytes()).hexdigest()


def test_docx_and_html_chunks_keep_their_headings(settings) -> None:  # type: ignore[no-untyped-def]
    (settings.docs_dir / "h.docx").write_bytes(
        docx_bytes([("Heading 2", "Hives"), ("", "Bees live in hives.")])
    )
    ingest(settings)
    assert _chunks(settings)["h.docx#0"].heading == "Hives"


# --- bounded cost: limits and batches (tests/test_ingest_limits.py measures memory) ---------


def test_a_file_over_the_chunk_limit_is_refused_before_any_chunk_is_written(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch
) -> None:
    settings = make_settings(tmp_path, max_chunks_per_file=3)
    (settings.docs_dir / "long.txt").write_text(prose("tides", 30))
    (settings.docs_dir / "short.md").write_text("# Short\n\nOne line.")
    written: list[str] = []
    real_add = ChunkStore.add

    def add(self, chunks, vectors):  # type: ignore[no-untyped-def]
        written.extend(c.source for c in chunks)
        return real_add(self, chunks, vectors)

    monkeypatch.setattr(ChunkStore, "add", add)
    report = ingest(settings)
    assert _errors(report) == {
        "long.txt": "too many chunks: more than 3 (raise RAG_MAX_CHUNKS_PER_FILE to ingest it, "
        "or split the file)"
    }
    assert report.added == ["short.md"] and set(written) == {"short.md"}


def test_a_file_that_grows_over_a_limit_loses_its_old_chunks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, max_text_mb=0.01)
    notes = settings.docs_dir / "notes.md"
    notes.write_text("# Notes\n\nShort for now.")
    assert ingest(settings).added == ["notes.md"]
    notes.write_text("# Notes\n\n" + prose("bees", 60))
    report = ingest(settings)
    assert _errors(report) == {
        "notes.md": "too much text: more than 0.01 MB extracted (raise RAG_MAX_TEXT_MB to ingest "
        "it, or split the file)"
    }
    assert _sources(settings) == set()


def test_a_file_larger_than_a_batch_is_written_in_several_and_pending_until_its_last(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch
) -> None:
    # embed_batch=1: batches of 8 chunks, so the long file spans several of them.
    settings = make_settings(tmp_path, embed_batch=1, chunk_tokens=32, chunk_overlap=0)
    (settings.docs_dir / "a.md").write_text("# A\n\nalpha")
    (settings.docs_dir / "long.txt").write_text(prose("tides", 12))
    (settings.docs_dir / "z.md").write_text("# Z\n\nomega")
    batches: list[tuple[int, dict[str, str]]] = []
    real_add = ChunkStore.add

    def add(self, chunks, vectors):  # type: ignore[no-untyped-def]
        with IngestState(state_path(settings)) as state:
            batches.append((len(chunks), {s: r.status for s, r in state.all().items()}))
        return real_add(self, chunks, vectors)

    monkeypatch.setattr(ChunkStore, "add", add)
    report = ingest(settings)
    assert report.added == ["a.md", "long.txt", "z.md"] and report.failed == []
    assert len(batches) >= 4 and all(size <= 8 for size, _ in batches)
    # While its chunks are being written, the long file is pending; the file before it is done.
    middle = [statuses for _, statuses in batches[1:-1]]
    assert all(s["long.txt"] == "pending" and s["a.md"] == "done" for s in middle)
    counts: dict[str, int] = {}
    for chunk in _chunks(settings).values():
        counts[chunk.source] = counts.get(chunk.source, 0) + 1
    assert counts["long.txt"] > 16 and report.chunks == sum(counts.values())


def test_a_store_embedded_without_file_titles_is_reembedded(settings, corpus) -> None:  # type: ignore[no-untyped-def]
    from ingest.pipeline import state_path, vector_fingerprint
    from ingest.state import IngestState

    first = ingest(settings)
    # What a store ingested before chunks carried their file title and heading recorded.
    old = json.loads(vector_fingerprint(settings))
    del old["embedded_text_version"]
    with IngestState(state_path(settings)) as state:
        state.set_meta("vectors", json.dumps(old, sort_keys=True))
    report = ingest(settings)
    assert sorted(report.updated) == CORPUS and report.chunks == first.chunks
    assert "embedded_text_version None -> 1" in report.warnings[0].error
