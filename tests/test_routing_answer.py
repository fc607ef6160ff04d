"""Routing through the real answer pipeline: two fake model servers on loopback, a real store.

The "local" and "cloud" servers are tests.fake_openai.FakeOpenAI instances; the
store is the test corpus ingested into a temporary data dir by the real ingest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.answer import AnswerDone, AnswerStart, answer
from rag.errors import EndpointUnavailable, RagError
from rag.routing import Reason, RouteRefused
from rag.settings import Settings
from rag.web.chat_text import route_note
from tests.support import offline_settings, with_fallback
from tests.fake_openai import FakeOpenAI
from tests.foundry_fake import no_foundry

QUESTION = "How many days of paid holiday does everyone get?"


@pytest.fixture
def local() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=["phi-local", "coder"], reply="Local says 28 days [1].") as fake:
        yield fake


@pytest.fixture
def cloud() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=["gpt-cloud", "gpt-code"], reply="Cloud says 28 days [1].") as fake:
        yield fake


def _both(root: Path, local: FakeOpenAI, cloud: FakeOpenAI, **overrides: object) -> Settings:
    return with_fallback(
        root, local.base_url, cloud.base_url, "gpt-cloud", llm_model="phi-local", **overrides
    )


async def _ask(
    settings: Settings, question: str = QUESTION, *, model: str | None = None
) -> tuple[AnswerStart, AnswerDone]:
    start = done = None
    async for event in answer(question, settings, model=model):
        if isinstance(event, AnswerStart):
            start = event
        elif isinstance(event, AnswerDone):
            done = event
    assert start is not None and done is not None
    return start, done


def _prompt_text(request: dict) -> str:
    return "\n".join(str(m["content"]) for m in request["messages"])


async def test_local_first_answers_locally_while_local_is_up(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    start, done = await _ask(_both(corpus_store, local, cloud))
    assert done.route.endpoint.name == "configured" and done.route.reason is Reason.PICKED
    assert not done.route.answered_elsewhere
    assert done.text == "Local says 28 days [1]."
    assert local.models_called == ["phi-local"] and cloud.requests == []


async def test_local_endpoint_dying_mid_session_falls_back_in_local_first(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    settings = _both(corpus_store, local, cloud)
    _, first = await _ask(settings)
    assert first.route.endpoint.name == "configured"

    local.stop()
    start, second = await _ask(settings, "And how many carry over?")
    assert second.route.endpoint.name == "fallback"
    assert second.route.reason is Reason.LOCAL_DOWN and second.route.answered_elsewhere
    assert route_note(second.route) == "local endpoint down -> cloud fallback 'fallback'"
    assert second.text == "Cloud says 28 days [1]."
    assert cloud.models_called == ["gpt-cloud"]
    assert "And how many carry over?" in _prompt_text(cloud.requests[0])
    assert start.hits, "the fallback got the retrieved context too"


async def test_local_endpoint_dying_in_local_only_says_so_and_never_calls_the_cloud(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    settings = _both(corpus_store, local, cloud, routing="local-only")
    _, first = await _ask(settings)
    assert first.route.endpoint.name == "configured"

    local.stop()
    with pytest.raises(EndpointUnavailable) as err:
        await _ask(settings, "And how many carry over?")
    assert f"No model server answered at {local.base_url}" in str(err.value)
    assert cloud.requests == []


async def test_no_local_server_found_at_all_still_answers_through_the_fallback(
    corpus_store: Path, cloud: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No LLM_BASE_URL, no foundry on PATH, engine off: discovery finds nothing.
    no_foundry(tmp_path / "bin", monkeypatch)
    settings = offline_settings(
        corpus_store, llm_fallback_base_url=cloud.base_url, llm_fallback_model="gpt-cloud"
    )
    start, done = await _ask(settings)
    assert done.route.endpoint.name == "fallback" and done.route.answered_elsewhere
    assert done.text == "Cloud says 28 days [1]."
    assert start.hits and cloud.models_called == ["gpt-cloud"]


async def test_no_local_server_in_local_only_says_what_to_start_and_never_calls_the_cloud(
    corpus_store: Path, cloud: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_foundry(tmp_path / "bin", monkeypatch)
    settings = offline_settings(
        corpus_store,
        llm_fallback_base_url=cloud.base_url,
        llm_fallback_model="gpt-cloud",
        routing="local-only",
    )
    with pytest.raises(EndpointUnavailable, match="No local model server was found"):
        await _ask(settings)
    assert cloud.requests == []


async def test_prompt_over_local_budget_goes_to_the_fallback_first(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    # 600-token window minus 512 answer tokens leaves no room for five passages.
    settings = _both(corpus_store, local, cloud, context_tokens=600, answer_tokens=512)
    start, done = await _ask(settings)
    assert done.route.endpoint.name == "fallback"
    assert done.route.reason is Reason.TOO_LARGE
    assert route_note(done.route).startswith("prompt too large for the local model (")
    assert local.requests == []
    assert "28 days of paid holiday" in _prompt_text(cloud.requests[0])


async def test_over_budget_prompt_in_local_only_stays_local(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    settings = _both(
        corpus_store, local, cloud, routing="local-only", context_tokens=700, answer_tokens=256
    )
    _, done = await _ask(settings)
    assert done.route.endpoint.name == "configured"
    assert cloud.requests == []


async def test_code_question_goes_to_the_code_model(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    settings = _both(corpus_store, local, cloud, llm_code_model="coder")
    _, done = await _ask(settings, "Write a Python function that counts holiday days")
    assert done.route.model == "coder"
    assert done.route.reason is Reason.CODE and done.route.detail == "asks for code"
    assert local.models_called == ["coder"]
    _, general = await _ask(settings)
    assert general.route.model == "phi-local" and general.route.reason is Reason.PICKED


async def test_cloud_first_uses_the_cloud_and_local_when_the_cloud_dies(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    settings = _both(corpus_store, local, cloud, routing="cloud-first")
    _, first = await _ask(settings)
    assert first.route.endpoint.name == "fallback" and local.requests == []
    cloud.stop()
    _, second = await _ask(settings)
    assert second.route.endpoint.name == "configured"
    assert second.route.reason is Reason.CLOUD_DOWN


async def test_local_only_never_leaks_with_every_temptation_at_once(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI, tmp_path: Path
) -> None:
    """A cloud code model, a cloud fallback in the file, an over-budget question, local down."""
    routing = tmp_path / "routing.toml"
    routing.write_text(
        f"""
