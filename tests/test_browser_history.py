"""In real Chromium: a chat survives a restart, and a shared app asks for a password."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rag.users import add_user
from tests.browser import ASSISTANT, chat_page
from tests.browser import ask as send_and_wait
from tests.chainlit_server import app_env, running_chainlit
from tests.fake_openai import FakeOpenAI
from tests.support import make_settings

pytestmark = pytest.mark.browser
HOLIDAYS = "How many days of paid holiday do employees get?"
FOLLOW_UP = "Do unused days carry over?"
PAST_CHAT = '#thread-history [id^="thread-"]'


def ask(page, question: str, fake: FakeOpenAI) -> None:  # Playwright's Page
    """Send ``question`` and wait for its own answer: a new reply, after the model was asked."""
    from playwright.sync_api import expect

    asked, answers = len(fake.requests), page.locator(ASSISTANT).count()
    send_and_wait(page, question)
    expect(page.locator(ASSISTANT)).to_have_count(answers + 1)
    expect(page.locator(ASSISTANT).last).to_contain_text("28 days")
    expect(page.locator("#stop-button")).to_have_count(0)
    assert len(fake.requests) == asked + 1


def test_ask_restart_resume_from_the_sidebar_and_the_follow_up_sends_the_history(
    tmp_path: Path, private_store: Path, chromium: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    fake = FakeOpenAI(models=["m-one"], reply="Employees get 28 days of paid holiday [1].").start()
    env = app_env(private_store, fake.base_url)
    try:
        with sync_playwright() as pw, chat_page(pw, tmp_path / "profile") as page:
            with running_chainlit(tmp_path / "first", env) as app:
                page.goto(app.url)
                expect(page.locator(ASSISTANT).first).to_contain_text("Local RAG Chat")
                ask(page, HOLIDAYS, fake)
            with running_chainlit(tmp_path / "second", env) as app:
                page.goto(app.url)
                page.locator(PAST_CHAT).first.click()
                # The past chat is open once its answer is back in the conversation: the
                # sidebar's title shows the question before anything is resumed.
                expect(page).to_have_url(re.compile(r"/thread/"))
                expect(page.locator(ASSISTANT).filter(has_text="28 days")).to_have_count(1)
                try:
                    ask(page, FOLLOW_UP, fake)
                finally:
                    page.screenshot(path=str(tmp_path / "resumed.png"))
    finally:
        fake.stop()
    sent = fake.requests[-1]["messages"]
    assert sent[-1]["role"] == "user" and FOLLOW_UP in sent[-1]["content"]
    assert any(m["role"] == "user" and m["content"] == HOLIDAYS for m in sent)
    assert any(m["role"] == "assistant" and "28 days" in m["content"] for m in sent)


def test_a_shared_app_asks_for_a_password_and_lists_only_your_chats(
    tmp_path: Path, private_store: Path, chromium: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    settings = make_settings(private_store, data_dir=private_store / "data")
    add_user(settings, "ana", "correct horse")
    add_user(settings, "ben", "battery staple")
    fake = FakeOpenAI(models=["m-one"], reply="Employees get 28 days of paid holiday [1].").start()
    env = app_env(private_store, fake.base_url, RAG_TRUST_LOOPBACK="false")
    try:
        with sync_playwright() as pw, running_chainlit(tmp_path, env) as app:
            for name, password in (("ana", "correct horse"), ("ben", "battery staple")):
                with chat_page(pw, tmp_path / name) as page:
                    page.goto(app.url)
                    expect(page.locator("#password")).to_be_visible()  # the login form, no chat
                    page.locator("#email").fill(name)
                    page.locator("#password").fill(password)
                    page.locator("#password").press("Enter")
                    expect(page.locator(ASSISTANT).first).to_contain_text("Local RAG Chat")
                    if name == "ana":
                        ask(page, HOLIDAYS, fake)
                        page.goto(app.url)
                        expect(page.locator("#thread-history")).to_contain_text(HOLIDAYS[:30])
                    else:
                        expect(page.locator("#chat-input")).to_be_visible()
                        expect(page.locator(PAST_CHAT)).to_have_count(0)
                        # Signed in, typing "@" lists the files (their names need the sign-in).
                        page.locator("#chat-input").click()
                        page.keyboard.type("@hand")
                        expect(page.locator("#file-mention-list [role=option]")).to_have_text(
                            ["handbook.md"]
                        )
    finally:
        fake.stop()
