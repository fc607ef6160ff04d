"""Shared fixtures: throwaway data dirs that reuse the models built by `make models`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rag.settings import Settings

REPO = Path(__file__).resolve().parents[1]
# Models are exported once by `make models`; every test reuses them read-only.
MODELS_DIR = Path(os.environ.get("RAG_MODELS_DIR", REPO / ".data" / "models")).resolve()

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


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a test: docs and data under ``tmp_path``, the shared models dir."""
    docs = tmp_path / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    values: dict[str, object] = {
        "docs_dir": docs,
        "data_dir": tmp_path / "data",
        "models_dir_override": MODELS_DIR,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Fresh settings with an empty docs folder and data dir under ``tmp_path``."""
    return make_settings(tmp_path)
