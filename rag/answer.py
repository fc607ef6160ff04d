"""The answer pipeline: question -> retrieval -> route -> prompt within budget -> stream.

Used by the chat app, the OpenAI-compatible API and the compare CLI, so all three
answer the same way. :func:`answer` is an async generator of events:

- :class:`AnswerStart` once, when a route accepted the request (its first token
  arrived): which endpoint and model answer, the passages in the prompt, and what
  was trimmed to fit the context window;
- :class:`AnswerDelta` per streamed piece of text;
- :class:`AnswerDone` at the end, with the full text and timings.

>>> async for event in answer("How do I add my own files?"):     # doctest: +SKIP
...     if isinstance(event, AnswerDelta):
...         print(event.text, end="")

Errors are :class:`~rag.errors.RagError` sentences: ``NoDocuments`` (nothing
ingested), ``EndpointUnavailable`` (every route was down before its first token;
names the URL and what to start), ``EndpointError`` (a server refused the request)
and ``StreamInterrupted`` (the stream broke midway; ``.partial`` keeps the text).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from rag.discovery import forget_endpoint, local_endpoint
from rag.errors import EndpointUnavailable, StreamInterrupted
from rag.llm import Endpoint, Message, list_models, stream_chat
from rag.prompt import (
    COMPACT,
    FULL,
    PromptTooLong,
    build_prompt,
    estimate_tokens,
    source_label,
    token_counter,
)
from rag.retrieve import Hit, retrieve
from rag.routing import LOCAL_REASON, Route, plan_routes
from rag.settings import Settings, get_settings


COMPACT_ANSWER_TOKENS = 160


@dataclass(frozen=True)
class AnswerStart:
    """A route accepted the request; the passages numbered [1].. are ``hits``."""

    route: Route
    hits: list[Hit]
    prompt_tokens: int
    dropped_history: int
    dropped_hits: int
    # The local endpoint did not answer (or none was found) before this route did:
    # a chat holding on to it should discover again (Foundry Local moves ports).
    local_down: bool = False


@dataclass(frozen=True)
class AnswerDelta:
    """The next piece of the answer's text."""

    text: str


@dataclass(frozen=True)
class AnswerDone:
    """The answer is complete."""

    route: Route
    text: str
    ttft_s: float  # from the call to the first token
    total_s: float  # from the call to the last token
    completion_tokens: int  # streamed deltas: one token each on OpenAI-style servers
    local_down: bool = False  # as in AnswerStart


AnswerEvent = AnswerStart | AnswerDelta | AnswerDone


