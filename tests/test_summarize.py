"""Whole-document tasks: map-reduce over every chunk of the named files, against a fake server.

The fake records every request, so the tests check what a summary must do: each
chunk of the file reaches the model in some map request, the reduce gets every
part's notes, and the answer cites the pages the notes came from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from rag.answer import AnswerDelta, AnswerDone, AnswerStart, answer
from rag.errors import RagError
from rag.retrieve import Retriever
from rag.settings import get_settings
from rag.summarize import NOTE_TOKENS, Progress
from tests.chat_session import ChatSession
from tests.fake_openai import FakeOpenAI
from tests.support import MODELS_DIR, offline_settings

MANUAL = "tidewater-12-manual.pdf"
SUMMARY = "The manual explains set-up, paddling, care and the warranty of the Tidewater 12."
_PART = re.compile(r"You read part (\d+) of (\d+)")


def notes_or_summary(request: dict[str, Any]) -> str:
    """Map requests get notes naming their part and citing its first passage; the reduce
    (and a one-request answer) gets the summary."""
    system = request["messages"][0]["content"]
    if part := _PART.search(system):
        return f"- notes on part {part.group(1)} of {part.group(2)} [1]."
    return SUMMARY


def flat(text: str) -> str:
    return " ".join(text.split())


def map_requests(fake: FakeOpenAI) -> list[dict[str, Any]]:
    return [r for r in fake.requests if _PART.search(r["messages"][0]["content"])]


async def test_a_summary_sends_every_chunk_in_a_map_request_and_every_note_to_the_reduce(
    corpus_store: Path,
) -> None:
    progress: list[Progress] = []

    async def record(step: Progress) -> None:
        progress.append(step)

    with FakeOpenAI(models=["m"], reply=notes_or_summary) as fake:
        # A small window: the six pages of the manual cannot go in one request.
        settings = offline_settings(
            corpus_store, llm_base_url=fake.base_url, context_tokens=800, answer_tokens=200
        )
        events = [
            e async for e in answer(f"Summarize @{MANUAL}", settings, model="m", on_progress=record)
        ]
    maps = map_requests(fake)
    parts = len(maps)
    assert parts >= 2 and len(fake.requests) == parts + 1  # map per part, then one reduce
    sent = [flat(r["messages"][-1]["content"]) for r in maps]
    chunks = Retriever(settings).chunks_of(MANUAL)
    for chunk in chunks:
        assert any(flat(chunk.text) in body for body in sent), f"chunk {chunk.id} never sent"
    reduce_prompt = fake.requests[-1]["messages"][-1]["content"]
    for n in range(1, parts + 1):
        assert f"notes on part {n} of {parts}" in reduce_prompt
    assert reduce_prompt.index("notes on part 1 of") < reduce_prompt.index(f"part {parts} of")
    assert "Task: Summarize tidewater-12-manual.pdf" in reduce_prompt

    start, *deltas, done = events
    assert isinstance(start, AnswerStart) and isinstance(done, AnswerDone)
    assert all(isinstance(d, AnswerDelta) for d in deltas)
    assert done.text == SUMMARY and not done.refused
    # Every page was read; the sources are the pages the notes cited: each part's first.
    assert [h.page for h in start.hits] == [1, 2, 3, 4, 5, 6]
    cited_pages = [c.hit.page for c in done.sources]
    assert cited_pages and set(cited_pages) < {1, 2, 3, 4, 5, 6} and 1 in cited_pages
    assert len(cited_pages) == parts
    assert all(c.hit.source == MANUAL and start.hits[c.number - 1] == c.hit for c in done.sources)
    assert [p.what for p in progress[:parts]] == [
        f"reading part {n} of {parts}" for n in range(1, parts + 1)
    ]
    assert progress[-1].what.startswith("writing the answer")


async def test_a_file_that_fits_the_window_is_answered_in_one_request_citing_its_chunks(
    corpus_store: Path,
) -> None:
    # Two words are too few to move a citation to another chunk (rag.grounding.recited).
    with FakeOpenAI(models=["m"], reply="Key points [1][6].") as fake:
        settings = offline_settings(corpus_store, llm_base_url=fake.base_url, context_tokens=8192)
        events = [e async for e in answer(f"list the key points of {MANUAL}", settings, model="m")]
    (request,) = fake.requests
    body = flat(request["messages"][-1]["content"])
    chunks = Retriever(settings).chunks_of(MANUAL)
    assert all(flat(c.text) in body for c in chunks)
    done = events[-1]
    assert isinstance(done, AnswerDone)
    assert [(c.number, c.hit.page) for c in done.sources] == [(1, 1), (6, 6)]


async def test_notes_too_many_for_one_window_are_combined_before_the_reduce(
    corpus_store: Path,
) -> None:
    # About 170 tokens: within a map request's cap, yet three of them overfill the reduce.
    long_notes = " ".join(f"detail{n}" for n in range(45))

    def verbose(request: dict[str, Any]) -> str:
        system = request["messages"][0]["content"]
        if _PART.search(system):
            return f"- {long_notes} [1]."
        return SUMMARY

    with FakeOpenAI(models=["m"], reply=verbose) as fake:
        settings = offline_settings(
            corpus_store, llm_base_url=fake.base_url, context_tokens=700, answer_tokens=150
        )
        events = [e async for e in answer(f"Summarize @{MANUAL}", settings, model="m")]
    maps = len(map_requests(fake))
    # map per part, at least one combining request, then the reduce
    assert len(fake.requests) > maps + 1
    assert isinstance(events[-1], AnswerDone) and events[-1].text == SUMMARY
    # Notes and combined notes are capped; only the answer gets RAG_ANSWER_TOKENS.
    assert all(r["max_tokens"] <= NOTE_TOKENS for r in fake.requests[:-1])


async def test_in_the_chat_a_summary_shows_its_progress_and_cites_pages(
    corpus_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app as chat_app

    with FakeOpenAI(models=["m"], reply=notes_or_summary) as fake:
        for name, value in {
            "RAG_DOCS_DIR": corpus_store / "docs",
            "RAG_DATA_DIR": corpus_store / "data",
            "RAG_MODELS_DIR": MODELS_DIR,
            "LLM_BASE_URL": fake.base_url,
            "RAG_CONTEXT_TOKENS": 800,
            "RAG_ANSWER_TOKENS": 200,
        }.items():
            monkeypatch.setenv(name, str(value))
        get_settings.cache_clear()
        try:
            async with ChatSession() as chat:
                await chat_app.on_chat_start()
                await chat.send(chat_app.on_message, f"Summarize @{MANUAL}")
                parts = len(map_requests(fake))
                (step,) = chat.steps("tool")
                shown = [
                    d["output"]
                    for e, d in chat.events
                    if e in ("new_message", "update_message") and d["id"] == step.id
                ]
                answer_text = chat.last_answer().output
                retrieval = chat.steps("retrieval")
        finally:
            get_settings.cache_clear()
    assert parts >= 2
    assert shown[0] == f"reading part 1 of {parts}"
    assert f"reading part {parts} of {parts}" in shown
    assert shown[-1].startswith("writing the answer")
    assert retrieval == []  # a whole-document task searches nothing: it reads everything
    assert answer_text.startswith(SUMMARY)
    assert "**Sources:** [1] tidewater-12-manual.pdf, page 1" in answer_text


async def test_a_one_request_summary_that_cites_nothing_is_sourced_to_every_page(
    corpus_store: Path,
) -> None:
    with FakeOpenAI(models=["m"], reply="A sea kayak manual, from set-up to warranty.") as fake:
        settings = offline_settings(corpus_store, llm_base_url=fake.base_url, context_tokens=8192)
        events = [e async for e in answer(f"Summarize {MANUAL}", settings, model="m")]
    done = events[-1]
    assert isinstance(done, AnswerDone) and not done.sources_inferred
    assert [(c.number, c.hit.page) for c in done.sources] == [(n, n) for n in range(1, 7)]


async def test_a_file_given_but_not_in_the_store_is_a_sentence_not_a_crash(
    corpus_store: Path,
) -> None:
    with FakeOpenAI(models=["m"]) as fake:
        settings = offline_settings(corpus_store, llm_base_url=fake.base_url)
        with pytest.raises(RagError, match="holds no passages of gone.md: ingest the file again"):
            [e async for e in answer("Summarize it", settings, model="m", files=["gone.md"])]
    assert fake.requests == []
