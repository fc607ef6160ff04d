"""The static export and the search page's data, without a browser: real store, real files.

The page itself is driven in Chromium by ``tests/test_browser_search.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ingest.pipeline import ingest
from rag.embed import MODEL_FILES
from rag.export_site import main as export_main
from rag.settings import Settings
from rag.store import ChunkStore
from rag.web import search_page
from rag.web.search_page import INDEX_PATH, VECTORS_PATH, IndexCache
from tests.support import cli_env, make_settings, run_module


@pytest.fixture
def runtime() -> None:
    if (problem := search_page.runtime_missing()) is not None:
        pytest.fail(problem, pytrace=False)


def test_export_cli_writes_every_passage_with_its_float16_vector(
    tmp_path: Path, sample_settings: Settings, runtime: None
) -> None:
    out = tmp_path / "site"
    env = cli_env(
        RAG_DOCS_DIR=str(sample_settings.docs_dir), RAG_DATA_DIR=str(sample_settings.data_dir)
    )
    run = run_module("rag.export_site", out, "--json", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.splitlines()[-1])
    meta = json.loads((out / INDEX_PATH).read_bytes())
    vectors = np.frombuffer((out / VECTORS_PATH).read_bytes(), dtype="<f2").reshape(-1, 384)
    by_id = {chunk.id: vector for chunk, vector in ChunkStore(sample_settings).iter_vectors()}
    assert report["passages"] == meta["count"] == len(vectors) == len(by_id) > 0
    for passage, vector in zip(meta["passages"], vectors, strict=True):
        assert float(vector.astype(np.float32) @ by_id[passage["id"]]) > 0.9999
    # The page runs the model the store was embedded with (int8 by default).
    shipped = sample_settings.embedder_dir / MODEL_FILES[sample_settings.embed_precision]
    assert (out / "model" / "model.onnx").stat().st_size == shipped.stat().st_size
    page = (out / "index.html").read_text()
    assert '<base href="./">' in page and 'data-chat=""' in page
    assert report["bytes"] == sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def test_export_without_the_runtime_says_to_run_make_web(
    tmp_path: Path,
    sample_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(search_page, "RUNTIME_DIR", tmp_path / "no-runtime")
    monkeypatch.setattr("rag.export_site.get_settings", lambda: sample_settings)
    assert export_main([str(tmp_path / "site")]) == 1
    assert "run `make web`, which needs npm" in capsys.readouterr().err
    assert not (tmp_path / "site").exists()


def test_export_of_an_empty_store_says_to_ingest_first(
    tmp_path: Path,
    runtime: None,
    embedder_model: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(tmp_path)
    monkeypatch.setattr("rag.export_site.get_settings", lambda: settings)
    assert export_main([str(tmp_path / "site")]) == 1
    assert "No documents ingested yet" in capsys.readouterr().err
    assert not (tmp_path / "site").exists()


def test_search_data_follows_the_next_ingest(tmp_path: Path, embedder_model: None) -> None:
    settings = make_settings(tmp_path)
    (settings.docs_dir / "a.md").write_text("# Kayaks\n\nThe skeg keeps the kayak straight.\n")
    ingest(settings)
    cache = IndexCache(settings)
    first = cache.current()
    assert cache.current() is first  # nothing changed: no second read of the store
    (settings.docs_dir / "b.md").write_text("# Paddles\n\nA feathered paddle cuts the wind.\n")
    ingest(settings)
    second = cache.current()
    assert second.count == first.count + 1
    assert len(second.vectors) == second.count * 384 * 2
    assert "feathered paddle" in second.meta.decode()
