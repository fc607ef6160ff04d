"""Talking to OpenAI-compatible model servers through the ``openai`` SDK: transport only.

An :class:`Endpoint` is where one server is (Foundry Local, Ollama, llama.cpp,
vLLM, the embedded engine or a cloud service) and the key it wants; what the
app knows *about* a server (its models, context window, whether it stays on
the premises, what to start when it is down) lives in
:class:`rag.catalog.Provider`. This module lists a server's models, streams
chat completions from it, reads the odds of a reply's first token, and turns
transport failures into :class:`~rag.errors.EndpointUnavailable` /
:class:`~rag.errors.EndpointSilent` / :class:`~rag.errors.EndpointError` /
:class:`~rag.errors.StreamInterrupted`.

Two deadlines bound an answer, both counted from the request: the first text
must arrive within ``LLM_FIRST_TOKEN_TIMEOUT`` (else :class:`EndpointSilent`,
which routing treats as down), and the whole answer must be complete within
``LLM_TIMEOUT`` (else :class:`StreamInterrupted` with the text so far). They are
wall-clock deadlines, not per-read ones: a server trickling one token every few
seconds is still cut off on time.

>>> Endpoint(name="ollama", base_url="http://127.0.0.1:11434/v1/").base_url
'http://127.0.0.1:11434/v1'
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk

from rag.errors import EndpointError, EndpointSilent, EndpointUnavailable, StreamInterrupted
from rag.settings import Settings

Message = dict[str, str]

# OpenAI-compatible local servers want *some* bearer token; this one says what it is.
NO_KEY = "not-needed"
T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible server: a name for people, its ``/v1`` URL and its key."""

    name: str
    base_url: str  # including the /v1 suffix; a trailing slash is dropped
    api_key: str = NO_KEY

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        object.__setattr__(self, "api_key", self.api_key or NO_KEY)


# Clients hold connection pools bound to the loop that created them; keyed by the
# loop object itself (weakly), so a new loop never inherits a closed loop's client.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Endpoint, float, float], AsyncOpenAI]]
_clients = weakref.WeakKeyDictionary()


def client_for(endpoint: Endpoint, settings: Settings) -> AsyncOpenAI:
    """An ``AsyncOpenAI`` client for the endpoint, reused within one event loop.

    Retries are off: a dead local server should be reported in a second, not
    after the SDK's back-off; the catalog decides what to try next. httpx's read
    timeout is only a backstop at ``LLM_TIMEOUT``: it applies per read, so the
    deadlines that mean what they say are kept by :func:`stream_chat` itself.
    """
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    key = (endpoint, settings.llm_timeout_s, settings.llm_connect_timeout_s)
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            timeout=httpx.Timeout(settings.llm_timeout_s, connect=settings.llm_connect_timeout_s),
            max_retries=0,
        )
    return client


def unavailable(endpoint: Endpoint, detail: str = "") -> EndpointUnavailable:
    """The error for a server that does not answer; the catalog adds what to start."""
    why = f" ({detail})" if detail else ""
    return EndpointUnavailable(
        f"No model server answered at {endpoint.base_url}{why}.", base_url=endpoint.base_url
    )


@dataclass(frozen=True)
class Deadlines:
    """When an answer's first text and its end must have arrived, in event-loop time.

    ``first_setting`` names the setting that set ``first`` (LLM_TIMEOUT when it is
    the shorter of the two), so the sentence tells a person which one to raise.
    """

    started: float
    first: float
    end: float
    first_setting: str

    @classmethod
    def start(cls, settings: Settings) -> Deadlines:
        """Deadlines for a request made now."""
        now = asyncio.get_running_loop().time()
        first = min(settings.llm_first_token_timeout_s, settings.llm_timeout_s)
        name = (
            "LLM_FIRST_TOKEN_TIMEOUT"
            if settings.llm_first_token_timeout_s <= settings.llm_timeout_s
            else "LLM_TIMEOUT"
        )
        return cls(now, now + first, now + settings.llm_timeout_s, name)

    @property
    def first_wait_s(self) -> float:
        return self.first - self.started

    @property
    def total_s(self) -> float:
        return self.end - self.started


def silent(endpoint: Endpoint, deadlines: Deadlines, what: str = "nothing") -> EndpointSilent:
    """The error for a server that accepted the request and then sent ``what`` in time."""
    wait = deadlines.first_wait_s
    return EndpointSilent(
        f"The model server at {endpoint.base_url} accepted the request but sent {what} for "
        f"{wait:g} s; it may be overloaded or still loading the model. Raise "
        f"{deadlines.first_setting} (now {wait:g} s) to wait longer, or try again later.",
        base_url=endpoint.base_url,
    )


async def list_models(endpoint: Endpoint, settings: Settings) -> list[str]:
    """Model ids that ``GET /v1/models`` lists, in the server's order.

    A server that accepts and does not answer within the first-token wait raises
    :class:`EndpointSilent`: the picker must not hang for the whole answer timeout.
    """
    deadlines = Deadlines.start(settings)
    listing = client_for(endpoint, settings).models.list()
    page = await _first_reply(endpoint, listing, deadlines, "refused to list models")
    return [m.id for m in page.data]


