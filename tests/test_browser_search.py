"""The search page embeds questions in real headless Chromium, served by the real app.

The app is ``chainlit run app.py`` over a store of the sample documents in ``docs/``;
the static export is served by ``python -m http.server``. The browser may reach only
127.0.0.1, so a page that needed a CDN would fail here. Parity is measured against
the server's own embedder (:mod:`rag.embed`) and its dense search.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from rag.embed import Embedder, get_embedder, tokenizer_at
from rag.export_site import export_site
from rag.retrieve import Retriever
from rag.settings import Settings
from rag.web.search_page import runtime_missing
from tests.browser import CHROMIUM, OfflineBrowser, offline_chromium
from tests.browser_search import embed, open_search_page, search, static_server
from tests.chainlit_server import app_env, running_chainlit
from tests.fake_openai import FakeOpenAI
from tests.support import REPO, int8_kernels_saturate

pytestmark = pytest.mark.browser

ADD_FILES = "How do I add my own files?"
PARITY_QUESTIONS = [
    ADD_FILES,
    "Which port does Ollama listen on?",
    "What happens to an encrypted PDF?",
    "Can I run the app without internet access, café-style, on a laptop?",
]
QA_FILES = [REPO / "tests" / "qa" / "sample_docs.jsonl", REPO / "tests" / "qa" / "answers.jsonl"]


def qa_questions() -> list[str]:
    """Every question of the QA sets written for the sample documents."""
    return [json.loads(line)["q"] for f in QA_FILES for line in f.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def ready_runtime() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    if (problem := runtime_missing()) is not None:
        pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="module")
def app_url(
    tmp_path_factory: pytest.TempPathFactory, sample_settings: Settings, ready_runtime: None
) -> Iterator[str]:
    """The real app over the sample documents' store (the model server is a fake)."""
    fake = FakeOpenAI().start()
    env = app_env(sample_settings.data_dir.parent, fake.base_url)
    env["RAG_DOCS_DIR"] = str(sample_settings.docs_dir)
    try:
        with running_chainlit(tmp_path_factory.mktemp("search-app"), env) as app:
            yield app.url
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def playwright(ready_runtime: None) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, playwright: Any) -> Iterator[OfflineBrowser]:
    with offline_chromium(playwright, tmp_path_factory.mktemp("profile")) as running:
        yield running


@pytest.fixture(scope="module")
def wasm_page(browser: OfflineBrowser, app_url: str) -> Any:
    page = open_search_page(browser, f"{app_url}/search?ep=wasm")
    assert page.locator("#status").get_attribute("data-provider") == "wasm", page.inner_text(
        "#status"
    )
    return page


def test_search_page_answers_offline_on_wasm_with_the_right_passage_first(
    wasm_page: Any, browser: OfflineBrowser, app_url: str
) -> None:
    page = wasm_page
    page.locator("#q").fill(ADD_FILES)
    page.locator("#ask").click()
    first = page.locator(".result").first
    first.wait_for()
    assert first.locator(".file").inner_text() == "user-guide.md"
    assert "python -m ingest" in first.locator(".text").inner_text()  # the passage on adding files
    assert page.locator(".result").count() == 5
    assert "embedded on wasm in" in page.inner_text("#timing")
    assert "model on wasm" in page.inner_text("#status")
    href = first.locator("a.ask").get_attribute("href")
    assert href == "/?prompt=How%20do%20I%20add%20my%20own%20files%3F"
    assert browser.blocked_from(page) == [], "the page asked for something beyond 127.0.0.1"


def test_ask_about_this_opens_the_chat_with_the_question_in_its_input(
    wasm_page: Any, browser: OfflineBrowser, app_url: str
) -> None:
    chat = browser.context.new_page()
    chat.set_default_timeout(60_000)
    # Signed in first: Chainlit's sign-in redirect drops the query of the first visit.
    chat.goto(app_url)
    chat.locator("#chat-input").wait_for()
    # Chainlit's page moves on to its own address once it has read ?prompt=, which can happen
    # before "load" and abort a goto waiting for it; the input's value is what is checked.
    chat.goto(app_url + wasm_page.locator("a.ask").first.get_attribute("href"), wait_until="commit")
    chat.wait_for_function(
        "q => document.querySelector('#chat-input')?.value === q", arg=ADD_FILES, timeout=60_000
    )
    chat.close()


def test_browser_tokens_are_the_server_tokenizers(
    wasm_page: Any, sample_settings: Settings
) -> None:
    texts = PARITY_QUESTIONS + [
        "Naïve résumé — “quotes”, 東京 and €5; a\u200bb\ufeffc\x0bd ^_^ $x+y=z",
        "x" * 150 + " unaffable ﬁne ½",
        (REPO / "docs" / "user-guide.md").read_text()[:3000],
    ]
    tokenizer = tokenizer_at(sample_settings.embedder_dir)
    tokenizer.enable_truncation(sample_settings.embed_max_tokens)
    expected = [e.ids for e in tokenizer.encode_batch(texts)]
    got = wasm_page.evaluate(
        """async ([texts, max]) => {
            const { WordPiece } = await import("./app/wordpiece.js");
            const json = await (await fetch("./model/tokenizer.json")).json();
            const tok = WordPiece.fromJSON(json);
            return texts.map((t) => tok.encode(t, max));
        }""",
        [texts, sample_settings.embed_max_tokens],
    )
    assert got == expected


