"""Search in the browser: query embedding on wasm and WebGPU against rag.embed, export sizes, load.

    python -m bench.bench_browser [--queries 30] [--quick]

One run, one machine: the sample documents in ``docs/`` are ingested into
``bench/_work/browser-sample`` (reused when present) and exported with
``rag.export_site``; the export is served by ``python -m http.server`` and
opened in headless Debian Chromium (loopback only). Then, on the same questions
(the QA set of the sample documents):

- **query embedding**: ``rag.embed`` on the server (2 threads, warm) against the page's
  ``embed()`` on wasm (one thread: a plain static server is not cross-origin isolated)
  and on WebGPU when Chromium offers an adapter (SwiftShader, a CPU emulating a GPU, here);
  the first query of each is left out as warm-up;
- **the app's page**: ``/search`` of ``chainlit run app.py`` sends cross-origin isolation
  headers, so ONNX Runtime Web runs wasm on 2 threads there;
- **page load**: from navigation to "ready" (runtime, model, passages and vectors
  fetched and the session created), in a fresh profile, so nothing is cached;
- **10k chunks**: the same export with 10,000 passages (the sample's passages repeated,
  random unit vectors): its data size, its load time and the time to rank them all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rag.embed import get_embedder
from rag.export_site import ExportReport, export_site
from rag.settings import Settings
from rag.store import ChunkStore
from rag.web.search_page import INDEX_PATH, VECTORS_PATH
from tests.browser import offline_chromium
from tests.browser_search import embed, open_search_page, search, static_server

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "_work"
QA = [REPO / "tests" / "qa" / "sample_docs.jsonl", REPO / "tests" / "qa" / "answers.jsonl"]
BIG = 10_000


def _sample_settings() -> Settings:
    from ingest.pipeline import ingest

    settings = Settings(
        _env_file=None,
        docs_dir=REPO / "docs",
        data_dir=WORK / "browser-sample",
        models_dir_override=Path(os.environ.get("RAG_MODELS_DIR", REPO / ".data" / "models")),
    )
    ingest(settings)  # only new or changed files cost time
    return settings


def _questions(n: int) -> list[str]:
    lines = [line for f in QA for line in f.read_text().splitlines() if line]
    return [json.loads(line)["q"] for line in lines][:n]


def _grow(site: Path, out: Path, count: int) -> int:
    """A copy of ``site`` whose data holds ``count`` passages; returns the data's bytes."""
    shutil.copytree(site, out, dirs_exist_ok=True)
    meta = json.loads((site / INDEX_PATH).read_bytes())
    passages = meta["passages"]
    meta["passages"] = [
        {**passages[i % len(passages)], "id": f"synthetic#{i}"} for i in range(count)
    ]
    meta["count"] = count
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, meta["dimension"])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    (out / INDEX_PATH).write_bytes(json.dumps(meta, separators=(",", ":")).encode())
    (out / VECTORS_PATH).write_bytes(vectors.astype("<f2").tobytes())
    return (out / INDEX_PATH).stat().st_size + (out / VECTORS_PATH).stat().st_size


def _server_ms(settings: Settings, questions: list[str]) -> list[float]:
    embedder = get_embedder(settings)
    embedder.embed_query(questions[0])  # warm-up
    times = []
    for question in questions[1:]:
        start = time.perf_counter()
        embedder.embed_query(question)
        times.append((time.perf_counter() - start) * 1000)
    return times


def _browser_run(
    pw: Any, base: str, provider: str, questions: list[str], page: str = "index.html"
) -> dict[str, Any] | None:
    """Load time (fresh profile), per-query embedding ms and the top-1 check on one provider."""
    with (
        tempfile.TemporaryDirectory() as profile,
        offline_chromium(pw, Path(profile), webgpu=provider == "webgpu") as browser,
    ):
        if provider == "webgpu":
            probe = browser.context.new_page()
            probe.goto(base + "data/index.json")
            if not probe.evaluate(
                "async () => !!(navigator.gpu && await navigator.gpu.requestAdapter())"
            ):
                return None
        start = time.perf_counter()
        tab = open_search_page(browser, f"{base}{page}?ep={provider}")
        load_s = time.perf_counter() - start
        if tab.locator("#status").get_attribute("data-provider") != provider:
            raise SystemExit(f"the page did not load on {provider}: {tab.inner_text('#status')}")
        runs = embed(tab, questions)
        ranks = [
            tab.evaluate(
                "async (q) => (await (await window.ragSearch.ready).search(q, 5)).rankMs", q
            )
            for q in questions[:5]
        ]
        top = search(tab, questions[0])[0]["source"]
        return {
            "load_s": load_s,
            "ms": [r["ms"] for r in runs[1:]],
            "rank_ms": statistics.median(ranks),
            "top": top,
            "blocked": len(browser.blocked),
        }


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def measure(n_questions: int) -> dict[str, Any]:
    """Everything the section reports, measured in this process back to back."""
    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()[0]
    settings = _sample_settings()
    questions = _questions(n_questions)
    site = WORK / "browser-site"
    shutil.rmtree(site, ignore_errors=True)
    report: ExportReport = export_site(site, settings)
    big_data = _grow(site, WORK / "browser-site-10k", BIG)
    results: dict[str, Any] = {
        "report": report,
        "big_data": big_data,
        "passages": ChunkStore(settings).count(),
        "questions": len(questions),
    }
    results["server"] = _server_ms(settings, questions)
    with sync_playwright() as pw:
        with static_server(site) as url:
            results["wasm"] = _browser_run(pw, f"{url}/", "wasm", questions)
            results["webgpu"] = _browser_run(pw, f"{url}/", "webgpu", questions)
        with static_server(WORK / "browser-site-10k") as url:
            results["wasm_10k"] = _browser_run(pw, f"{url}/", "wasm", questions[:6])
        with _app(settings) as url:
            results["app"] = _browser_run(pw, f"{url}/search/", "wasm", questions, page="")
    results["load"] = (load_before, os.getloadavg()[0])
    return results


