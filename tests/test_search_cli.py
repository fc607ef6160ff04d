"""`python -m rag.search`: JSON lines, human output, and a plain message on an empty store."""

from __future__ import annotations

import json
from pathlib import Path

from rag.settings import Settings
from tests.support import REPO, run_module


def test_json_prints_one_line_per_question_with_source_page_score_text(
    corpus_settings: Settings, tmp_path: Path
) -> None:
    questions = ["How long is the hull warranty?", "What is the nightly hotel limit in Zurich?"]
    out = run_module(
        "rag.search", *questions, "--k", "3", "--json",
        "--data-dir", str(corpus_settings.data_dir), cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["question"] for line in lines] == questions
    for line in lines:
        assert set(line) == {"question", "hits"}
        assert len(line["hits"]) == 3
        for hit in line["hits"]:
            assert set(hit) == {"source", "page", "score", "text"}
            assert isinstance(hit["score"], float) and hit["text"]
    warranty, hotel = lines[0]["hits"][0], lines[1]["hits"][0]
    assert (warranty["source"], warranty["page"]) == ("tidewater-12-manual.pdf", 6)
    assert (hotel["source"], hotel["page"]) == ("policies/expenses.txt", None)


def test_human_output_ranks_hits_with_source_page_and_score(
    corpus_settings: Settings, tmp_path: Path
) -> None:
    out = run_module(
        "rag.search", "how do I adjust the footrests?", "--k", "2",
        "--data-dir", str(corpus_settings.data_dir), cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "Q: how do I adjust the footrests?" in out.stdout
    assert "  1. tidewater-12-manual.pdf, page 2" in out.stdout
    assert "(score 0.0" in out.stdout
    assert "  2. " in out.stdout and "  3. " not in out.stdout


def test_missing_store_prints_how_to_ingest_and_exits_1(tmp_path: Path) -> None:
    out = run_module(
        "rag.search", "anything?", "--data-dir", str(tmp_path / "nowhere"),
        "--docs-dir", str(tmp_path / "my-docs"), cwd=tmp_path,
    )
    assert out.returncode == 1
    assert "No documents ingested yet" in out.stderr
    assert "python -m ingest" in out.stderr and "my-docs" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert not (tmp_path / "nowhere").exists()


def test_empty_store_prints_the_same_message(settings: Settings, tmp_path: Path) -> None:
    from rag.store import ChunkStore

    ChunkStore(settings)  # an existing but empty collection
    out = run_module(
        "rag.search", "anything?", "--json", "--data-dir", str(settings.data_dir), cwd=tmp_path
    )
    assert out.returncode == 1
    assert "No documents ingested yet" in out.stderr and "Traceback" not in out.stderr


def test_unexpected_error_is_one_line_on_stderr_and_exit_1_for_search_and_eval(
    tmp_path: Path,
) -> None:
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file where the data folder should be")
    qa = REPO / "tests" / "qa" / "sample_docs.jsonl"
    for module, args in (("rag.search", ["anything"]), ("rag.eval", [str(qa)])):
        out = run_module(module, *args, "--data-dir", str(not_a_folder), cwd=tmp_path)
        prefix = module.removeprefix("rag.")
        assert out.returncode == 1, out.stderr
        assert out.stderr.startswith(f"{prefix}: unexpected error ("), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
