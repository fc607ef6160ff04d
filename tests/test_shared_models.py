"""Many knowledge bases, one set of models: a new data folder needs no models of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.settings import SHARED_MODELS_DIR, Settings
from tests.documents import write_corpus
from tests.support import REPO, cli_env, run_module


def test_a_new_data_folder_uses_the_models_of_the_project(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "papers")
    assert settings.models_dir == SHARED_MODELS_DIR == REPO / ".data" / "models"
    assert settings.embedder_dir == SHARED_MODELS_DIR / "all-MiniLM-L6-v2-onnx"


def test_models_already_in_the_data_folder_keep_being_used(tmp_path: Path) -> None:
    # An install from before the models were shared, built with RAG_DATA_DIR set.
    (tmp_path / "old" / "models" / "all-MiniLM-L6-v2-onnx").mkdir(parents=True)
    settings = Settings(_env_file=None, data_dir=tmp_path / "old")
    assert settings.models_dir == tmp_path / "old" / "models"


def test_a_build_left_half_done_in_the_data_folder_is_not_taken_for_models(tmp_path: Path) -> None:
    (tmp_path / "kb" / "models" / ".smollm2-135m-instruct-int4.build-x1").mkdir(parents=True)
    (tmp_path / "kb" / "models" / ".all-MiniLM-L6-v2-onnx.lock").touch()
    assert Settings(_env_file=None, data_dir=tmp_path / "kb").models_dir == SHARED_MODELS_DIR


def test_rag_models_dir_still_decides(tmp_path: Path) -> None:
    (tmp_path / "kb" / "models" / "all-MiniLM-L6-v2-onnx").mkdir(parents=True)
    settings = Settings(
        _env_file=None, RAG_DATA_DIR=str(tmp_path / "kb"), RAG_MODELS_DIR=str(tmp_path / "m")
    )
    assert settings.models_dir == tmp_path / "m"


@pytest.mark.embedder
def test_a_second_knowledge_base_ingests_and_searches_with_only_its_data_folder_set(
    tmp_path: Path,
) -> None:
    if not (SHARED_MODELS_DIR / "all-MiniLM-L6-v2-onnx" / "manifest.json").is_file():
        pytest.fail(f"No models in {SHARED_MODELS_DIR}: run `make models` first.", pytrace=False)
    papers = tmp_path / "papers"
    write_corpus(papers / "docs")
    env = cli_env(RAG_DATA_DIR=str(papers / "data"), RAG_DOCS_DIR=str(papers / "docs"))
    del env["RAG_MODELS_DIR"]  # what a user sets for a second knowledge base: its folder only
    elsewhere = tmp_path / "somewhere-else"  # not the project folder: no .data/ here
    elsewhere.mkdir()

    done = run_module("ingest", "--json", cwd=elsewhere, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["chunks"] > 0
    found = run_module("rag.search", "How do volcanoes erupt?", "--json", cwd=elsewhere, env=env)
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout.strip().splitlines()[-1])["hits"]
    assert hits and hits[0]["source"] == "volcanoes.md"
    assert not (papers / "data" / "models").exists() and not (elsewhere / ".data").exists()
