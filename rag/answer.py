"""The answer pipeline: question -> retrieval -> routes -> prompt within budget -> stream.

Used by the chat app, the OpenAI-compatible API, compare and the answer eval,
so all of them answer the same way. :func:`answer` is an async generator of events:

- :class:`AnswerStart` once, when a route accepted the request (its first token
  arrived): which provider and model answer, the passages in the prompt, and
  what was trimmed to fit the context window;
- :class:`AnswerDelta` per streamed piece of text;
- :class:`AnswerDone` at the end, with the full text and timings.

Errors are :class:`~rag.errors.RagError` sentences: ``NoDocuments`` (nothing
ingested), ``EndpointUnavailable`` (every route was down before its first token;
names the URL and what to start), ``EndpointError`` (a server refused the request)
and ``StreamInterrupted`` (the stream broke midway; ``.partial`` keeps the text).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from rag.catalog import model_catalog
from rag.errors import EndpointUnavailable, RagError, StreamInterrupted
from rag.llm import Message, stream_chat
from rag.prompt import (
    Prompt,
    PromptTooLong,
    build_prompt,
    estimate_tokens,
    source_label,
    style_for,
    token_counter,
)
from rag.retrieve import Hit, retrieve
from rag.routing import Route
from rag.settings import Settings


@dataclass(frozen=True)
class AnswerStart:
    """A route accepted the request; the passages numbered [1].. are ``hits``."""

    route: Route
    hits: list[Hit]
    prompt_tokens: int
    dropped_history: int
    dropped_hits: int


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


AnswerEvent = AnswerStart | AnswerDelta | AnswerDone


async def answer(
    question: str,
    settings: Settings,
    *,
    model: str | None = None,
    history: Sequence[Message] = (),
    hits: list[Hit] | None = None,
) -> AsyncGenerator[AnswerEvent, None]:
    """Answer ``question`` from the documents, streaming events (see the module docstring).

    ``model`` is the picked id (None: the local server's default; ``endpoint:model``
    pins one provider); ``history`` the conversation so far (bare questions and
    answers); ``hits`` reuses already retrieved passages (default: hybrid retrieval).
    """
    started = time.perf_counter()
    catalog = model_catalog(settings)
    if hits is None:
        # Embedding and Chroma block for a few ms; keep the event loop free for other chats.
        hits = await asyncio.to_thread(retrieve, question, settings=settings)
    counter = token_counter(settings)
    size = estimate_tokens(question, hits, settings=settings, history=history, counter=counter)
    routes = await catalog.routes(question, model, size)

    down: list[RagError] = []
    too_long: list[PromptTooLong] = []
    for position, route in enumerate(routes):
        try:
            prompt = _prompt(route, question, hits, history, settings)
        except PromptTooLong as exc:
            too_long.append(exc)  # a route with a larger window (a cloud fallback) may take it
            continue
        stream = _stream(route, prompt, settings)
        try:
            first = await _first_piece(stream)
        except (EndpointUnavailable, StreamInterrupted) as exc:
            # Broken before any text is as good as down: the next route may still answer.
            if isinstance(exc, StreamInterrupted) and (exc.partial or position == len(routes) - 1):
                raise
            catalog.report_down(route.provider)
            down.append(route.provider.explain(exc) if isinstance(exc, EndpointUnavailable) else exc)
            continue
        async for event in _relay(route, prompt, stream, first, started):
            yield event
        return
    if too_long and not down:
        raise too_long[0]
    raise _all_down(down)


def _prompt(
    route: Route, question: str, hits: list[Hit], history: Sequence[Message], settings: Settings
) -> Prompt:
    return build_prompt(
        question,
        hits,
        settings=settings,
        history=history,
        context_tokens=route.provider.context_tokens,
        style=style_for(route.provider),
    )


def _stream(route: Route, prompt: Prompt, settings: Settings) -> AsyncIterator[str]:
    style = style_for(route.provider)
    tokens = min(settings.answer_tokens, style.answer_tokens or settings.answer_tokens)
    return stream_chat(
        route.endpoint,
        prompt.messages,
        model=route.model,
        settings=settings,
        max_tokens=tokens,
        temperature=style.temperature,
    )


async def _first_piece(stream: AsyncIterator[str]) -> str | None:
    """The stream's first text, or None when the model answered with nothing at all."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None


async def _relay(
    route: Route, prompt: Prompt, stream: AsyncIterator[str], first: str | None, started: float
) -> AsyncGenerator[AnswerEvent, None]:
    """The events of one accepted route: start, the text as it streams, done."""
    ttft = time.perf_counter() - started
    parts: list[str] = []
    try:
        yield AnswerStart(
            route=route,
            hits=prompt.hits,
            prompt_tokens=prompt.tokens,
            dropped_history=prompt.dropped_history,
            dropped_hits=prompt.dropped_hits,
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
        await stream.aclose()  # type: ignore[attr-defined]
    yield AnswerDone(
        route=route,
        text="".join(parts),
        ttft_s=ttft,
        total_s=time.perf_counter() - started,
        completion_tokens=len(parts),
    )


def format_sources(hits: list[Hit]) -> str:
    """The passages as ``[n] file, page p`` lines, numbered as in the prompt (for API clients)."""
    return "\n".join(f"[{n}] {source_label(h)}" for n, h in enumerate(hits, start=1))


def _all_down(errors: list[RagError]) -> EndpointUnavailable:
    if not errors:
        return EndpointUnavailable("No route to a model server is configured.")
    if len(errors) == 1 and isinstance(errors[0], EndpointUnavailable):
        return errors[0]
    return EndpointUnavailable(" ".join(str(e) for e in errors))