async def answer(
    question: str,
    *,
    history: Sequence[Message] = (),
    model: str | None = None,
    local: Endpoint | None = None,
    hits: list[Hit] | None = None,
    settings: Settings | None = None,
) -> AsyncGenerator[AnswerEvent, None]:
    """Answer ``question`` from the documents, streaming events (see the module docstring).

    ``history`` is the conversation so far (bare questions and answers); ``model`` the
    model picked on ``local`` (default: the endpoint's model, else the first it lists);
    ``local`` the local endpoint (default: :func:`rag.discovery.local_endpoint`);
    ``hits`` reuses already retrieved passages (default: hybrid retrieval).
    """
    settings = settings or get_settings()
    started = time.perf_counter()
    if hits is None:
        # Embedding and Chroma block for a few ms; keep the event loop free for other chats.
        hits = await asyncio.to_thread(retrieve, question, settings=settings)
    missing_local: EndpointUnavailable | None = None
    if local is None:
        try:
            local = await local_endpoint(settings)
        except EndpointUnavailable as exc:
            # No local server at all: a configured fallback may still answer. A
            # placeholder keeps routing's logic intact (it is never dialled); in
            # local-only mode plan_routes leaves nothing else, so the sentence stands.
            missing_local = exc
            local = Endpoint(name="local", base_url="", context_tokens=settings.context_tokens)
    if model is None:
        model = (settings.llm_model or "") if missing_local else await default_model(local, settings)

    counter = token_counter(settings)
    routes = plan_routes(
        question,
        settings,
        local=local,
        model=model,
        prompt_tokens=estimate_tokens(
            question, hits, settings=settings, history=history, counter=counter
        ),
    )

    if missing_local is not None:
        routes = [r for r in routes if r.endpoint.base_url]
        if not routes:
            raise missing_local

    down: list[EndpointUnavailable | StreamInterrupted] = [missing_local] if missing_local else []
    local_down = missing_local is not None
    too_long: list[PromptTooLong] = []
    for position, route in enumerate(routes):
        compact = route.endpoint.compact_prompt
        try:
            prompt = build_prompt(
                question,
                hits,
                settings=settings,
                history=history,
                context_tokens=route.endpoint.context_tokens,
                counter=counter,
                style=COMPACT if compact else FULL,
            )
        except PromptTooLong as exc:
            # A route with a larger window (a cloud fallback) may still take it.
            too_long.append(exc)
            continue
        stream = stream_chat(
            route.endpoint,
            prompt.messages,
            model=route.model,
            # A tiny model's first sentences are its best; greedy decoding keeps it
            # from wandering off the passages.
            max_tokens=min(settings.answer_tokens, COMPACT_ANSWER_TOKENS)
            if compact
            else settings.answer_tokens,
            temperature=0.0 if compact else None,
            settings=settings,
        )
        try:
            first: str | None = await anext(stream)
        except StopAsyncIteration:
            first = None  # the model answered with nothing at all
        except (EndpointUnavailable, StreamInterrupted) as exc:
            # Broken before any text is as good as down: the next route may still answer.
            last = position == len(routes) - 1
            if isinstance(exc, StreamInterrupted) and (exc.partial or last):
                raise
            down.append(exc)
            if route.endpoint.base_url == local.base_url:
                local_down = True
                forget_endpoint(local)
            continue

        ttft = time.perf_counter() - started
        parts: list[str] = []
        try:
            yield AnswerStart(
                route=route,
                hits=prompt.hits,
                prompt_tokens=prompt.tokens,
                dropped_history=prompt.dropped_history,
                dropped_hits=prompt.dropped_hits,
                local_down=local_down,
            )
            if first is not None:
                parts.append(first)
                yield AnswerDelta(first)
                async for text in stream:
                    parts.append(text)
                    yield AnswerDelta(text)
        finally:
            # A caller that stops listening (user pressed stop, API client left) must
            # close the HTTP stream now, so the server stops generating.
            await stream.aclose()
        yield AnswerDone(
            route=route,
            text="".join(parts),
            ttft_s=ttft,
            total_s=time.perf_counter() - started,
            completion_tokens=len(parts),
            local_down=local_down,
        )
        return

    if too_long and not down:
        raise too_long[0]
    raise _all_down(down)


async def default_model(local: Endpoint, settings: Settings) -> str:
    """The model to use on ``local`` when none was picked: its own, else the first listed.

    When the endpoint cannot be asked (it is down), an empty name is returned and the
    routes decide: the local route fails with the endpoint-down sentence and a
    fallback, if configured, still answers.
    """
    if local.model:
        return local.model
    if settings.llm_model:
        return settings.llm_model
    try:
        models = await list_models(local, settings)
    except EndpointUnavailable:
        return ""
    return choose_model(models, None)


def choose_model(models: Sequence[str], preferred: str | None) -> str:
    """``preferred`` when ``models`` lists it, else the first listed one (else ``preferred``)."""
    if preferred and preferred in models:
        return preferred
    return models[0] if models else (preferred or "")


def answered_elsewhere(route: Route) -> bool:
    """True when the answer did not come from the local model the user picked.

    That is, when it left the machine, or routing sent it somewhere else (code
    model, fallback, prompt too large): the one rule for when the chat and the
    API say who answered. A model the user pinned on a local endpoint is theirs.
    """
    rerouted = route.reason != LOCAL_REASON and not route.reason.startswith("pinned")
    return not route.endpoint.is_local or rerouted


def format_sources(hits: list[Hit]) -> str:
    """The passages as ``[n] file, page p`` lines, numbered as in the prompt (for API clients)."""
    return "\n".join(f"[{n}] {source_label(h)}" for n, h in enumerate(hits, start=1))


def _all_down(errors: list[EndpointUnavailable | StreamInterrupted]) -> EndpointUnavailable:
    if not errors:
        return EndpointUnavailable("No route to a model server is configured.")
    if len(errors) == 1 and isinstance(errors[0], EndpointUnavailable):
        return errors[0]
    return EndpointUnavailable(" ".join(str(e) for e in errors))
