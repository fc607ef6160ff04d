"""Hybrid retrieval on real stores: right source and page, fusion quality, freshness, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rag.errors import NoDocuments
from rag.eval import evaluate, load_qa
from rag.retrieve import Hit, Retriever, fuse, get_retriever, retrieve
from rag.settings import Settings
from rag.store import Chunk, ChunkStore
from tests.support import MODELS_DIR, REPO, cli_env, make_settings
from tests.corpus import QA_DIR, index_folder


def _chunk(cid: str) -> Chunk:
    return Chunk(id=cid, source=cid.split("#")[0], index=0, text=cid)


# --- fusion ---------------------------------------------------------------------------


def test_rrf_adds_reciprocal_ranks_of_both_lists() -> None:
    dense = [(_chunk("a#0"), 0.9), (_chunk("b#0"), 0.8)]
    lexical = [(_chunk("b#0"), 7.0), (_chunk("c#0"), 5.0)]
    hits = fuse(dense, lexical, k=3, rrf_k=60)
    assert [h.chunk_id for h in hits] == ["b#0", "a#0", "c#0"]
    assert hits[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert (hits[0].dense_rank, hits[0].bm25_rank) == (2, 1)
    assert (hits[1].dense_rank, hits[1].bm25_rank) == (1, None)
    assert (hits[2].dense_rank, hits[2].bm25_rank) == (None, 2)


def test_rrf_ties_keep_dense_order_first() -> None:
    hits = fuse([(_chunk("a#0"), 0.5)], [(_chunk("b#0"), 3.0)], k=2, rrf_k=60)
    assert [h.chunk_id for h in hits] == ["a#0", "b#0"]


# --- the real sample documents ------------------------------------------------------------


def test_how_do_i_add_my_own_files_finds_the_user_guide_first(sample_settings: Settings) -> None:
    hits = Retriever(sample_settings).search("how do I add my own files?", 5)
    assert hits[0].source == "user-guide.md"
    assert "python -m ingest" in hits[0].text


def test_hybrid_finds_every_sample_docs_question_in_top_5(sample_settings: Settings) -> None:
    report = evaluate(Retriever(sample_settings), load_qa(QA_DIR / "sample_docs.jsonl"), k=5)
    assert report.recall >= 0.95, report.misses
    assert report.mrr >= 0.85


@pytest.mark.parametrize("qa_file", ["sample_docs.jsonl", "corpus.jsonl"])
def test_hybrid_is_at_least_as_good_as_each_single_method(
    qa_file: str, sample_settings: Settings, corpus_settings: Settings
) -> None:
    settings = sample_settings if qa_file.startswith("sample") else corpus_settings
    retriever, qa = Retriever(settings), load_qa(QA_DIR / qa_file)
    hybrid, dense, bm25 = (evaluate(retriever, qa, 5, mode) for mode in ("hybrid", "dense", "bm25"))
    assert hybrid.recall >= max(dense.recall, bm25.recall)
    # Measured: hybrid MRR equals dense on both sets and clearly beats BM25; allow one
    # question to move by one rank on a noisy machine before calling it a regression.
    assert hybrid.mrr >= max(dense.mrr, bm25.mrr) - 0.02
    assert hybrid.mrr > bm25.mrr


# --- the generated corpus -------------------------------------------------------------------


def test_hybrid_finds_every_corpus_question_in_top_5(corpus_settings: Settings) -> None:
    report = evaluate(Retriever(corpus_settings), load_qa(QA_DIR / "corpus.jsonl"), k=5)
    assert report.recall == 1.0, report.misses
    assert report.mrr >= 0.95


def test_pdf_page_numbers_survive_to_hits(corpus_settings: Settings) -> None:
    hits = Retriever(corpus_settings).search("When must I raise the skeg?", 3)
    assert (hits[0].source, hits[0].page) == ("tidewater-12-manual.pdf", 3)
    assert "skeg" in hits[0].text.lower()


def test_formats_without_pages_have_page_none(corpus_settings: Settings) -> None:
    hits = Retriever(corpus_settings).search("hotel limit per night in London", 3)
    assert hits[0].source == "policies/expenses.txt"
    assert hits[0].page is None


def test_exact_email_address_is_found_by_the_keyword_half(corpus_settings: Settings) -> None:
    hits = Retriever(corpus_settings).search("privacy@brightwater.example", 3)
    assert hits[0].source == "policies/security.html"
    assert hits[0].bm25_rank == 1


def test_hits_are_typed_and_ranked_best_first(corpus_settings: Settings) -> None:
    hits = retrieve("travel booking rules", 4, settings=corpus_settings)
    assert len(hits) == 4
    assert all(isinstance(h, Hit) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len({h.chunk_id for h in hits}) == 4


def test_get_retriever_is_cached_per_store(
    corpus_settings: Settings, sample_settings: Settings
) -> None:
    assert get_retriever(corpus_settings) is get_retriever(corpus_settings)
    assert get_retriever(corpus_settings) is not get_retriever(sample_settings)


# --- freshness and empty stores ------------------------------------------------------------


def _ingest_in_another_process(settings: Settings, folder: Path, rebuild_bm25: bool) -> None:
    """Write ``folder`` into the store from a separate process, like a real ingest run."""
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from rag.settings import Settings
        from tests.corpus import index_folder
        settings = Settings(_env_file=None, docs_dir=Path({str(folder)!r}),
                            data_dir=Path({str(settings.data_dir)!r}),
                            models_dir_override=Path({str(MODELS_DIR)!r}))
        index_folder(settings, rebuild_bm25={rebuild_bm25!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=120)


@pytest.mark.embedder
@pytest.mark.parametrize("rebuild_bm25", [True, False], ids=["bm25-rebuilt", "bm25-stale"])
def test_long_lived_retriever_sees_a_new_ingest(tmp_path: Path, rebuild_bm25: bool) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / "boats.md").write_text("# Boats\n\nThe Tidewater 12 is a touring kayak.\n")
    (second / "hangar.md").write_text(
        "# Hangar\n\nThe zeppelin hangar opens at 07:00 and closes at dusk.\n"
    )
    settings = make_settings(tmp_path, docs_dir=first)
    index_folder(settings)
    retriever = Retriever(settings)
    assert all(h.source != "hangar.md" for h in retriever.search("zeppelin hangar opening time", 3))

    _ingest_in_another_process(settings, second, rebuild_bm25)

    hits = retriever.search("zeppelin hangar opening time", 3)
    assert hits[0].source == "hangar.md"
    assert hits[0].dense_rank == 1  # Chroma reopened: the new vector is visible
    assert hits[0].bm25_rank == 1  # BM25 reloaded (or rebuilt when the writer did not)


def test_missing_store_raises_no_documents_without_creating_it(settings: Settings) -> None:
    with pytest.raises(NoDocuments, match="python -m ingest"):
        Retriever(settings).search("anything")
    assert not settings.chroma_dir.exists()


def test_empty_store_raises_no_documents(settings: Settings) -> None:
    ChunkStore(settings)  # creates the empty collection on disk
    with pytest.raises(NoDocuments):
        retrieve("anything", settings=settings)


def test_unknown_mode_is_refused(sample_settings: Settings) -> None:
    with pytest.raises(ValueError, match="mode"):
        Retriever(sample_settings).search("x", mode="fuzzy")  # type: ignore[arg-type]


# --- no torch on the query path --------------------------------------------------------


def test_search_path_never_imports_torch(sample_settings: Settings) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        import rag.retrieve, rag.search
        from rag.settings import Settings
        settings = Settings(_env_file=None, data_dir=Path({str(sample_settings.data_dir)!r}),
                            models_dir_override=Path({str(MODELS_DIR)!r}))
        hits = rag.retrieve.retrieve("how do I add my own files?", 3, settings=settings)
        print(json.dumps({{"hits": len(hits), "torch": "torch" in sys.modules}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=cli_env(), capture_output=True, text=True,
        timeout=120, check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"hits": 3, "torch": False}


@pytest.mark.embedder
def test_deleted_file_disappears_from_both_halves_after_reingest(tmp_path: Path) -> None:
    from ingest.pipeline import ingest

    settings = make_settings(tmp_path)
    (settings.docs_dir / "keep.md").write_text("# Boats\n\nThe Tidewater 12 is a touring kayak.\n")
    doomed = settings.docs_dir / "doomed.md"
    doomed.write_text("# Hangar\n\nThe zeppelin hangar opens at 07:00 and closes at dusk.\n")
    ingest(settings)
    retriever = Retriever(settings)
    assert retriever.search("zeppelin hangar", 1)[0].source == "doomed.md"

    doomed.unlink()
    ingest(settings)

    for mode in ("hybrid", "dense", "bm25"):
        hits = retriever.search("zeppelin hangar", 5, mode=mode)  # type: ignore[arg-type]
        assert all(h.source == "keep.md" for h in hits), mode


def test_a_hit_is_labelled_with_its_file_and_page_when_it_has_one() -> None:
    pdf = fuse([(Chunk("guide.pdf#4", "guide.pdf", 4, "Raise the skeg.", page=3), 0.8)], [], 1, 60)
    md = fuse([(_chunk("notes/faq.md#0"), 0.8)], [], 1, 60)
    assert (pdf[0].label, md[0].label) == ("guide.pdf, page 3", "notes/faq.md")


def test_a_chunk_is_embedded_with_its_file_title_and_heading() -> None:
    chunk = Chunk(id="guides/user-guide.md#3", source="guides/user-guide.md", index=3,
                  text="Copy them into docs/.", heading="Adding files")  # fmt: skip
    assert chunk.embedded_text() == "user guide - Adding files\nCopy them into docs/."
    bare = Chunk(id="notes_2024.txt#0", source="notes_2024.txt", index=0, text="Hi")
    assert bare.embedded_text() == "notes 2024\nHi"


def test_embedding_where_a_passage_sits_puts_the_right_sample_doc_first(
    sample_settings: Settings,
) -> None:
    # Measured: hybrid recall@1 on these 33 questions was 0.788 with bare chunk text.
    report = evaluate(Retriever(sample_settings), load_qa(QA_DIR / "sample_docs.jsonl"), k=1)
    assert report.recall >= 0.84, report.misses
