"""End to end in real headless Chromium: the real app (`chainlit run app.py`) over a real store.

The model server is the loopback fake (it stands in for Foundry Local / Ollama);
everything else is what a user runs. The browser may only talk to 127.0.0.1:
every other request (Google Fonts, a CDN stylesheet) is blocked, as offline.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ingest.pipeline import ingest
from tests.conftest import MODELS_DIR, REPO, make_settings
from tests.corpus import build_corpus
from tests.fake_openai import FakeOpenAI

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MODELS = ["phi-4-mini-fake", "qwen-2.5-fake"]
REPLY = "Employees get 28 days of paid holiday a year [1]. Up to five unused days carry over [1]."
HOLIDAYS = "How many days of paid holiday do employees get?"
ASSISTANT = '[data-step-type="assistant_message"]'

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {reason}")
        pytest.skip(reason)
    return CHROMIUM


@dataclass
class RunningApp:
    url: str
    fake: FakeOpenAI
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def running_app(tmp_path: Path, chromium: Path) -> Iterator[RunningApp]:
    """The real app as a subprocess, on a store the real ingest built from a small corpus."""
    build_corpus(tmp_path / "docs")
    report = ingest(make_settings(tmp_path))
    assert not report.failed

    # Chainlit keeps session files in <cwd>/.files and deletes that folder on shutdown,
    # so the app runs from its own folder: a second app in the repo keeps its files.
    app_root = tmp_path / "approot"
    app_root.mkdir()
    for name in ("app.py", ".chainlit", "chainlit.md"):
        (app_root / name).symlink_to(REPO / name)

    fake = FakeOpenAI(models=list(MODELS), reply=REPLY, token_delay_s=0.08).start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "LLM_", "FOUNDRY_"))}
    env.update(
        PYTHONPATH=str(REPO),
        RAG_DOCS_DIR=str(tmp_path / "docs"),
        RAG_DATA_DIR=str(tmp_path / "data"),
        RAG_MODELS_DIR=str(MODELS_DIR),
        LLM_BASE_URL=fake.base_url,
        RAG_ENGINE="off",
    )
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "chainlit"), "run", "app.py", "--headless",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=app_root, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc, log)
        yield RunningApp(url=url, fake=fake, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        fake.stop()


def wait_for_health(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"the app did not answer /health in 90 s:\n{log.read_text()[-3000:]}")


def only_loopback(route, request) -> None:  # noqa: ANN001 - Playwright's Route/Request
    if request.url.startswith(("http://127.0.0.1", "http://localhost", "data:", "blob:")):
        route.continue_()
    else:
        route.abort()


def test_ask_stream_sources_switch_model_and_a_dead_endpoint_in_chromium(
    running_app: RunningApp, chromium: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    fake = running_app.fake
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.route("**/*", only_loopback)
            page.goto(running_app.url)

            # A newcomer is told what to do, and the model picker is there.
            expect(page.locator(ASSISTANT).first).to_contain_text("drop a PDF")
            expect(page.locator("#chat-settings-open-modal")).to_be_visible()

            # Ask: the answer streams in (visible while the stop button is shown), then completes.
            page.locator("#chat-input").fill(HOLIDAYS)
            page.locator("#chat-submit").click()
            expect(page.locator("#stop-button")).to_be_visible()
            answer = page.locator(ASSISTANT).last
            expect(answer).to_contain_text("Employees get")
            partial = answer.inner_text()
            expect(page.locator("#stop-button")).to_have_count(0)
            expect(answer).to_contain_text(REPLY)
            assert REPLY not in partial  # it was seen half-written: streamed, not pasted
            page.screenshot(path=str(tmp_path / "answer.png"))

            # Sources: file (and page) under the answer, passages with their text beside it.
            expect(answer).to_contain_text("Sources: [1] handbook.md")
            expect(page.get_by_text("Sources of the last answer")).to_be_visible()
            expect(page.get_by_text("28 days of paid holiday a year plus").first).to_be_visible()

            # Switch the model in the settings dialog; the next question uses it, with history.
            page.locator("#chat-settings-open-modal").click()
            expect(page.locator("#chat-settings")).to_be_visible()
            page.locator("#chat-settings #model").click()
            page.get_by_role("option", name="qwen-2.5-fake").click()
            page.locator("#confirm").click()
            expect(page.locator(ASSISTANT).last).to_contain_text("Switched to qwen-2.5-fake")
            page.locator("#chat-input").fill("And how many of them carry over?")
            page.locator("#chat-submit").click()
            expect(page.locator(ASSISTANT).last).to_contain_text(REPLY)
            expect(page.locator("#stop-button")).to_have_count(0)
            assert fake.models_called == ["phi-4-mini-fake", "qwen-2.5-fake"]
            assert {"role": "user", "content": HOLIDAYS} in fake.requests[1]["messages"]

            # The model server goes away: a plain sentence naming the URL, no traceback.
            fake.stop()
            page.locator("#chat-input").fill("Is the server still there?")
            page.locator("#chat-submit").click()
            error = page.locator(ASSISTANT).last
            expect(error).to_contain_text(f"No model server answered at {fake.base_url}")
            expect(error).to_contain_text("foundry model run phi-4-mini")
            assert "Traceback" not in page.locator("body").inner_text()
            page.screenshot(path=str(tmp_path / "error.png"))
        finally:
            browser.close()
