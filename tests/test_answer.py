"""The answer pipeline on its own: events, timings, routes that cannot take the prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.answer import AnswerDelta, AnswerDone, AnswerStart, answer, format_sources
from rag.errors import EndpointError, EndpointUnavailable
from rag.prompt import PromptTooLong
from rag.retrieve import Hit
from rag.routing import DEFAULT_START_HINT, Kind, Reason
from tests.support import offline_settings
from tests.fake_openai import FakeOpenAI

QUESTION = "How many days of paid holiday do employees get?"
REPLY = "Employees get 28 days of paid holiday a year [1]."
# A passage that covers QUESTION, for tests that need no retrieval.
HOLIDAY = Hit("handbook.md#0", "handbook.md", None, None, "Employees get 28 days of holiday.", 1.0)


async def test_events_come_in_order_and_the_done_event_adds_them_up(corpus_store: Path) -> None:
    with FakeOpenAI(models=["m"], reply=REPLY, first_token_delay_s=0.05) as fake:
        # A roomy window: nothing needs trimming.
        settings = offline_settings(corpus_store, llm_base_url=fake.base_url, context_tokens=8192)
        events = [e async for e in answer(QUESTION, settings, model="m")]

    start, *deltas, done = events
    assert isinstance(start, AnswerStart) and isinstance(done, AnswerDone)
    assert all(isinstance(d, AnswerDelta) for d in deltas) and len(deltas) > 3
    assert done.text == "".join(d.text for d in deltas) == REPLY
    assert done.completion_tokens == len(deltas)
    assert 0.05 <= done.ttft_s <= done.total_s
    assert start.route == done.route
    assert start.route.provider.kind is Kind.CONFIGURED and start.route.model == "m"
    assert start.route.reason is Reason.PICKED
    assert start.hits and start.hits[0].source == "handbook.md"
    assert start.prompt_tokens > 0 and start.dropped_hits == 0 and start.dropped_history == 0


async def test_a_capable_model_is_asked_with_the_configured_answer_length_and_temperature(
    corpus_store: Path,
) -> None:
    with FakeOpenAI(models=["m"], reply=REPLY) as fake:
        settings = offline_settings(
            corpus_store, llm_base_url=fake.base_url, answer_tokens=300, temperature=0.7
        )
        [_ async for _ in answer(QUESTION, settings, model="m")]
    (request,) = fake.requests
    assert request["max_tokens"] == 300 and request["temperature"] == 0.7
    assert request["stream"] is True


async def test_without_a_picked_model_the_servers_first_listed_model_answers(
    corpus_store: Path,
) -> None:
    with FakeOpenAI(models=["first", "second"], reply=REPLY) as fake:
        settings = offline_settings(corpus_store, llm_base_url=fake.base_url)
        events = [e async for e in answer(QUESTION, settings)]
    assert isinstance(events[-1], AnswerDone) and events[-1].route.model == "first"
    assert fake.models_called == ["first"]


async def test_a_question_too_long_for_the_local_window_goes_to_the_fallback(
    corpus_store: Path,
) -> None:
    long_question = QUESTION + " " + "Please consider every detail of the policy. " * 60
    with (
        FakeOpenAI(models=["m"], reply=REPLY) as small,
        FakeOpenAI(models=["big"], reply="From the cloud [1].") as cloud,
    ):
        settings = offline_settings(
            corpus_store,
            llm_base_url=small.base_url,
            context_tokens=512,
            answer_tokens=256,
            llm_fallback_base_url=cloud.base_url,
            llm_fallback_model="big",
        )
        events = [e async for e in answer(long_question, settings, model="m")]

    done = events[-1]
    assert isinstance(done, AnswerDone) and done.text == "From the cloud [1]."
    assert done.route.endpoint.name == "fallback" and done.route.reason is Reason.TOO_LARGE
    assert small.requests == []


async def test_a_question_too_long_with_nowhere_else_to_go_is_a_sentence(
    corpus_store: Path,
) -> None:
    long_question = "Please consider every detail of the policy. " * 60
    with FakeOpenAI(models=["m"], reply=REPLY) as fake:
        settings = offline_settings(
            corpus_store, llm_base_url=fake.base_url, context_tokens=256, answer_tokens=128
        )
        with pytest.raises(PromptTooLong, match="too long for the model's context window"):
            async for _ in answer(long_question, settings, model="m"):
                pass
        assert fake.requests == []


async def test_a_local_server_that_is_down_is_named_with_what_to_start(corpus_store: Path) -> None:
    with FakeOpenAI(models=["m"]) as fake:
        url = fake.base_url
    settings = offline_settings(corpus_store, llm_base_url=url)
    with pytest.raises(EndpointUnavailable) as err:
        async for _ in answer(QUESTION, settings, model="m", hits=[HOLIDAY]):
            pass
    assert str(err.value).startswith(f"No model server answered at {url}")
    assert str(err.value).endswith(f": {DEFAULT_START_HINT}.")
    assert err.value.base_url == url


async def test_local_and_fallback_down_names_both(corpus_store: Path) -> None:
    with FakeOpenAI(models=["m"]) as local, FakeOpenAI(models=["big"]) as cloud:
        urls = (local.base_url, cloud.base_url)
    settings = offline_settings(
        corpus_store, llm_base_url=urls[0], llm_fallback_base_url=urls[1], llm_fallback_model="big"
    )
    with pytest.raises(EndpointUnavailable) as err:
        async for _ in answer(QUESTION, settings, model="m", hits=[HOLIDAY]):
            pass
    message = str(err.value)
    assert f"No model server answered at {urls[0]}" in message
    assert f"No model server answered at {urls[1]}" in message
    assert "LLM_FALLBACK_BASE_URL" in message  # the fallback's own hint


async def test_a_model_the_server_does_not_have_is_its_refusal_not_a_fallback(
    corpus_store: Path,
) -> None:
    with (
        FakeOpenAI(models=["m"]) as local,
        FakeOpenAI(models=["big"], reply="From the cloud [1].") as cloud,
    ):
        settings = offline_settings(
            corpus_store,
            llm_base_url=local.base_url,
            llm_fallback_base_url=cloud.base_url,
            llm_fallback_model="big",
        )
        with pytest.raises(EndpointError, match="rejected the request for model 'typo'.*HTTP 404"):
            async for _ in answer(QUESTION, settings, model="typo", hits=[HOLIDAY]):
                pass
    assert cloud.requests == []


def test_sources_are_numbered_like_the_prompt_with_pages_for_pdfs() -> None:
    hits = [
        Hit("a#0", "guide.pdf", 3, None, "text", 0.1),
        Hit("b#2", "notes/setup.md", None, "Setup", "text", 0.05),
    ]
    assert format_sources(hits) == "[1] guide.pdf, page 3\n[2] notes/setup.md"
