"""Questions about particular files in real headless Chromium: ``@name`` limits the sources,
typing ``@`` offers the ingested files, and follow-ups stay with the chosen one.

The real app (`chainlit run app.py`) over the corpus store; the model server is the
loopback fake, which cites the first two passages it is given, so the sources the
page shows are the passages retrieval chose. The browser may only talk to 127.0.0.1.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import ASSISTANT, ask, chat_page, send
from tests.chainlit_server import app_env, running_chainlit
from tests.fake_openai import FakeOpenAI
from tests.support import run_module

pytestmark = pytest.mark.browser

HOLIDAYS = "How many days of paid holiday do employees get?"
FOLLOW_UP = "And for part-timers?"
COMPLETION = "#file-mention-list"
PART_TIME = """# Part-time work

Part-timers get paid holiday in proportion to their contract: someone working three days
a week gets three fifths of the 28 days, rounded up to 17 days.
"""


def cite_two(request: dict[str, Any]) -> str:
    return "Here is what the passages say [1][2]."


@pytest.fixture
def app_url(tmp_path: Path, corpus_store: Path, chromium: Path) -> Iterator[tuple[str, FakeOpenAI]]:
    with (
        FakeOpenAI(models=["m"], reply=cite_two) as fake,
        running_chainlit(tmp_path, app_env(corpus_store, fake.base_url)) as app,
    ):
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


def test_typing_at_offers_the_files_and_follow_ups_stay_with_the_chosen_one_in_chromium(
    app_url: tuple[str, FakeOpenAI], chromium: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, fake = app_url
    with sync_playwright() as pw, chat_page(pw, tmp_path / "profile") as page:
        page.goto(url)
        expect(page.locator(ASSISTANT).first).to_contain_text(
            "type @ and pick it", timeout=30_000
        )
        composer = page.locator("#chat-input")
        expect(composer).to_have_attribute("placeholder", re.compile("type @ to pick a file"))

        # "@" lists every ingested file and @all; typing filters; Enter inserts the mention.
        composer.click()
        page.keyboard.type("@")
        offered = page.locator(f"{COMPLETION} [role=option]")
        expect(offered).to_have_count(6)
        expect(offered.first).to_have_text("handbook.md")
        # Arrows move the choice; a name with a space is inserted quoted.
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        expect(composer).to_have_value('@"onboarding checklist.docx" ')
        # Escape closes the list until another "@"; Enter then sends as usual (not here).
        composer.fill("")
        page.keyboard.type("@han")
        expect(offered).to_have_text(["handbook.md"])
        page.keyboard.press("Escape")
        page.keyboard.type("d")
        page.wait_for_timeout(300)
        expect(page.locator(COMPLETION)).to_have_count(0)
        expect(composer).to_have_value("@hand")
        composer.fill("")
        page.keyboard.type("@")
        expect(offered).to_have_count(6)
        page.keyboard.type("exp")
        expect(offered).to_have_text(["policies/expenses.txt"])
        page.screenshot(path=str(tmp_path / "completion.png"))
        page.keyboard.press("Enter")
        expect(page.locator(COMPLETION)).to_have_count(0)
        expect(composer).to_have_value("@policies/expenses.txt ")
        page.keyboard.type(HOLIDAYS)
        send(page)
        expect(page.locator(ASSISTANT).last).to_contain_text(
            "Sources: [1] policies/expenses.txt"
        )

        # The follow-up names no file and stays with it; the search step says so.
        ask(page, FOLLOW_UP)
        answer = page.locator(ASSISTANT).last
        expect(answer).to_contain_text("Sources: [1] policies/expenses.txt")
        assert "handbook.md" not in answer.inner_text().split("Sources:")[1]
        step = page.get_by_text("document search in policies/expenses.txt")
        expect(step.last).to_be_visible()

        # "@all" from the list goes back to every file: the handbook answers again.
        composer.click()
        page.keyboard.type("@al")
        expect(offered).to_have_text([re.compile(r"^@all")])
        offered.first.click()
        expect(composer).to_have_value("@all ")
        page.keyboard.type(HOLIDAYS)
        send(page)
        expect(page.locator(ASSISTANT).last).to_contain_text("Sources: [1] handbook.md")
        expect(page.get_by_text("document search in every file")).to_be_visible()
        page.screenshot(path=str(tmp_path / "follow-ups.png"))
    prompts = [r["messages"][-1]["content"] for r in fake.requests]
    assert len(prompts) == 3
    for prompt in prompts[:2]:
        assert passage_files(prompt) == {"policies/expenses.txt"}, prompt
    assert "handbook.md" in passage_files(prompts[2])
    assert "@" not in prompts[2].rsplit("Question:", 1)[-1]


def test_files_ingested_while_the_page_is_open_are_offered_without_reloading_it(
    tmp_path: Path, private_store: Path, chromium: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with (
        FakeOpenAI(models=["m"], reply=cite_two) as fake,
        running_chainlit(tmp_path, app_env(private_store, fake.base_url)) as app,
        sync_playwright() as pw,
        chat_page(pw, tmp_path / "profile") as page,
    ):
        page.goto(app.url)
        composer = page.locator("#chat-input")
        composer.click()
        page.keyboard.type("@part")
        page.wait_for_timeout(500)
        expect(page.locator(COMPLETION)).to_have_count(0)  # no such file yet
        composer.fill("")

        # Another writer (the docs folder watch, an ingest run) adds a file.
        (private_store / "docs" / "part-time.md").write_text(PART_TIME)
        ingested = run_module(
            "ingest", private_store / "docs", "--data-dir", private_store / "data",
            cwd=tmp_path,
        )  # fmt: skip
        assert ingested.returncode == 0, ingested.stderr

        page.wait_for_timeout(3_500)  # past the list's few seconds of reuse
        composer.click()
        page.keyboard.type("@part")
        offered = page.locator(f"{COMPLETION} [role=option]")
        expect(offered).to_have_text(["part-time.md"])
        page.keyboard.press("Tab")
        page.keyboard.type(HOLIDAYS)
        send(page)
        answer = page.locator(ASSISTANT).last
        expect(answer).to_contain_text("Sources: [1] part-time.md")
    assert passage_files(fake.requests[-1]["messages"][-1]["content"]) == {"part-time.md"}


def passage_files(prompt: str) -> set[str]:
    """The files of the passages in a prompt (``[n] (file, page p)`` lines)."""
    return set(re.findall(r"^\[\d+\] \(([^,)]+)", prompt, re.MULTILINE))
