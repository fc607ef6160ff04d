"""Hostile files against a real `python -m ingest`: each costs what its limits allow, no more.

Every run is a separate process whose peak resident memory is measured
(tests.support.run_measured). The target: ingesting any single file under the
limits peaks below 1 GB; a file over a limit is refused with a sentence that
names the setting, and the other files are ingested.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.documents import (
    markup_heavy_html,
    prose,
    text_heavy_html,
    unbroken_text,
    zip_bomb_docx,
)
from tests.support import MeasuredRun, cli_env, run_measured

pytestmark = [pytest.mark.slow, pytest.mark.embedder]

PEAK_LIMIT_MB = 1024
SMALL = {"notes.md": f"# Notes\n\n{prose('tides')}".encode()}


def _ingest(
    root: Path, files: dict[str, bytes], record: pytest.RecordProperty, **settings: str
) -> tuple[MeasuredRun, dict[str, Any]]:
    """Ingest ``files`` (plus a small note) with ``python -m ingest --json``, measured."""
    docs = root / "docs"
    docs.mkdir(parents=True)
    for name, data in {**files, **SMALL}.items():
        (docs / name).write_bytes(data)
    run = run_measured(
        "ingest", docs, "--data-dir", root / "data", "--json", cwd=root, env=cli_env(**settings)
    )
    assert "Traceback" not in run.stderr, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    record(f"peak_mb[{root.name}]", round(run.peak_mb))
    print(f"{root.name}: peak {run.peak_mb:.0f} MB, {run.seconds:.1f} s, {result}")
    return run, result


def _refused(result: dict[str, Any], name: str) -> str:
    assert result["added"] == 1, "the small note is ingested all the same"
    (failure,) = result["failed"]
    assert failure["path"] == name
    return str(failure["error"])


def test_a_45_mb_page_of_markup_is_ingested_in_the_memory_of_a_5_mb_one(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    record = record_property
    small_run, small = _ingest(tmp_path / "5mb", {"page.html": markup_heavy_html(5)}, record)
    big_run, big = _ingest(tmp_path / "45mb", {"page.html": markup_heavy_html(45)}, record)
    assert small_run.returncode == big_run.returncode == 0
    assert small["added"] == big["added"] == 2 and small["chunks"] == big["chunks"]
    assert big_run.peak_mb < PEAK_LIMIT_MB
    assert big_run.peak_mb - small_run.peak_mb < 150, "memory must not grow with the markup"


def test_a_page_with_more_text_than_rag_max_text_mb_is_refused_with_a_sentence(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    run, result = _ingest(tmp_path / "text", {"wall.html": text_heavy_html(45)}, record_property)
    assert run.returncode == 2
    assert _refused(result, "wall.html") == (
        "too much text: more than 10 MB extracted (raise RAG_MAX_TEXT_MB to ingest it, "
        "or split the file)"
    )
    assert run.peak_mb < PEAK_LIMIT_MB


def test_a_docx_zip_bomb_is_refused_from_its_zip_directory_before_it_is_inflated(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    bomb = zip_bomb_docx(200)
    assert len(bomb) < 2 * 1024 * 1024, "small on disk"
    run, result = _ingest(tmp_path / "bomb", {"report.docx": bomb}, record_property)
    assert run.returncode == 2
    assert _refused(result, "report.docx") == (
        "file too large when unpacked: word/document.xml inflates to 200.0 MB, above the "
        "100 MB limit (raise RAG_MAX_INFLATED_MB to ingest it)"
    )
    assert run.peak_mb < PEAK_LIMIT_MB


def test_a_docx_allowed_to_inflate_is_streamed_and_stopped_at_the_text_limit(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    run, result = _ingest(
        tmp_path / "inflated",
        {"report.docx": zip_bomb_docx(200)},
        record_property,
        RAG_MAX_INFLATED_MB="300",
    )
    assert run.returncode == 2
    assert _refused(result, "report.docx").startswith("too much text: more than 10 MB extracted")
    assert run.peak_mb < PEAK_LIMIT_MB


def test_text_without_whitespace_stops_at_rag_max_chunks_per_file_before_any_embedding(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    run, result = _ingest(
        tmp_path / "unbroken",
        {"blob.txt": unbroken_text(2)},
        record_property,
        RAG_MAX_CHUNKS_PER_FILE="500",
    )
    assert run.returncode == 2
    assert _refused(result, "blob.txt") == (
        "too many chunks: more than 500 (raise RAG_MAX_CHUNKS_PER_FILE to ingest it, "
        "or split the file)"
    )
    assert result["chunks"] == 1 and run.peak_mb < PEAK_LIMIT_MB


def test_a_file_of_many_batches_within_the_limits_is_ingested_whole_in_bounded_memory(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    sections = "".join(
        f"## Part {i}\n\n{prose(topic, 3)}\n\n"
        for i, topic in enumerate(["tides", "bees", "bread", "chess", "volcanoes"] * 80)
    )
    run, result = _ingest(
        tmp_path / "book", {"book.md": f"# Book\n\n{sections}".encode()}, record_property
    )
    assert run.returncode == 0 and result["added"] == 2
    assert result["chunks"] > 256, "more than one write batch of 256 chunks"
    assert run.peak_mb < PEAK_LIMIT_MB
