"""What keeping a follow-up's files costs per question, beside the search itself (bench_scope).

    python -m bench.bench_scope [--rounds N]

Ingests the Brightwater Kayaks test corpus (``tests/corpus.py``) under
``bench/_work/scope``, then times, interleaved round by round so load on the machine
falls on every variant alike: :func:`rag.answer.question_scope` for a follow-up with
no history (the path that reads nothing), with a conversation of 40 turns whose first
question mentioned a file (the scope is carried from it), the list the input's ``@``
completion fetches (:func:`rag.web.file_names.file_names`), and the hybrid search
the follow-up then runs. Reports medians and each one's ratio to the search.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from ingest.pipeline import ingest
from rag.answer import question_scope, search_query
from rag.llm import Message
from rag.retrieve import get_retriever, retrieve
from rag.settings import Settings
from rag.web.file_names import file_names
from tests.corpus import build_corpus

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "_work" / "scope"
FOLLOW_UP = "And for part-timers?"
TURNS = 40


def _settings() -> Settings:
    shutil.rmtree(WORK, ignore_errors=True)  # always measure a clean ingest of today's files
    build_corpus(WORK / "docs")
    settings = Settings(
        _env_file=None,
        docs_dir=WORK / "docs",
        data_dir=WORK / "data",
        models_dir_override=REPO / ".data" / "models",
    )
    ingest(settings)
    return settings


def _conversation() -> list[Message]:
    history: list[Message] = [
        {"role": "user", "content": "@expenses.txt How many days of paid holiday do we get?"},
        {"role": "assistant", "content": "The expenses policy does not say [1]."},
    ]
    for n in range(TURNS - 1):
        history.append({"role": "user", "content": f"And what about case {n}?"})
        history.append({"role": "assistant", "content": f"Case {n} is covered [1]."})
    return history


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_scope")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    settings = _settings()
    history = _conversation()
    carried = question_scope(FOLLOW_UP, settings, None, history)
    assert carried.sources == ("policies/expenses.txt",) and carried.carried
    query = search_query(FOLLOW_UP, history)
    variants: dict[str, Callable[[], object]] = {
        "scope, no history": lambda: question_scope(FOLLOW_UP, settings),
        f"scope, {TURNS} turns, carried": lambda: question_scope(
            FOLLOW_UP, settings, None, history
        ),
        "file names for the @ list": lambda: file_names(settings),
        "hybrid search in the carried file": lambda: retrieve(
            query, settings=settings, sources=carried.sources
        ),
    }
    get_retriever(settings).sources()  # open the store and the BM25 index once
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    load = os.getloadavg()[0]  # this machine is shared: the ratios are what to compare
    search = statistics.median(times["hybrid search in the carried file"])
    rows = [
        f"| {name} | {statistics.median(t) * 1e3:.3f} | {statistics.median(t) / search:.4f} |"
        for name, t in times.items()
    ]
    return "\n".join(
        [
            "## Follow-ups that keep their files (bench_scope)",
            "",
            (
                f"`python -m bench.bench_scope --rounds {args.rounds}`: the Brightwater Kayaks "
                "corpus (5 files); the variants run interleaved, round by round. Median per "
                f"call, 1-minute load average {load:.1f} on 2 cores at the end:"
            ),
            "",
            "| what | ms | vs the search |",
            "|---|---|---|",
            *rows,
        ]
    )


if __name__ == "__main__":
    print(main())
