"""The real Open WebUI, started by ``make openwebui``, chatting with the real app.

Runs only where ``make openwebui-install`` has made ``.venv-openwebui`` (about
2.4 GB; ``make test`` never installs it). Open WebUI runs offline with its own
fresh data folder, signed in as its built-in single user (``WEBUI_AUTH=False``),
and talks to ``chainlit run app.py`` over the app's ``/v1`` with ``RAG_API_KEY``;
the model server behind the app is tests.fake_openai.FakeOpenAI. A fresh Open
WebUI start (its database migrations) takes 1-3 minutes on a busy 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.chainlit_server import app_env, running_chainlit
from tests.fake_openai import FakeOpenAI
from tests.support import REPO, free_port

OPEN_WEBUI = REPO / ".venv-openwebui" / "bin" / "open-webui"
START_TIMEOUT_S = 300
REPLY = "Everyone gets 28 days of paid holiday [2]."  # [2] holds it, so the citation stands
QUESTION = "How many days of paid holiday does everyone get?"
KEY = "owui-test-key"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not OPEN_WEBUI.exists(), reason="Open WebUI is not installed (make openwebui-install)"
    ),
]


@contextmanager
def running_open_webui(workdir: Path, app_port: str) -> Iterator[str]:
    """``make openwebui`` wired to the app on ``app_port``; yields Open WebUI's URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))}
    env["RAG_API_KEY"] = KEY  # the target hands it to Open WebUI as its OpenAI key
    log = workdir / "open-webui.log"
    command = [
        "make", "-s", "openwebui", f"PORT={app_port}", f"OPENWEBUI_PORT={port}",
        f"OPENWEBUI_DATA={workdir / 'open-webui-data'}",
    ]  # fmt: skip
    with log.open("wb") as out:
        # Its own process group: make, its shell and Open WebUI stop together.
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(url, proc, log)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_health(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Open WebUI exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"Open WebUI did not start in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _streamed_text(response: httpx.Response) -> str:
    text = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[len("data: ") :]).get("choices", []):
                text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text)


def test_open_webui_lists_our_models_and_shows_answers_with_sources(
    corpus_store: Path, tmp_path: Path
) -> None:
    with (
        FakeOpenAI(models=["phi-local"], reply=REPLY) as model_server,
        running_chainlit(tmp_path, app_env(corpus_store, model_server.base_url, RAG_API_KEY=KEY))
        as app,
        running_open_webui(tmp_path, app.url.rsplit(":", 1)[1]) as webui,
    ):
        # WEBUI_AUTH=False: its one built-in user signs in with the fixed credentials.
        signin = httpx.post(
            f"{webui}/api/v1/auths/signin",
            json={"email": "admin@localhost", "password": "admin"},
            timeout=60,
        )
        assert signin.status_code == 200, signin.text
        auth = {"Authorization": f"Bearer {signin.json()['token']}"}
        models = httpx.get(f"{webui}/api/models", headers=auth, timeout=60).json()["data"]
        assert [m["id"] for m in models] == ["phi-local"]

        body = {"model": "phi-local", "messages": [{"role": "user", "content": QUESTION}]}
        whole = httpx.post(
            f"{webui}/api/chat/completions", json=body, headers=auth, timeout=120
        ).json()
        text = whole["choices"][0]["message"]["content"]
        assert text.startswith(REPLY) and "\n\nSources:\n[2] " in text
        with httpx.stream(
            "POST",
            f"{webui}/api/chat/completions",
            json={**body, "stream": True},
            headers=auth,
            timeout=120,
        ) as response:
            streamed = _streamed_text(response)
        assert streamed.startswith(REPLY) and "\n\nSources:\n[2] " in streamed
    # Our retrieval put the passages into the prompt the model server received.
    assert len(model_server.requests) == 2
    assert "holiday" in model_server.requests[0]["messages"][-1]["content"].lower()