def _parity_floor() -> float:
    """The least cosine between the browser's and the server's vector of one question: both
    compute the same int8 sums, except where the server's kernels saturate."""
    return 0.98 if int8_kernels_saturate() else 0.999


def test_browser_query_vectors_match_the_server_embedder(
    wasm_page: Any, sample_settings: Settings
) -> None:
    # One question at a time, as the chat embeds them: with int8 a text's vector depends a little
    # on the batch it shares (one activation scale per batch), and the page embeds them alone.
    embedder = get_embedder(sample_settings)
    server = np.stack([embedder.embed_query(question) for question in PARITY_QUESTIONS])
    exact = Embedder(sample_settings.with_overrides(embed_precision="fp32"))
    reference = np.stack([exact.embed_query(question) for question in PARITY_QUESTIONS])
    browser = np.array([row["vector"] for row in embed(wasm_page, PARITY_QUESTIONS)])
    browser /= np.linalg.norm(browser, axis=1, keepdims=True)
    cosines = (browser * server).sum(axis=1)
    by_question = dict(zip(PARITY_QUESTIONS, cosines.round(5), strict=True))
    assert cosines.min() >= _parity_floor(), by_question
    faithful = (browser * reference).sum(axis=1)
    assert faithful.min() >= 0.99, dict(zip(PARITY_QUESTIONS, faithful.round(5), strict=True))


def test_browser_top1_is_the_server_dense_top1_for_the_qa_set(
    wasm_page: Any, sample_settings: Settings
) -> None:
    retriever = Retriever(sample_settings)
    questions = qa_questions()
    differ = []
    for question in questions:
        server_top = retriever.search(question, 1, mode="dense")[0].chunk_id
        browser_top = search(wasm_page, question, 5)[0]["id"]
        if browser_top != server_top:
            differ.append((question, server_top, browser_top))
    agreement = 1 - len(differ) / len(questions)
    assert len(questions) >= 80
    assert agreement >= 0.95, differ


def test_search_data_refuses_foreign_pages_and_host_names(app_url: str) -> None:
    data = f"{app_url}/search/data/index.json"
    assert httpx.get(data, timeout=60).json()["count"] > 0
    foreign = httpx.get(data, headers={"Origin": "http://evil.example"}, timeout=60)
    assert foreign.status_code == 403
    assert "RAG_ALLOWED_ORIGINS" in foreign.text
    rebound = httpx.get(
        f"{app_url}/search/data/vectors.bin", headers={"Host": "evil.example"}, timeout=60
    )
    assert rebound.status_code == 403
    assert "RAG_ALLOWED_HOSTS" in rebound.text
    page = httpx.get(f"{app_url}/search", headers={"Host": "evil.example"}, timeout=60)
    assert page.status_code == 403


def test_static_export_searches_from_a_plain_http_server(
    tmp_path: Path, sample_settings: Settings, browser: OfflineBrowser
) -> None:
    report = export_site(tmp_path / "site", sample_settings)
    assert report.passages > 0
    assert sorted(report.parts) == ["app", "data", "index.html", "model", "runtime"]
    with static_server(tmp_path / "site") as url:
        page = open_search_page(browser, f"{url}/index.html?ep=wasm")
        assert page.locator("#status").get_attribute("data-provider") == "wasm", page.inner_text(
            "#status"
        )
        hits = search(page, ADD_FILES)
        assert hits[0]["source"] == "user-guide.md"
        assert "python -m ingest" in hits[0]["text"]
        # No chat behind a static site: no "ask about this" links.
        page.locator("#q").fill(ADD_FILES)
        page.locator("#ask").click()
        page.locator(".result").first.wait_for()
        assert page.locator("a.ask").count() == 0
        assert browser.blocked_from(page) == []
        page.close()


def test_page_without_the_runtime_says_to_install_it(
    tmp_path: Path, sample_settings: Settings, browser: OfflineBrowser
) -> None:
    export_site(tmp_path / "site", sample_settings)
    shutil.rmtree(tmp_path / "site" / "runtime")
    with static_server(tmp_path / "site") as url:
        page = open_search_page(browser, f"{url}/index.html")
        assert page.locator("#status").get_attribute("data-error") == "true"
        assert "make web" in page.inner_text("#status")
        page.close()


def test_webgpu_embeds_like_the_server_when_chromium_offers_an_adapter(
    tmp_path: Path, app_url: str, sample_settings: Settings, playwright: Any
) -> None:
    with offline_chromium(playwright, tmp_path / "profile", webgpu=True) as gpu_browser:
        probe = gpu_browser.context.new_page()
        probe.goto(f"{app_url}/search/model/tokenizer.json")
        adapter = probe.evaluate(
            "async () => !!(navigator.gpu && await navigator.gpu.requestAdapter())"
        )
        if not adapter:
            pytest.skip("this Chromium offers no WebGPU adapter, even a software one")
        page = open_search_page(gpu_browser, f"{app_url}/search?ep=webgpu")
        assert page.locator("#status").get_attribute("data-provider") == "webgpu", page.inner_text(
            "#status"
        )
        assert search(page, ADD_FILES)[0]["source"] == "user-guide.md"
        embedder = get_embedder(sample_settings)  # one question at a time, as above
        server = np.stack([embedder.embed_query(question) for question in PARITY_QUESTIONS])
        vectors = np.array([row["vector"] for row in embed(page, PARITY_QUESTIONS)])
        assert ((vectors * server).sum(axis=1)).min() >= _parity_floor()
        assert gpu_browser.blocked_from(page) == []
