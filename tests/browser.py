"""Headless Debian Chromium for the browser tests: requests beyond loopback are refused.

The chat tests (``test_browser*.py``), the search page tests and ``bench/bench_browser.py``
all start Chromium here, the same way: a fresh profile, the flags that keep it from
phoning out (on this closed network every such connection is refused), and a route that
aborts every request that is not for 127.0.0.1, as on an offline machine.

>>> with sync_playwright() as pw, chat_page(pw, tmp_path / "profile") as page:  # doctest: +SKIP
...     page.goto(app.url)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Chromium's software WebGPU adapter (SwiftShader on Vulkan); without these it offers none.
WEBGPU_FLAGS = [
    "--enable-unsafe-webgpu",
    "--use-angle=swiftshader",
    "--use-webgpu-adapter=swiftshader",
    "--enable-features=Vulkan,WebGPU",
    "--ignore-gpu-blocklist",
]
LOOPBACK = ("http://127.0.0.1", "http://localhost", "data:", "blob:")
# Sign-in on this machine adds a redirect and a reload before the chat shows; a busy
# 2-core machine needs the margin.
CHAT_TIMEOUT_MS = 30_000

# The chat's own elements, as Chainlit 2 renders them.
ASSISTANT = '[data-step-type="assistant_message"]'


def require_chromium() -> Path:
    """Debian's Chromium, or a skip saying how to install it (a failure in CI, where it must run)."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {reason}")
        pytest.skip(reason)
    return CHROMIUM


@dataclass
class OfflineBrowser:
    """A Chromium context whose requests beyond loopback are aborted, and recorded per tab."""

    context: Any
    blocked: list[tuple[Any, str]] = field(default_factory=list)

    def blocked_from(self, page: Any) -> list[str]:
        """The URLs beyond loopback that ``page`` asked for (all were refused)."""
        return [url for tab, url in self.blocked if tab is page]

    def only_loopback(self, route: Any, request: Any) -> None:
        if request.url.startswith(LOOPBACK):
            route.continue_()
        else:
            self.blocked.append((request.frame.page, request.url))
            route.abort()


@contextmanager
def offline_chromium(
    pw: Any, profile: Path, *, webgpu: bool = False, **options: Any
) -> Iterator[OfflineBrowser]:
    """Headless Chromium with a fresh ``profile``; ``webgpu`` adds the software adapter flags,
    and ``options`` go to Playwright's ``launch_persistent_context`` (a viewport, say).

    ``pw`` is a started ``sync_playwright()``: one per thread, shared by every browser.
    """
    flags = CHROMIUM_FLAGS + (WEBGPU_FLAGS if webgpu else ["--disable-gpu"])
    context = pw.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=flags, **options
    )
    browser = OfflineBrowser(context)
    context.route("**/*", browser.only_loopback)
    try:
        yield browser
    finally:
        context.close()


@contextmanager
def chat_page(pw: Any, profile: Path) -> Iterator[Any]:
    """A tab for the chat, wide enough for the sources beside the answer, with the chat's waits."""
    from playwright.sync_api import expect

    with offline_chromium(pw, profile, viewport={"width": 1400, "height": 900}) as browser:
        page = browser.context.new_page()
        page.set_default_timeout(CHAT_TIMEOUT_MS)
        expect.set_options(timeout=CHAT_TIMEOUT_MS)
        yield page


def send(page: Any) -> None:
    """Send what the chat input holds and wait until its answer has finished streaming."""
    from playwright.sync_api import expect

    before = page.locator(ASSISTANT).count()
    expect(page.locator("#chat-submit")).to_be_enabled()
    page.locator("#chat-submit").click()
    page.wait_for_function(
        f"document.querySelectorAll('{ASSISTANT}').length > {before}", timeout=60_000
    )
    page.locator("#stop-button").wait_for(state="detached", timeout=60_000)


def ask(page: Any, question: str) -> None:
    """Type ``question`` into the chat input, send it, and wait for the whole answer."""
    page.locator("#chat-input").fill(question)
    send(page)
