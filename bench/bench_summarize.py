"""Whole-document tasks with the embedded engine: how long "summarize @file" takes.

Run as ``python -m bench.bench_summarize [--model TIER] [--quick]``; prints a markdown
section for bench/RESULTS.md.

The test corpus (tests/corpus.py: a handbook, two policies, a checklist and a six-page
PDF manual) is ingested into a temporary folder; then each task goes through
:func:`rag.answer.answer` exactly as the chat sends it, answered by the embedded
engine (SmolLM2-135M by default, the fast tier). Each row gives the chunks read, the
model requests (map parts, combining, the reduce; 1 when the files fit one window),
the time to the answer's first token (the map phase included) and the total.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ingest.pipeline import ingest
from rag.answer import AnswerDelta, AnswerDone, answer
from rag.retrieve import get_retriever
from rag.settings import Settings, get_settings
from rag.summarize import Progress
from tests.corpus import build_corpus

TASKS = [
    "Summarize @tidewater-12-manual.pdf",
    "List the key points of @handbook.md",
    "Compare @expenses.txt and @security.html",
    "Summarize @handbook.md, @expenses.txt and @tidewater-12-manual.pdf",
]


@dataclass(frozen=True)
class TaskRun:
    """One whole-document task, timed."""

    task: str
    chunks: int
    requests: int
    first_token_s: float
    total_s: float
    answer_words: int
    pages_cited: int


async def run_task(task: str, settings: Settings) -> TaskRun:
    """Answer ``task`` through the pipeline and time it."""
    steps: list[Progress] = []

    async def count(progress: Progress) -> None:
        steps.append(progress)

    started = time.perf_counter()
    first: float | None = None
    done: AnswerDone | None = None
    async for event in answer(task, settings, on_progress=count):
        if isinstance(event, AnswerDelta) and first is None:
            first = time.perf_counter() - started
        elif isinstance(event, AnswerDone):
            done = event
    assert done is not None
    files = [name.strip(",").lstrip("@") for name in task.split() if name.startswith("@")]
    retriever = get_retriever(settings)
    sources = [s for s in retriever.sources() if any(s.endswith(f) for f in files)]
    chunks = sum(len(retriever.chunks_of(s)) for s in sources)
    # Progress comes before each map and combining request and once before the reduce.
    requests = len(steps) if steps else 1
    return TaskRun(
        task,
        chunks,
        requests,
        first or done.total_s,
        done.total_s,
        len(done.text.split()),
        len(done.sources),
    )


def main(argv: list[str] | None = None) -> str:
    """Run every task once after a warm-up and return the section for bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_summarize")
    parser.add_argument("--model", default="smollm2-135m", help="engine tier (rag/model_tiers.py)")
    parser.add_argument("--quick", action="store_true", help="the first task only")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-summarize-"))
    try:
        build_corpus(root / "docs")
        settings = get_settings().with_overrides(
            docs_dir=root / "docs", data_dir=root / "data", engine_model=args.model
        )
        settings = settings.model_copy(update={"llm_base_url": None, "engine": "auto"})
        ingest(settings)
        load = os.getloadavg()[0]
        asyncio.run(run_task("Summarize @handbook.md", settings))  # warm-up: engine start
        runs = [asyncio.run(run_task(t, settings)) for t in TASKS[: 1 if args.quick else None]]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return _section(args.model, runs, load)


def _section(model: str, runs: list[TaskRun], load: float) -> str:
    rows = [
        f"| `{r.task}` | {r.chunks} | {r.requests} | {r.first_token_s:.1f} s | "
        f"{r.total_s:.1f} s | {r.answer_words} | {r.pages_cited} |"
        for r in runs
    ]
    return "\n".join([
        "## Whole-document tasks with the embedded engine (bench_summarize)",
        "",
        f"`python -m bench.bench_summarize`: the test corpus (tests/corpus.py), each task once "
        f"through `rag.answer.answer` after a warm-up, answered by the embedded `{model}` tier "
        f"on this machine's CPU; 1-minute load average {load:.1f} on 2 cores at the start. "
        "Requests: model calls (map parts, combining, the reduce), 1 when the files fit one "
        "window (a CPU model reads at most 1,536 tokens of passages per request). First "
        "token: from the question to the answer's first token, the map phase included.",
        "",
        "| task | chunks read | requests | first token | total | answer words | sources |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])


if __name__ == "__main__":
    print(main())
