"""The answer pipeline on its own: events, timings, routes that cannot take the prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.answer import AnswerDelta, AnswerDone, AnswerStart, answer, format_sources
from rag.llm import Endpoint
from rag.prompt import PromptTooLong
from rag.retrieve import Hit
from rag.settings import Settings
from tests.conftest import make_settings
from tests.fake_openai import FakeOpenAI

QUESTION = "How many days of paid holiday do employees get?"
REPLY = "Employees get 28 days of paid holiday a year [1]."

def local(fake: FakeOpenAI, settings: Settings) -> Endpoint:
    return Endpoint(name="local", base_url=fake.base_url, context_tokens=settings.context_tokens)


async def test_events_come_in_order_and_the_done_event_adds_them_up(corpus_store: Path) -> None:
    settings = make_settings(corpus_store)
    with FakeOpenAI(models=["m"], reply=REPLY, first_token_delay_s=0.05) as fake:
        events = [
            e
            async for e in answer(
                QUESTION, model="m", local=local(fake, settings), settings=settings
            )
        ]

    start, *deltas, done = events
    assert isinstance(start, AnswerStart) and isinstance(done, AnswerDone)
    assert all(isinstance(d, AnswerDelta) for d in deltas) and len(deltas) > 3
    assert done.text == "".join(d.text for d in deltas) == REPLY
    assert done.completion_tokens == len(deltas)
    assert 0.05 <= done.ttft_s <= done.total_s
    assert start.route.endpoint.name == "local" and start.route.model == "m"
    assert start.hits and start.hits[0].source == "handbook.md"
    assert start.prompt_tokens > 0 and start.dropped_hits == 0 and start.dropped_history == 0


async def test_a_question_too_long_for_the_local_window_goes_to_the_fallback(
    corpus_store: Path,
) -> None:
    long_question = QUESTION + " " + "Please consider every detail of the policy. " * 60
    with (
        FakeOpenAI(models=["m"], reply=REPLY) as small,
        FakeOpenAI(models=["big"], reply="From the cloud [1].") as cloud,
    ):
        settings = make_settings(
            corpus_store,
            context_tokens=512,
            answer_tokens=256,
            llm_fallback_base_url=cloud.base_url,
            llm_fallback_model="big",
        )
        events = [
            e
            async for e in answer(
                long_question, model="m", local=local(small, settings), settings=settings
            )
        ]

    done = events[-1]
    assert isinstance(done, AnswerDone) and done.text == "From the cloud [1]."
    assert done.route.endpoint.name == "fallback" and small.requests == []


async def test_a_question_too_long_with_nowhere_else_to_go_is_a_sentence(corpus_store: Path) -> None:
    long_question = "Please consider every detail of the policy. " * 60
    settings = make_settings(corpus_store, context_tokens=256, answer_tokens=128)
    with FakeOpenAI(models=["m"], reply=REPLY) as fake:
        with pytest.raises(PromptTooLong, match="too long for the model's context window"):
            async for _ in answer(
                long_question, model="m", local=local(fake, settings), settings=settings
            ):
                pass
        assert fake.requests == []


def test_sources_are_numbered_like_the_prompt_with_pages_for_pdfs() -> None:
    hits = [
        Hit("a#0", "guide.pdf", 3, None, "text", 0.1),
        Hit("b#2", "notes/setup.md", None, "Setup", "text", 0.05),
    ]
    assert format_sources(hits) == "[1] guide.pdf, page 3\n[2] notes/setup.md"
