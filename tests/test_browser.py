"""End to end in real headless Chromium: the real app (`chainlit run app.py`) over a real store.

The model server is the loopback fake (it stands in for Foundry Local / Ollama);
everything else is what a user runs. The browser may only talk to 127.0.0.1:
every other request (Google Fonts, a CDN stylesheet) is blocked, as offline.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.browser import ASSISTANT, chat_page
from tests.chainlit_server import app_env, running_chainlit
from tests.fake_openai import FakeOpenAI

MODELS = ["phi-4-mini-fake", "qwen-2.5-fake"]
REPLY = "Employees get 28 days of paid holiday a year [{n}]. Up to five unused days carry over [{n}]."
HOLIDAYS = "How many days of paid holiday do employees get?"

pytestmark = pytest.mark.browser


PEDALS = "How do I adjust the foot pedals?"
PEDALS_REPLY = "Pull the lever, push the pedal to where your knees touch the deck, release it [{n}]."


def cite_the_holiday_passage(request: dict) -> str:
    """A model that cites the passage holding the answer, wherever retrieval ranked it."""
    context = request["messages"][-1]["content"]
    if PEDALS in context:
        return PEDALS_REPLY.format(n=_passage_number(context, "tidewater-12-manual.pdf, page 2", ""))
    return REPLY.format(n=_passage_number(context, "handbook.md", "28 days"))


def _passage_number(context: str, source: str, holding: str) -> str:
    passages = re.findall(
        rf"^\[(\d+)\] \({re.escape(source)}\)(.*?)(?=^\[\d+\] \(|^End of context)",
        context,
        flags=re.MULTILINE | re.DOTALL,
    )
    return next((n for n, text in passages if holding in text), "1")


@dataclass
class RunningApp:
    url: str
    fake: FakeOpenAI


@pytest.fixture
def running_app(tmp_path: Path, corpus_store: Path, chromium: Path) -> Iterator[RunningApp]:
    """The real app as a subprocess over the shared corpus store, a fake model server behind it."""
    fake = FakeOpenAI(models=list(MODELS), reply=cite_the_holiday_passage, token_delay_s=0.08).start()
    try:
        with running_chainlit(tmp_path, app_env(corpus_store, fake.base_url)) as app:
            yield RunningApp(url=app.url, fake=fake)
    finally:
        fake.stop()


def test_ask_stream_sources_switch_model_and_a_dead_endpoint_in_chromium(
    running_app: RunningApp, chromium: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    fake = running_app.fake
    with sync_playwright() as pw, chat_page(pw, tmp_path / "profile") as page:
        page.goto(running_app.url)

        # A newcomer is told what to do, and the model picker is there.
        # Sign-in on this machine adds a redirect and a reload before the chat shows.
        expect(page.locator(ASSISTANT).first).to_contain_text("drop a PDF", timeout=30_000)
        expect(page.locator("#chat-settings-open-modal")).to_be_visible()

        # Ask: the answer streams in (visible while the stop button is shown), then completes.
        page.locator("#chat-input").fill(HOLIDAYS)
        page.locator("#chat-submit").click()
        expect(page.locator("#stop-button")).to_be_visible()
        answer = page.locator(ASSISTANT).last
        expect(answer).to_contain_text("Employees get")
        partial = answer.inner_text()
        expect(page.locator("#stop-button")).to_have_count(0)
        reply = cite_the_holiday_passage(fake.requests[0])
        expect(answer).to_contain_text(reply)
        assert reply not in partial  # it was seen half-written: streamed, not pasted
        page.screenshot(path=str(tmp_path / "answer.png"))

        # Sources: the cited file under the answer, its passage with the text beside it.
        number = re.search(r"\[(\d+)\]", reply).group(1)  # type: ignore[union-attr]
        expect(answer).to_contain_text(f"Sources: [{number}] handbook.md")
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
        expect(page.locator(ASSISTANT).last).to_contain_text("Employees get 28 days")
        expect(page.locator("#stop-button")).to_have_count(0)
        assert fake.models_called == ["phi-4-mini-fake", "qwen-2.5-fake"]
        assert {"role": "user", "content": HOLIDAYS} in fake.requests[1]["messages"]

        # Compare: both models' answers in columns side by side, each with its timings.
        page.locator("#chat-input").fill(f"/compare phi-4-mini-fake qwen-2.5-fake {HOLIDAYS}")
        page.locator("#chat-submit").click()
        columns = page.locator("[data-model]")
        expect(columns).to_have_count(2)
        expect(page.locator(".compare-figures")).to_have_count(2, timeout=60_000)
        for model in MODELS:
            column = page.locator(f'[data-model="{model}"]')
            expect(column).to_contain_text("Employees get 28 days")
            expect(column).to_contain_text("TTFT")
        left, right = (columns.nth(i).bounding_box() for i in range(2))
        assert left and right and left["x"] < right["x"] and left["y"] == right["y"]
        page.screenshot(path=str(tmp_path / "compare.png"))
        assert fake.models_called[-2:] in (MODELS, MODELS[::-1])

        # The model server goes away: a plain sentence naming the URL, no traceback.
        fake.stop()
        page.locator("#chat-input").fill(HOLIDAYS)  # covered: the gate lets it through
        page.locator("#chat-submit").click()
        error = page.locator(ASSISTANT).last
        expect(error).to_contain_text(f"No model server answered at {fake.base_url}")
        expect(error).to_contain_text("foundry model run phi-4-mini")
        assert "Traceback" not in page.locator("body").inner_text()
        page.screenshot(path=str(tmp_path / "error.png"))


def test_a_pdf_source_opens_at_its_page_with_the_supporting_sentence_highlighted(
    running_app: RunningApp, chromium: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw, chat_page(pw, tmp_path / "profile") as page:
        page.goto(running_app.url)
        expect(page.locator(ASSISTANT).first).to_contain_text("drop a PDF", timeout=30_000)
        page.locator("#chat-input").fill(PEDALS)
        page.locator("#chat-submit").click()
        answer = page.locator(ASSISTANT).last
        expect(answer).to_contain_text("release it [", timeout=30_000)
        expect(page.locator("#stop-button")).to_have_count(0, timeout=30_000)
        expect(answer).to_contain_text("tidewater-12-manual.pdf, page 2", timeout=30_000)
        page.screenshot(path=str(tmp_path / "pdf-answer.png"))
        # The passage beside the answer, with the sentence that backs it in bold ...
        expect(page.locator(".font-bold", has_text="push the pedal").first).to_be_visible(timeout=30_000)
        # ... and the PDF itself, opened at the cited page, its text rendered from the file.
        viewer = page.locator(".side-pdf").first
        expect(viewer).to_contain_text("2 / 6", timeout=60_000)
        expect(viewer.locator('[data-page-number="2"]')).to_contain_text("push the pedal", timeout=30_000)
        page.screenshot(path=str(tmp_path / "pdf-source.png"))
