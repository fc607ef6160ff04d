"""The OpenAI-compatible API inside a real `chainlit run` server (its SPA catch-all included)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.chainlit_server import app_env, running_chainlit
from tests.fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow

REPLY = "Everyone gets 28 days of paid holiday [2]."  # [2] holds it, so the citation stands


@pytest.fixture
def local() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=["phi-local"], reply=REPLY) as fake:
        yield fake


def _check_api(url: str, key: str, fake: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
    assert "phi-local" in [m.id for m in client.models.list().data]
    answer = client.chat.completions.create(
        model="phi-local",
        messages=[{"role": "user", "content": "How many days of paid holiday do I get?"}],
    )
    assert answer.choices[0].message.content.startswith(REPLY)
    assert "\n\nSources:\n[2] " in answer.choices[0].message.content
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


def test_api_routes_win_over_chainlits_catch_all(
    corpus_store: Path, local: FakeOpenAI, tmp_path: Path
) -> None:
    """Through the chat app itself: app.py must mount the API on Chainlit's server."""
    env = app_env(corpus_store, local.base_url, RAG_API_KEY="k3y")
    with running_chainlit(tmp_path, env) as app:
        url = app.url
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