@contextmanager
def _app(settings: Settings) -> Iterator[str]:
    """The real app (``chainlit run app.py``) over the sample store; it serves /search."""
    from tests.chainlit_server import app_env, running_chainlit

    # The search page never asks a model; nothing listens at this address.
    env = app_env(settings.data_dir, "http://127.0.0.1:9/v1")
    env.update(RAG_DOCS_DIR=str(settings.docs_dir), RAG_DATA_DIR=str(settings.data_dir))
    with tempfile.TemporaryDirectory() as workdir, running_chainlit(Path(workdir), env) as app:
        yield app.url


def _row(name: str, ms: list[float], server_p50: float) -> str:
    p50 = statistics.median(ms)
    p95 = sorted(ms)[int(0.95 * (len(ms) - 1))]
    return f"| {name} | {p50:.1f} | {p95:.1f} | {p50 / server_p50:.1f}x |"


def main(argv: list[str] | None = None) -> str:
    """Run the measurement and return the markdown section."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_browser", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="8 questions")
    args = parser.parse_args(argv)
    r = measure(8 if args.quick else args.queries)
    server_p50 = statistics.median(r["server"])
    report: ExportReport = r["report"]
    fixed = report.bytes - report.parts["data"]
    lines = [
        "## Search in the browser (bench_browser)",
        "",
        (
            f"`python -m bench.bench_browser`: the sample documents ({r['passages']} passages) exported "
            "with `python -m rag.export_site`, served by `python -m http.server`, opened in headless "
            f"Debian Chromium (loopback only); {r['questions']} questions of the sample QA sets, the "
            "first one left out as warm-up. Server: `rag.embed`, fp32, 2 threads. Browser: "
            "onnxruntime-web 1.30.0, the same fp32 model, one wasm thread (a static server is not "
            "cross-origin isolated); WebGPU on Chromium's SwiftShader adapter, a CPU emulating a GPU. "
            f"1-minute load average {r['load'][0]:.1f} before and {r['load'][1]:.1f} after, on 2 "
            "cores: every figure is slowed by other work."
        ),
        "",
        "| query embedding | p50 ms | p95 ms | vs rag.embed |",
        "|---|---|---|---|",
        _row("rag.embed (server)", r["server"], server_p50),
        _row("browser, wasm", r["wasm"]["ms"], server_p50),
    ]
    lines.append(_row("browser, wasm, 2 threads (the app's /search)", r["app"]["ms"], server_p50))
    if r["webgpu"]:
        lines.append(_row("browser, WebGPU (SwiftShader)", r["webgpu"]["ms"], server_p50))
    else:
        lines.append("| browser, WebGPU | - | - | no adapter in this Chromium |")
    big = r["wasm_10k"]
    lines += [
        "",
        "| export | passages | data | whole folder | page load, wasm (fresh profile) | ranking all passages (median of 5) |",
        "|---|---|---|---|---|---|",
        (
            f"| sample docs | {report.passages} | {_mb(report.parts['data'])} | {_mb(report.bytes)} "
            f"| {r['wasm']['load_s']:.1f} s | {r['wasm']['rank_ms']:.1f} ms |"
        ),
        (
            f"| {BIG:,} chunks | {BIG:,} | {_mb(r['big_data'])} | {_mb(fixed + r['big_data'])} "
            f"| {big['load_s']:.1f} s | {big['rank_ms']:.1f} ms |"
        ),
        "",
        (
            f"- The app's page (`/search`, cross-origin isolated, so 2 wasm threads) loaded in "
            f"{r['app']['load_s']:.1f} s in a fresh profile."
        ),
        (
            f"- The fixed part is {_mb(fixed)}: the fp32 model {_mb(report.parts['model'])}, "
            f"ONNX Runtime Web's wasm and WebGPU builds {_mb(report.parts['runtime'])}. "
            f"Vectors cost {384 * 2} bytes a passage (float16); text and metadata the rest."
        ),
        f'- Top passage for "{_questions(1)[0]}": {r["wasm"]["top"]} (wasm)'
        + (f", {r['webgpu']['top']} (WebGPU)" if r["webgpu"] else "")
        + f"; requests beyond loopback: {r['wasm']['blocked']}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
