"""The answer pipeline: question -> retrieval -> routes -> prompt within budget -> stream.

Used by the chat app, the OpenAI-compatible API, compare and the answer eval,
so all of them answer the same way. :func:`answer` is an async generator of events:

- :class:`AnswerStart` once, when a route accepted the request (its first token
  arrived): which provider and model answer, the passages in the prompt, and
  what was trimmed to fit the context window;
- :class:`AnswerDelta` per streamed piece of text;
- :class:`AnswerDone` at the end, with the full text, the passages it cites,
  whether it declined, the sentences its sources do not back, and timings.

When the relevance gate (:func:`rag.grounding.judge`) finds that the documents
do not cover the question, no model is asked: the events carry ``route=None``,
the text :data:`~rag.grounding.NOT_COVERED` and the closest passages as ``hits``.
The same reply comes when the embedded engine, asked first whether its passages
state the answer (a one-token check, :func:`rag.grounding.yes_share`), doubts it.
A small model's finished answer that only repeats the question or states a value
its passages lack is withdrawn the same way (:func:`guesses_withdrawn`): its draft
has streamed by then, so ``AnswerDone.withdrawn`` keeps it and says why.
Retrieval for a follow-up sees the previous question too (:func:`search_query`).
Files mentioned as ``@name`` limit retrieval to them (:mod:`rag.mentions`), and
the follow-ups after them too (the scope is read from the history, so the chat and
the API, which sends the whole conversation each time, keep it alike); ``@all``
goes back to every file. A name that matches no ingested file is answered with the
close names, and no model asked (``route=None``); so is a bare ``@all``. "Summarize @guide.md" and other tasks over whole files read every
chunk of them by map-reduce (:mod:`rag.summarize`), with the same events.

:func:`direct` sends a client's own messages to the model as they are (no
retrieval, no gate, no sources): Open WebUI's housekeeping prompts (a title,
tags, follow-ups in JSON). On a model server on this machine, which answers one
request at a time on a CPU, it waits behind the questions in flight
(:class:`QuestionsFirst`), so the person's answer is not delayed by a title.
Both take a :class:`Generation`: a client's max_tokens/temperature/top_p/stop,
the answer's length capped to what fits the window after the prompt.

Errors are :class:`~rag.errors.RagError` sentences: ``NoDocuments`` (nothing
ingested), ``EndpointUnavailable`` (every route was down before its first token;
names the URL and what to start, or, as ``EndpointSilent``, that a server accepted
the request and then sent nothing in time), ``EndpointError`` (a server refused the request)
and ``StreamInterrupted`` (the stream broke midway; ``.partial`` keeps the text).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

from rag.answer_events import (
    AnswerDelta,
    AnswerDone,
    AnswerEvent,
    AnswerStart,
    Generation,
    first_answer,
)
from rag.catalog import model_catalog
from rag.errors import RagError
from rag.grounding import NOT_COVERED, judge, keep_close, unbacked, yes_share
from rag.hosts import host_of, is_loopback_host
from rag.llm import Message, first_token_odds
from rag.mentions import (
    WHOLE_TASK,
    Scope,
    follow_up_scope,
    mentions_removed,
    unknown_sentence,
    whole_document_files,
)
from rag.prompt import (
    Prompt,
    PromptTooLong,
    build_prompt,
    check_messages,
    estimate_tokens,
    source_label,
    style_for,
    token_counter,
)
from rag.retrieve import Hit, get_retriever, retrieve
from rag.routing import Kind, Route
from rag.settings import Settings
from rag.summarize import OnProgress, summarize

# The events are defined beside the routes' runner; callers import them from here too.
__all__ = [
    "EVERY_FILE_AGAIN", "AnswerDelta", "AnswerDone", "AnswerEvent", "AnswerStart", "Generation",
    "answer", "direct", "format_sources", "guesses_withdrawn", "on_this_machine", "question_scope",
    "search_query",
]  # fmt: skip

log = logging.getLogger("rag.answer")

# The least room an answer may be left in the window (RAG_ANSWER_TOKENS' own floor).
MIN_ANSWER_TOKENS = 16
# Open WebUI sends a new chat's title request alongside the question, often a few ms
# ahead of it, and the question spends a moment in retrieval before it reaches the
# model: housekeeping bound for this machine waits this long for a question to show up.
HOUSEKEEPING_GRACE_S = 1.0
# The reply to a bare "@all": nothing to search, the scope is reset.
EVERY_FILE_AGAIN = "From your next question on, every file is searched again."


async def answer(
    question: str,
    settings: Settings,
    *,
    model: str | None = None,
    history: Sequence[Message] = (),
    hits: list[Hit] | None = None,
    generation: Generation | None = None,
    files: Sequence[str] | None = None,
    on_progress: OnProgress | None = None,
) -> AsyncGenerator[AnswerEvent, None]:
    """Answer ``question`` from the documents, streaming events (see the module docstring).

    ``model`` is the picked id (None: the local server's default; ``endpoint:model``
    pins one provider); ``history`` the conversation so far (bare questions and
    answers); ``hits`` reuses already retrieved passages (default: hybrid retrieval);
    ``generation`` the client's sampling settings (default: the pipeline's).
    ``files`` limits retrieval to those sources (default: the files the question
    mentions as ``@name``, else those an earlier question in ``history`` mentioned,
    :func:`rag.mentions.follow_up_scope`); a task over whole files ("summarize
    @guide.md") reads all their chunks (:mod:`rag.summarize`), reporting to ``on_progress``.
    """
    scope = await asyncio.to_thread(question_scope, question, settings, files, history)
    async with questions_first().question():
        if scope.unknown:
            events = _unknown_files(scope, settings)
        elif scope.every_file and not scope.question:
            events = _said(EVERY_FILE_AGAIN)
        elif whole := whole_document_files(scope):
            events = summarize(
                scope.question,
                whole,
                settings,
                model=model,
                generation=generation,
                on_progress=on_progress,
            )
        else:
            events = _grounded(
                scope.question, settings, model, history, hits, generation, scope.sources
            )
        async for event in events:
            yield event


async def _grounded(
    question: str,
    settings: Settings,
    model: str | None,
    history: Sequence[Message],
    hits: list[Hit] | None,
    generation: Generation | None,
    sources: Sequence[str] = (),
) -> AsyncGenerator[AnswerEvent, None]:
    """:func:`answer`'s steps: retrieve, gate, route, then the first route that answers."""
    started = time.perf_counter()
    catalog = model_catalog(settings)
    query = search_query(question, history)
    if hits is None:
        # Embedding and Chroma block for a few ms; keep the event loop free for other chats.
        hits = await asyncio.to_thread(retrieve, query, settings=settings, sources=sources)
    if not judge(query, hits, settings, latest=question).covered:
        async for event in _not_covered(hits, started):
            yield event
        return
    hits = keep_close(hits, settings)
    counter = token_counter(settings)
    size = estimate_tokens(question, hits, settings=settings, history=history, counter=counter)
    routes = await catalog.routes(question, model, size)

    # Built once per route: the check and the answer it precedes send the same prompt.
    @functools.cache
    def prompt_for(route: Route) -> Prompt:
        return build_prompt(
            question,
            hits,
            settings=settings,
            history=history,
            context_tokens=route.provider.context_tokens,
            style=style_for(route.provider),
            searched=query,
        )

    if routes and await _model_doubts(routes[0], prompt_for, question, query, settings):
        async for event in _not_covered(hits, started):
            yield event
        return
    generation = generation or Generation()
    events = first_answer(routes, prompt_for, settings, generation, started)
    async for event in guesses_withdrawn(events, question, history, settings):
        yield event


async def guesses_withdrawn(
    events: AsyncIterator[AnswerEvent],
    question: str,
    history: Sequence[Message],
    settings: Settings,
) -> AsyncGenerator[AnswerEvent, None]:
    """``events``, with a finished answer that :func:`rag.grounding.unbacked` finds a guess
    turned into :data:`~rag.grounding.NOT_COVERED` (its draft kept on ``withdrawn``).
    Only styles that ask for it are judged: the small models on this machine."""
    start: AnswerStart | None = None
    async for event in events:
        if isinstance(event, AnswerStart):
            start = event
        elif isinstance(event, AnswerDone) and start is not None and _judged(event, settings):
            names = [h.source for h in start.hits]
            known = [*(h.text for h in start.hits), *names, *(m["content"] for m in history)]
            if withdrawal := unbacked(event.text, question, known, names):
                event = replace(
                    event, text=NOT_COVERED, sources=[], refused=True, unsupported=[],
                    sources_inferred=False, withdrawn=withdrawal,
                )  # fmt: skip
        yield event


def _judged(done: AnswerDone, settings: Settings) -> bool:
    # A refusal is already what the guard would make of it.
    route = done.route
    return (
        settings.gate
        and not done.refused
        and route is not None
        and style_for(route.provider).withdraw_guesses
    )


async def _model_doubts(
    route: Route,
    prompt_for: Callable[[Route], Prompt],
    question: str,
    query: str,
    settings: Settings,
) -> bool:
    """True when the model that is about to answer, asked whether its passages state the
    answer to ``query`` (:func:`rag.prompt.check_messages`), gives "yes" a probability below
    ``RAG_CHECK_MIN_YES``. Only prompt styles calibrated for it ask; a route that is
    down or too small is left to :func:`first_answer`, which reports or passes it."""
    if not settings.gate or not style_for(route.provider).check:
        return False
    try:
        messages = check_messages(prompt_for(route), question, query)
        odds = await first_token_odds(
            route.endpoint, messages, model=route.model, settings=settings
        )
    except RagError:
        return False
    share = yes_share(odds)
    log.info("answerable check: yes %s", "unknown" if share is None else f"{share:.2f}")
    return share is not None and share < settings.check_min_yes


async def direct(
    messages: Sequence[Message],
    settings: Settings,
    *,
    model: str | None = None,
    generation: Generation | None = None,
) -> AsyncGenerator[AnswerEvent, None]:
    """Send ``messages`` to the model as they are: no retrieval, no gate, no sources.

    For a client's housekeeping (a chat's title, tags, follow-ups): the events are
    :func:`answer`'s with no passages. Routed like a question (``model`` as there);
    on a server on this machine it first waits behind the questions in flight.
    Raises :class:`PromptTooLong` when the messages leave no room for an answer.
    """
    started = time.perf_counter()
    generation = generation or Generation()
    generation = replace(generation, max_tokens=generation.max_tokens or settings.answer_tokens)
    tokens = token_counter(settings).count_messages(messages)
    last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    routes = await model_catalog(settings).routes(last, model, tokens)
    if routes and on_this_machine(routes[0]):
        await questions_first().wait(settings.llm_timeout_s)

    def prompt_for(route: Route) -> Prompt:
        window = route.provider.context_tokens or settings.context_tokens
        if tokens + MIN_ANSWER_TOKENS > window:
            raise PromptTooLong(
                f"The messages are too long for the model's context window: they need about "
                f"{tokens} tokens of its {window}. Send a shorter chat, or raise "
                "RAG_CONTEXT_TOKENS if the model has a larger window."
            )
        return Prompt(list(messages), [], tokens, 0, 0, False)

    async for event in first_answer(routes, prompt_for, settings, generation, started):
        yield event


async def _not_covered(hits: list[Hit], started: float) -> AsyncGenerator[AnswerEvent, None]:
    """The gate's answer: no model asked, the closest passages shown as such."""
    closest = hits[:3]
    yield AnswerStart(route=None, hits=closest, prompt_tokens=0, dropped_history=0, dropped_hits=0)
    yield AnswerDelta(NOT_COVERED)
    elapsed = time.perf_counter() - started
    yield AnswerDone(None, NOT_COVERED, elapsed, elapsed, 0, refused=True)


def question_scope(
    question: str,
    settings: Settings,
    files: Sequence[str] | None = None,
    history: Sequence[Message] = (),
) -> Scope:
    """The files ``question`` is about: ``files`` when given, else its ``@`` mentions and
    exact file names, else the files an earlier user question in ``history`` mentioned.
    Reads the ingested file list only when the conversation may name one."""
    if files is not None:
        return Scope(mentions_removed(question), tuple(files))
    earlier = [m["content"] for m in history if m["role"] == "user"]
    quiet = "@" not in question and not WHOLE_TASK.search(question)
    if quiet and not any("@" in text for text in earlier):
        return Scope(question)
    return follow_up_scope(question, earlier, get_retriever(settings).sources())


async def _unknown_files(scope: Scope, settings: Settings) -> AsyncGenerator[AnswerEvent, None]:
    """A mentioned file is not ingested: the sentence naming close ones, and no model asked."""
    async for event in _said(unknown_sentence(scope.unknown, get_retriever(settings).sources())):
        yield event


async def _said(text: str) -> AsyncGenerator[AnswerEvent, None]:
    """``text`` as the whole answer, with no passages and no model asked."""
    started = time.perf_counter()
    yield AnswerStart(route=None, hits=[], prompt_tokens=0, dropped_history=0, dropped_hits=0)
    yield AnswerDelta(text)
    elapsed = time.perf_counter() - started
    yield AnswerDone(None, text, elapsed, elapsed, 0, refused=True)


def search_query(question: str, history: Sequence[Message]) -> str:
    """What retrieval searches for: the question, after the previous one when it follows up.

    A follow-up ("And who chose it?") names its subject only through the turn
    before, so the previous user question is put in front of it. A question that
    stands on its own loses little: the fused ranking still favours its own words.
    """
    previous = next((m["content"] for m in reversed(history) if m["role"] == "user"), None)
    return f"{previous}\n{question}" if previous else question


def format_sources(hits: list[Hit]) -> str:
    """The passages as ``[n] file, page p`` lines, numbered as in the prompt (for API clients)."""
    return "\n".join(f"[{n}] {source_label(h)}" for n, h in enumerate(hits, start=1))


# --- questions first -------------------------------------------------------------


def on_this_machine(route: Route) -> bool:
    """True when the route's server shares this machine's CPU: the embedded engine or a
    loopback server, which answer one request after another."""
    host = host_of(route.endpoint.base_url)
    return route.provider.kind is Kind.EMBEDDED or is_loopback_host(host)


class QuestionsFirst:
    """Counts the questions in flight, so housekeeping can wait until there are none.

    One per event loop (:func:`questions_first`): asyncio's primitives belong to a loop.
    """

    def __init__(self) -> None:
        self._in_flight = 0
        self._idle = asyncio.Condition()

    @asynccontextmanager
    async def question(self) -> AsyncIterator[None]:
        """Hold the model for a question from its arrival to its last token."""
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            async with self._idle:
                self._idle.notify_all()

    async def wait(self, timeout_s: float) -> None:
        """Return once no question is in flight, after a short grace for one about to arrive,
        or after ``timeout_s`` at most (housekeeping must not starve)."""
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.sleep(HOUSEKEEPING_GRACE_S)
                async with self._idle:
                    await self._idle.wait_for(lambda: self._in_flight == 0)
        except TimeoutError:
            pass


_questions_first: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, QuestionsFirst]
_questions_first = weakref.WeakKeyDictionary()


def questions_first() -> QuestionsFirst:
    """The running loop's :class:`QuestionsFirst`."""
    loop = asyncio.get_running_loop()
    if loop not in _questions_first:
        _questions_first[loop] = QuestionsFirst()
    return _questions_first[loop]
