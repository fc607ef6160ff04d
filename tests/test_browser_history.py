"""In real Chromium: a chat survives a restart, and a shared app asks for a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.users import add_user
from tests.chainlit_server import app_env, running_chainlit
from tests.fake_openai import FakeOpenAI
from tests.support import make_settings
from tests.test_browser import ASSISTANT, CHROMIUM_FLAGS, HOLIDAYS, chromium, only_loopback  # noqa: F401

pytestmark = pytest.mark.browser
FOLLOW_UP = "Do unused days carry over?"
PAST_CHAT = '#thread-history [id^="thread-"]'


def ask(page, question: str) -> None:  # Playwright's Page
    from playwright.sync_api import expect

    page.locator("#chat-input").fill(question)
    expect(page.locator("#chat-submit")).to_be_enabled()
    page.locator("#chat-submit").click()
    expect(page.locator(ASSISTANT).last).to_contain_text("28 days")
    expect(page.locator("#stop-button")).to_have_count(0)


def open_browser(pw, chromium: Path, profile: Path):  # Playwright types
    browser = pw.chromium.launch_persistent_context(
        str(profile), executable_path=str(chromium), headless=True, args=CHROMIUM_FLAGS,
        viewport={"width": 1400, "height": 900},
    )
    page = browser.new_page()
    page.set_default_timeout(30_000)
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)  # sign-in adds a redirect and a reload before the chat
    page.route("**/*", only_loopback)
    return browser, page


def test_ask_restart_resume_from_the_sidebar_and_the_follow_up_sends_the_history(
    tmp_path: Path, private_store: Path, chromium: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    fake = FakeOpenAI(models=["m-one"], reply="Employees get 28 days of paid holiday [1].").start()
    env = app_env(private_store, fake.base_url)
    try:
        with sync_playwright() as pw:
            browser, page = open_browser(pw, chromium, tmp_path / "profile")
            try:
                with running_chainlit(tmp_path / "first", env) as app:
                    page.goto(app.url)
                    expect(page.locator(ASSISTANT).first).to_contain_text("Local RAG Chat")
                    ask(page, HOLIDAYS)
                with running_chainlit(tmp_path / "second", env) as app:
                    page.goto(app.url)
                    expect(page.locator(PAST_CHAT).first).to_be_visible()
                    page.locator(PAST_CHAT).first.click()
                    expect(page.get_by_text(HOLIDAYS).first).to_be_visible()
                    try:
                        ask(page, FOLLOW_UP)
                    finally:
                        page.screenshot(path=str(tmp_path / "resumed.png"))
            finally:
                browser.close()
    finally:
        fake.stop()
    sent = fake.requests[-1]["messages"]
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
            for name, password, profile in (("ana", "correct horse", "a"), ("ben", "battery staple", "b")):
                browser, page = open_browser(pw, chromium, tmp_path / profile)
                try:
                    page.goto(app.url)
                    expect(page.locator("#password")).to_be_visible()  # the login form, no chat
                    page.locator("#email").fill(name)
                    page.locator("#password").fill(password)
                    page.locator("#password").press("Enter")
                    expect(page.locator(ASSISTANT).first).to_contain_text("Local RAG Chat")
                    if name == "ana":
                        ask(page, HOLIDAYS)
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
                    browser.close()
    finally:
        fake.stop()
