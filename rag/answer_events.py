"""The events an answer streams, and how they come from the first route that answers.

:func:`rag.answer.answer` (a grounded question), :func:`rag.answer.direct` (a
client's own messages) and :func:`rag.summarize.summarize` (whole files) all end
the same way: a prompt per route, and :func:`first_answer` tries the routes in
order. A route down before its first token (or whose window the prompt does not
fit) gives way to the next; the one that answers is relayed as
:class:`AnswerStart`, :class:`AnswerDelta` s and :class:`AnswerDone`, whose
sources are the passages the answer cites.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from rag.catalog import model_catalog
from rag.errors import EndpointSilent, EndpointUnavailable, RagError, StreamInterrupted
from rag.grounding import (
    Citation,
    Withdrawal,
    better_backed,
    citations,
    is_refusal,
    matched,
    named,
    recited,
    sentences,
    support,
)
from rag.llm import stream_chat
from rag.prompt import Prompt, PromptTooLong, style_for
from rag.retrieve import Hit
from rag.routing import Route
from rag.settings import Settings


@dataclass(frozen=True)
class Generation:
    """A client's sampling settings for one answer; None or empty: the pipeline's own.

    ``max_tokens`` is an upper bound: the answer gets at most what is left of the
    model's context window after the prompt.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnswerStart:
    """A route accepted the request; the passages numbered [1].. are ``hits``.

    ``route`` is None when the documents do not cover the question: then ``hits``
    are the closest matches, not sources.
    """

    route: Route | None
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

    route: Route | None  # None: the gate found the documents do not cover it
    text: str
    ttft_s: float  # from the call to the first token
    total_s: float  # from the call to the last token
    completion_tokens: int  # streamed deltas: one token each on OpenAI-style servers
    sources: list[Citation[Hit]] = field(default_factory=list)  # cited passages, as cited
    refused: bool = False  # the answer says the documents do not cover the question
    unsupported: list[str] = field(default_factory=list)  # sentences its sources do not back
    # The answer cited no [n]: ``sources`` is the passage that holds most of its words.
    sources_inferred: bool = False
    # The model's answer was a guess (rag.grounding.unbacked): ``text`` is then NOT_COVERED,
    # though the draft was streamed as AnswerDelta s before it was judged.
    withdrawn: Withdrawal | None = None
    # ``text`` cites another passage than the streamed text did for some sentence: its [n]
    # was moved to the passage that holds its words (rag.grounding.recited).
    citations_moved: bool = False


AnswerEvent = AnswerStart | AnswerDelta | AnswerDone


async def first_answer(
    routes: Sequence[Route],
    prompt_for: Callable[[Route], Prompt],
    settings: Settings,
    generation: Generation,
    started: float,
) -> AsyncGenerator[AnswerEvent, None]:
    """The events of the first route that answers; a route down before its first token
    (or whose window the prompt does not fit) gives way to the next."""
    catalog = model_catalog(settings)
    down: list[RagError] = []
    too_long: list[PromptTooLong] = []
    for position, route in enumerate(routes):
        try:
            prompt = prompt_for(route)
        except PromptTooLong as exc:
            too_long.append(exc)  # a route with a larger window (a cloud fallback) may take it
            continue
        stream = _stream(route, prompt, settings, generation)
        try:
            first = await _first_piece(stream)
        except (EndpointUnavailable, StreamInterrupted) as exc:
            # Broken before any text is as good as down: the next route may still answer.
            if isinstance(exc, StreamInterrupted) and (exc.partial or position == len(routes) - 1):
                raise
            catalog.report_down(route.provider)
            down.append(_why_down(route, exc))
            continue
        async for event in _relay(route, prompt, stream, first, started, settings):
            yield event
        return
    if too_long and not down:
        raise too_long[0]
    raise _all_down(down)


def _stream(
    route: Route, prompt: Prompt, settings: Settings, generation: Generation
) -> AsyncIterator[str]:
    """The route's token stream for ``prompt``, with the client's settings over the style's."""
    style = style_for(route.provider)
    tokens = generation.max_tokens or min(
        settings.answer_tokens, style.answer_tokens or settings.answer_tokens
    )
    # A client may ask for more than the window holds; the server would reject it or cut it.
    room = (route.provider.context_tokens or settings.context_tokens) - prompt.tokens
    return stream_chat(
        route.endpoint,
        prompt.messages,
        model=route.model,
        settings=settings,
        max_tokens=max(1, min(tokens, room)),
        temperature=style.temperature if generation.temperature is None else generation.temperature,
        top_p=generation.top_p,
        stop=generation.stop,
    )


async def _first_piece(stream: AsyncIterator[str]) -> str | None:
    """The stream's first text, or None when the model answered with nothing at all."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None


async def _relay(
    route: Route,
    prompt: Prompt,
    stream: AsyncIterator[str],
    first: str | None,
    started: float,
    settings: Settings,
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
    streamed = "".join(parts)
    text = recited(streamed, prompt.hits, settings.support_min, settings.citation_margin)
    cited = citations(text, prompt.hits)
    refused = not cited and is_refusal(text)
    inferred = not cited and not refused
    if inferred:
        cited = inferred_sources(text, prompt.hits, settings)
    yield AnswerDone(
        route=route,
        text=text,
        ttft_s=ttft,
        total_s=time.perf_counter() - started,
        completion_tokens=len(parts),
        sources=[] if refused else cited,
        refused=refused,
        unsupported=[] if refused else unsupported(text, cited, settings),
        sources_inferred=inferred and bool(cited),
        citations_moved=text != streamed,
    )


def inferred_sources(text: str, hits: Sequence[Hit], settings: Settings) -> list[Citation[Hit]]:
    """The sources of an answer that cites no ``[n]``: the passages whose files it names,
    unless another passage backs it far better (:func:`better_backed`); else the passage
    that holds most of its words."""
    files = named(text, hits)
    if not files:
        return matched(text, hits, settings.support_min)
    numbers = [c.number for c in files]
    better = better_backed(text, numbers, hits, settings.support_min, settings.citation_margin)
    return files if better is None else [Citation(better, hits[better - 1])]


def unsupported(text: str, cited: Sequence[Citation[Hit]], settings: Settings) -> list[str]:
    """The answer's sentences that its cited passages do not back (see :func:`support`)."""
    if not cited:
        return []
    passages = [c.hit.text for c in cited]
    return [s for s in sentences(text) if support(s, passages) < settings.support_min]


def _why_down(route: Route, exc: RagError) -> RagError:
    """The sentence for a route that failed before its first token."""
    # A silent server is running: "start one" would send the person the wrong way.
    if isinstance(exc, EndpointUnavailable) and not isinstance(exc, EndpointSilent):
        return route.provider.explain(exc)
    return exc


def _all_down(errors: list[RagError]) -> EndpointUnavailable:
    if not errors:
        return EndpointUnavailable("No route to a model server is configured.")
    if len(errors) == 1 and isinstance(errors[0], EndpointUnavailable):
        return errors[0]
    return EndpointUnavailable(" ".join(str(e) for e in errors))
