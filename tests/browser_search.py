"""Drive the in-browser search page from Python.

Shared by the browser search tests and ``bench/bench_browser.py``. The page's
``window.ragSearch`` object (``rag/web/browser_search/search.js``) does the work;
the functions below wait for it and call it, in a Chromium from :mod:`tests.browser`.

>>> with sync_playwright() as pw, offline_chromium(pw, tmp_path) as browser:   # doctest: +SKIP
...     page = open_search_page(browser, "http://127.0.0.1:8000/search?ep=wasm")
...     search(page, "How do I add my own files?")[0]["source"]
'user-guide.md'
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.browser import OfflineBrowser
from tests.support import free_port, stop_process

LOAD_TIMEOUT_MS = 240_000  # 90 MB of model and 14-27 MB of wasm on a busy 2-core machine


def open_search_page(browser: OfflineBrowser, url: str) -> Any:
    """A new tab on the search page, once it says it is ready (or shows why it is not)."""
    page = browser.context.new_page()
    page.set_default_timeout(LOAD_TIMEOUT_MS)
    page.goto(url)
    page.wait_for_function(
        "() => { const s = document.getElementById('status');"
        " return s.dataset.provider || s.dataset.error; }",
        timeout=LOAD_TIMEOUT_MS,
    )
    return page


def search(page: Any, question: str, k: int = 5) -> list[dict[str, Any]]:
    """The page's top ``k`` passages for ``question`` (id, source, page, heading, text, score)."""
    result = page.evaluate(
        "async ([q, k]) => (await window.ragSearch.ready).search(q, k)", [question, k]
    )
    return result["hits"]


def embed(page: Any, questions: list[str]) -> list[dict[str, Any]]:
    """The page's vector and time for each question: ``{"vector": [...], "ms": float}``."""
    return page.evaluate(
        """async (qs) => {
            const engine = await window.ragSearch.ready;
            const out = [];
            for (const q of qs) {
                const { vector, ms } = await engine.embed(q);
                out.push({ vector: Array.from(vector), ms });
            }
            return out;
        }""",
        questions,
    )


@contextmanager
def static_server(folder: Path) -> Iterator[str]:
    """``python -m http.server`` over ``folder`` on a free loopback port; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "-d", str(folder), "--bind", "127.0.0.1", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        stop_process(proc)