mode = "cloud-first"

[[endpoints]]
name = "cloudcode"
base_url = "{cloud.base_url}"
models = ["gpt-code"]
labels = ["code", "fallback"]

[rules]
code_model = "gpt-code"
""",
        encoding="utf-8",
    )
    settings = _both(corpus_store, local, cloud, routing="local-only", routing_file=routing)
    tiny = settings.with_overrides(context_tokens=600, answer_tokens=512)
    question = "```python\nraise ValueError(days)\n```\nWrite a function that fixes this"

    # Local is up but the prompt cannot fit its tiny window: an error, not the cloud.
    with pytest.raises(RagError, match="too long for the model's context window"):
        await _ask(tiny, question)
    # Local answers the code question itself (with the picked model, the code model is remote).
    _, done = await _ask(settings, question)
    assert (done.route.endpoint.name, done.route.model) == ("configured", "phi-local")
    # A model pinned to the cloud is refused, not sent.
    with pytest.raises(RouteRefused, match="local-only"):
        await _ask(settings, question, model="cloudcode:gpt-code")
    local.stop()
    with pytest.raises(EndpointUnavailable, match="No model server answered"):
        await _ask(settings, question)
    with pytest.raises(RagError):  # over budget and down: still an error, never the cloud
        await _ask(tiny, "What is the refund policy?")
    assert cloud.requests == []


async def test_llm_model_pinned_to_the_cloud_is_refused_in_local_only(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    """LLM_MODEL may name a pinned id (``fallback:gpt-cloud``); as the default it pins too."""
    local_only = _both(corpus_store, local, cloud, routing="local-only")
    settings = local_only.with_overrides(llm_model="fallback:gpt-cloud")
    with pytest.raises(RouteRefused, match="local-only"):
        await _ask(settings)
    assert local.requests == [] and cloud.requests == []


async def test_llm_model_pinned_to_the_fallback_is_answered_by_the_fallback(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    settings = _both(corpus_store, local, cloud).with_overrides(llm_model="fallback:gpt-cloud")
    _, done = await _ask(settings)
    assert (done.route.endpoint.name, done.route.model) == ("fallback", "gpt-cloud")
    assert done.route.reason is Reason.PINNED
    assert local.requests == []
