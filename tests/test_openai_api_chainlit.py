"""The OpenAI-compatible API inside a real `chainlit run` server (its SPA catch-all included)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ingest.pipeline import ingest
from rag.settings import Settings
from tests.conftest import MODELS_DIR, REPO
from tests.corpus import build_corpus
from tests.fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow

REPLY = "Everyone gets 28 days of paid holiday [1]."
CHAINLIT = Path(sys.executable).with_name("chainlit")

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(root: Path, fake: FakeOpenAI, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "LLM_", "CHAINLIT_"))}
    env.update(
        PYTHONPATH=str(REPO),
        RAG_DOCS_DIR=str(root / "docs"),
        RAG_DATA_DIR=str(root / "data"),
        RAG_MODELS_DIR=str(MODELS_DIR),
        RAG_ENGINE="off",
        LLM_BASE_URL=fake.base_url,
        **extra,
    )
    return env


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    settings = Settings(
        _env_file=None,
        docs_dir=root / "docs",
        data_dir=root / "data",
        models_dir_override=MODELS_DIR,
    )
    (root / "docs").mkdir()
    build_corpus(settings.docs_dir)
    assert ingest(settings).chunks > 0
    return root


@pytest.fixture
def local() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=["phi-local"], reply=REPLY) as fake:
        yield fake


def _serve(app_file: Path, cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(CHAINLIT),
            "run",
            str(app_file),
            "--headless",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode() if proc.stdout else "chainlit exited")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("chainlit did not start within 60 s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _check_api(url: str, key: str, fake: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
    assert "phi-local" in [m.id for m in client.models.list().data]
    answer = client.chat.completions.create(
        model="phi-local",
        messages=[{"role": "user", "content": "How many days of paid holiday do I get?"}],
    )
    assert answer.choices[0].message.content.startswith(REPLY)
    assert "\n\nSources:\n[1] " in answer.choices[0].message.content
    streamed = client.chat.completions.create(
        model="phi-local",
        stream=True,
        messages=[{"role": "user", "content": "How many days of paid holiday do I get?"}],
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).startswith(
        REPLY
    )
    assert len(fake.requests) == 2
    # Chainlit's own pages are still served.
    assert httpx.get(f"{url}/", timeout=10).status_code == 200


def test_api_routes_win_over_chainlits_catch_all(store: Path, local: FakeOpenAI) -> None:
    """Through the chat app itself: app.py must mount the API on Chainlit's server."""
    proc, url = _serve(REPO / "app.py", REPO, _env(store, local, RAG_API_KEY="k3y"))
    try:
        denied = httpx.get(f"{url}/v1/models", timeout=10)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        _check_api(url, "k3y", local)
        # Chainlit's CORS layer answers for the whole app: a foreign page gets no grant.
        evil = {"Origin": "http://evil.example", "Authorization": "Bearer k3y"}
        refused = httpx.get(f"{url}/v1/models", headers=evil, timeout=10)
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
        preflight = httpx.options(
            f"{url}/v1/chat/completions",
            headers={**evil, "Access-Control-Request-Method": "POST"},
            timeout=10,
        )
        assert preflight.headers.get("access-control-allow-origin") != "http://evil.example"
    finally:
        _stop(proc)
