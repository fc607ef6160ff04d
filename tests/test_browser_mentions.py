"""Questions about particular files in real headless Chromium: ``@name`` limits the sources.

The real app (`chainlit run app.py`) over the corpus store; the model server is the
loopback fake, which cites the first two passages it is given, so the sources the
page shows are the passages retrieval chose. The browser may only talk to 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import ASSISTANT, chat_page
from tests.chainlit_server import app_env, running_chainlit
from tests.fake_openai import FakeOpenAI

pytestmark = pytest.mark.browser

HOLIDAYS = "How many days of paid holiday do employees get?"


def cite_two(request: dict[str, Any]) -> str:
    return "Here is what the passages say [1][2]."


@pytest.fixture
def app_url(tmp_path: Path, corpus_store: Path, chromium: Path) -> Iterator[tuple[str, FakeOpenAI]]:
    with FakeOpenAI(models=["m"], reply=cite_two) as fake:
        with running_chainlit(tmp_path, app_env(corpus_store, fake.base_url)) as app:
            yield app.url, fake


def test_a_mention_limits_the_sources_shown_in_chromium(
    app_url: tuple[str, FakeOpenAI], chromium: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, fake = app_url
    with sync_playwright() as pw, chat_page(pw, tmp_path / "profile") as page:
        page.goto(url)
        expect(page.locator(ASSISTANT).first).to_contain_text("@user-guide.md", timeout=30_000)

        # Unscoped, the holiday question is sourced to the handbook.
        ask(page, HOLIDAYS)
        expect(page.locator(ASSISTANT).last).to_contain_text("Sources: [1] handbook.md")

        # @expenses.txt: every source shown is that file.
        ask(page, f"@expenses.txt {HOLIDAYS}")
        answer = page.locator(ASSISTANT).last
        expect(answer).to_contain_text("Sources: [1] policies/expenses.txt")
        sources = answer.inner_text().split("Sources:")[1]
        assert "handbook.md" not in sources and "policies/expenses.txt" in sources

        page.screenshot(path=str(tmp_path / "scoped.png"))
    prompts = [r["messages"][-1]["content"] for r in fake.requests]
    assert "(handbook.md)" in prompts[0]
    assert "(handbook.md)" not in prompts[1] and "(policies/expenses.txt)" in prompts[1]


def ask(page: Any, question: str) -> None:  # noqa: ANN401 - Playwright's Page
    """Send ``question`` and wait until its answer has finished streaming."""
    before = page.locator(ASSISTANT).count()
    page.locator("#chat-input").fill(question)
    page.locator("#chat-submit").click()
    page.wait_for_function(
        f"document.querySelectorAll('{ASSISTANT}').length > {before}", timeout=60_000
    )
    page.locator("#stop-button").wait_for(state="detached", timeout=60_000)
