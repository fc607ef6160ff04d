"""Fixtures and hooks: throwaway data dirs that reuse the models built by `make models`.

Pure tests run without any model. A test that needs one says so with a marker
(``@pytest.mark.embedder``, ``@pytest.mark.engine``) or by using a fixture that
builds a store; without the model it fails, not skips, with the sentence that
says to run `make models`. Shared helpers live in :mod:`tests.support`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rag.settings import Settings
from tests.support import REPO, SETTING_PREFIXES, SMALLEST_TIER, make_settings, missing_model

MODEL_MARKERS = {
    "embedder": "needs the embedding model exported by `make models`",
    "engine": "needs the embedded LLM built by `make models`",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, meaning in MODEL_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked with a model it needs fails with how to build it when it is missing."""
    for kind in MODEL_MARKERS:
        if item.get_closest_marker(kind) is not None and (problem := missing_model(kind)):
            pytest.fail(problem, pytrace=False)


# A developer's .env or shell must not change what the tests see.
_LEAKY_ENV = [
    name for name in os.environ if name.startswith(SETTING_PREFIXES) and name != "RAG_MODELS_DIR"
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)
    # The suite answers with the smallest tier; the tests of the default tier say so.
    monkeypatch.setenv("RAG_ENGINE_MODEL", SMALLEST_TIER)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium for the browser tests: skipped without it, failed in CI."""
    from tests.browser import require_chromium

    return require_chromium()


@pytest.fixture(scope="session")
def embedder_model() -> None:
    """Fails the test with how to build the embedding model when it is missing."""
    if problem := missing_model("embedder"):
        pytest.fail(problem, pytrace=False)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Fresh settings with an empty docs folder and data dir under ``tmp_path``."""
    return make_settings(tmp_path)


# Stores built by the real ingest once per session and shared: tests only read them;
# tests that write build their own under ``tmp_path``.


def _ingest_cleanly(settings: Settings) -> None:
    from ingest.pipeline import ingest

    report = ingest(settings)
    assert not report.failed, report.failed
    assert report.chunks > 0


@pytest.fixture(scope="session")
def corpus_store(tmp_path_factory: pytest.TempPathFactory, embedder_model: None) -> Path:
    """A folder with docs/ (the Brightwater Kayaks corpus, tests/corpus.py) and data/."""
    from tests.corpus import build_corpus

    root = tmp_path_factory.mktemp("corpus-store")
    build_corpus(root / "docs")
    _ingest_cleanly(make_settings(root))
    return root


@pytest.fixture(scope="session")
def corpus_settings(corpus_store: Path) -> Settings:
    """Settings for the shared store of the Brightwater Kayaks corpus."""
    return make_settings(corpus_store)


@pytest.fixture(scope="session")
def sample_settings(tmp_path_factory: pytest.TempPathFactory, embedder_model: None) -> Settings:
    """Settings for a shared store of the sample documents shipped in docs/."""
    settings = make_settings(tmp_path_factory.mktemp("sample"), docs_dir=REPO / "docs")
    _ingest_cleanly(settings)
    return settings


@pytest.fixture
def private_store(tmp_path: Path, corpus_store: Path) -> Path:
    """A copy of the corpus store of this test's own, for apps that write history and users."""
    import shutil

    own = tmp_path / "store"
    shutil.copytree(corpus_store, own, ignore=shutil.ignore_patterns(
        "chat-files", "*.lock", "history.db*", "users.json", "auth-secret"
    ))
    return own