async def stream_chat(
    endpoint: Endpoint,
    messages: Sequence[Message],
    *,
    model: str,
    settings: Settings,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> AsyncIterator[str]:
    """Stream the answer's text deltas from ``POST /v1/chat/completions``.

    ``max_tokens`` and ``temperature`` default to ``RAG_ANSWER_TOKENS`` and
    ``RAG_TEMPERATURE``; ``top_p`` and ``stop`` are sent only when given, so a
    server's own defaults stay in force otherwise. Raises
    :class:`EndpointUnavailable` when nothing answers,
    :class:`EndpointSilent` when the server accepted but sent no text within
    ``LLM_FIRST_TOKEN_TIMEOUT``, :class:`EndpointError` when it rejects the request,
    and :class:`StreamInterrupted` (with the text received so far) when the stream
    breaks after it started or is still going when ``LLM_TIMEOUT`` runs out. Time
    the caller spends between two deltas counts too: the deadline is the answer's.
    """
    sampling: dict[str, Any] = {}
    if top_p is not None:
        sampling["top_p"] = top_p
    if stop:
        sampling["stop"] = list(stop)
    deadlines = Deadlines.start(settings)
    request = client_for(endpoint, settings).chat.completions.create(
        model=model,
        messages=list(messages),  # type: ignore[arg-type]
        stream=True,
        max_tokens=max_tokens or settings.answer_tokens,
        temperature=settings.temperature if temperature is None else temperature,
        **sampling,
        **(extra or {}),
    )
    refused = f"rejected the request for model '{model}'"
    stream: AsyncStream[ChatCompletionChunk] = await _first_reply(
        endpoint, request, deadlines, refused
    )
    texts = _texts(endpoint, stream, deadlines)
    try:
        async for text in texts:
            yield text
    finally:
        await texts.aclose()  # a caller that stops listening closes the HTTP stream now


async def first_token_odds(
    endpoint: Endpoint,
    messages: Sequence[Message],
    *,
    model: str,
    settings: Settings,
    top: int = 20,
) -> dict[str, float]:
    """The log-probabilities of the ``top`` likeliest first tokens of the greedy reply to
    ``messages``, by token text (one token is generated, not streamed).

    A server that reports no log-probabilities gives its one token at log-probability 0
    (certain). Raises as :func:`stream_chat` does before its first text.
    """
    deadlines = Deadlines.start(settings)
    request = client_for(endpoint, settings).chat.completions.create(
        model=model,
        messages=list(messages),  # type: ignore[arg-type]
        max_tokens=1,
        temperature=0.0,
        logprobs=True,
        top_logprobs=top,
    )
    reply = await _first_reply(endpoint, request, deadlines, f"rejected a check for '{model}'")
    if not reply.choices:
        return {}
    choice = reply.choices[0]
    content = choice.logprobs.content if choice.logprobs else None
    if not content:
        return {choice.message.content or "": 0.0}
    first = content[0]
    return {t.token: t.logprob for t in first.top_logprobs} or {first.token: first.logprob}


async def _texts(
    endpoint: Endpoint, stream: AsyncStream[ChatCompletionChunk], deadlines: Deadlines
) -> AsyncIterator[str]:
    """The stream's text deltas, each within the deadline that applies to it."""
    received: list[str] = []
    chunks = 0
    try:
        async with stream:
            pieces = aiter(stream)
            while True:
                try:
                    async with asyncio.timeout_at(deadlines.end if received else deadlines.first):
                        chunk = await anext(pieces)
                except StopAsyncIteration:
                    return
                chunks += 1
                text = chunk.choices[0].delta.content if chunk.choices else None
                if text:
                    received.append(text)
                    yield text
    except TimeoutError:
        if not received:
            raise silent(endpoint, deadlines, "no text" if chunks else "nothing") from None
        raise StreamInterrupted(
            f"The answer from {endpoint.base_url} was cut off after {deadlines.total_s:g} s, "
            f"the limit LLM_TIMEOUT sets for a whole answer; raise LLM_TIMEOUT to let long "
            "answers finish.",
            partial="".join(received),
        ) from None
    except (openai.APIError, httpx.HTTPError) as exc:
        raise StreamInterrupted(
            f"The answer from {endpoint.base_url} stopped before it was complete "
            f"({type(exc).__name__}).",
            partial="".join(received),
        ) from exc


async def _first_reply(
    endpoint: Endpoint, request: Awaitable[T], deadlines: Deadlines, refused: str
) -> T:
    """``request``'s reply within the first-token wait, its failures as sentences.

    ``refused`` says what a status error means ("refused to list models").
    """
    try:
        async with asyncio.timeout_at(deadlines.first):
            return await request
    except TimeoutError:
        raise silent(endpoint, deadlines) from None
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise unavailable(endpoint, type(exc).__name__) from exc
    except openai.APIStatusError as exc:
        raise EndpointError(
            f"The model server at {endpoint.base_url} {refused} "
            f"(HTTP {exc.status_code}): {_error_text(exc)}"
        ) from exc


def _error_text(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return exc.message
