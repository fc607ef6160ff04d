"""Shared fixtures: throwaway data dirs that reuse the models built by `make models`."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from rag.settings import Settings

REPO = Path(__file__).resolve().parents[1]
# Models are exported once by `make models`; every test reuses them read-only.
MODELS_DIR = Path(os.environ.get("RAG_MODELS_DIR", REPO / ".data" / "models")).resolve()


def pytest_sessionstart(session: pytest.Session) -> None:
    """The suite runs on the real models; without them it stops with what to run."""
    missing = [
        path
        for path in (
            MODELS_DIR / "all-MiniLM-L6-v2-onnx" / "manifest.json",
            MODELS_DIR / "smollm2-135m-instruct-int4" / "genai_config.json",
        )
        if not path.is_file()
    ]
    if missing:
        pytest.exit(
            f"The models are not prepared ({', '.join(map(str, missing))} missing): "
            "run `make models` first (`make test` does it).",
            returncode=1,
        )


SMALLEST_TIER = "smollm2-135m"
# A developer's .env or shell must not change what the tests see.
_LEAKY_ENV = [
    name
    for name in os.environ
    if name.startswith(("RAG_", "LLM_", "CHROMA_", "FOUNDRY_")) and name != "RAG_MODELS_DIR"
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)
    # The suite answers with the smallest tier; the tests of the default tier say so.
    monkeypatch.setenv("RAG_ENGINE_MODEL", SMALLEST_TIER)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    """Ask a server the test started to stop; kill it if it has not within ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a test: docs and data under ``tmp_path``, the shared models dir."""
    docs = tmp_path / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    values: dict[str, object] = {
        "docs_dir": docs,
        "data_dir": tmp_path / "data",
        "models_dir_override": MODELS_DIR,
        "engine_model": SMALLEST_TIER,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def offline_settings(tmp_path: Path, **overrides: object) -> Settings:
    """:func:`make_settings` with the embedded engine off: the model servers are fakes."""
    return make_settings(tmp_path, **{"engine": "off", **overrides})


def with_fallback(
    root: Path, local_url: str, fallback_url: str, fallback_model: str, **overrides: object
) -> Settings:
    """:func:`offline_settings` with a local endpoint and a cloud fallback (both fakes)."""
    return offline_settings(
        root,
        llm_base_url=local_url,
        llm_fallback_base_url=fallback_url,
        llm_fallback_model=fallback_model,
        **overrides,
    )


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
def corpus_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
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
def sample_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
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
