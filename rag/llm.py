"""Talking to OpenAI-compatible model servers through the ``openai`` SDK.

An :class:`Endpoint` is one server (Foundry Local, Ollama, llama.cpp, vLLM, the
embedded engine or a cloud service). This module lists its models and streams
chat completions from it, and turns transport failures into
:class:`~rag.errors.EndpointUnavailable` / :class:`~rag.errors.EndpointError` /
:class:`~rag.errors.StreamInterrupted` with sentences a user can act on.

>>> ep = Endpoint(name="local", base_url="http://127.0.0.1:11434/v1")
>>> async for text in stream_chat(ep, [{"role": "user", "content": "hi"}], model="phi"):  # doctest: +SKIP
...     print(text, end="")
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI

from rag.errors import EndpointError, EndpointUnavailable, StreamInterrupted
from rag.settings import Settings, get_settings

Message = dict[str, str]

DEFAULT_START_HINT = (
    "start a model server (for example `foundry model run phi-4-mini` or `ollama serve`) "
    "or set LLM_BASE_URL to one that is running"
)


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible server and how to talk to it."""

    name: str  # "local", "fallback", "embedded", "foundry", or a routing-file name
    base_url: str  # including the /v1 suffix
    api_key: str = "not-needed"
    model: str | None = None  # default model id for this endpoint, if known
    context_tokens: int = 2048  # prompt + answer must fit here
    is_local: bool = True  # False for anything that leaves the machine
    start_hint: str = DEFAULT_START_HINT  # what to start when it does not answer
    labels: tuple[str, ...] = field(default_factory=tuple)  # e.g. ("code",) for routing
    # A tiny model (the embedded SmolLM2) that stays grounded only with a short,
    # tight prompt: see rag.prompt.COMPACT.
    compact_prompt: bool = False
    notice: str = ""  # a sentence for users about this server (the embedded model is small)


def _timeout(settings: Settings) -> httpx.Timeout:
    return httpx.Timeout(settings.llm_timeout_s, connect=settings.llm_connect_timeout_s)


# Clients hold connection pools bound to the loop that created them; keyed by the
# loop object itself (weakly), so a new loop never inherits a closed loop's client.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], AsyncOpenAI]]
_clients = weakref.WeakKeyDictionary()


def client_for(endpoint: Endpoint, settings: Settings | None = None) -> AsyncOpenAI:
    """An ``AsyncOpenAI`` client for the endpoint, reused within one event loop.

    Retries are off: a dead local server should be reported in a second, not
    after the SDK's back-off; routing decides what to try next.
    """
    settings = settings or get_settings()
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    key = (endpoint.base_url, endpoint.api_key)
    client = per_loop.get(key)
    if client is None:
        client = AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key or "not-needed",
            timeout=_timeout(settings),
            max_retries=0,
        )
        per_loop[key] = client
    return client


def unavailable(endpoint: Endpoint, detail: str = "") -> EndpointUnavailable:
    """The error for a server that does not answer, naming its URL and what to start."""
    why = f" ({detail})" if detail else ""
    return EndpointUnavailable(
        f"No model server answered at {endpoint.base_url}{why}: {endpoint.start_hint}."
    )


async def list_models(endpoint: Endpoint, settings: Settings | None = None) -> list[str]:
    """Model ids that ``GET /v1/models`` lists, in the server's order."""
    try:
        page = await client_for(endpoint, settings).models.list()
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise unavailable(endpoint, type(exc).__name__) from exc
    except openai.APIStatusError as exc:
        raise EndpointError(
            f"The model server at {endpoint.base_url} refused to list models "
            f"(HTTP {exc.status_code}): {_error_text(exc)}"
        ) from exc
    return [m.id for m in page.data]


async def stream_chat(
    endpoint: Endpoint,
    messages: Sequence[Message],
    *,
    model: str,
    max_tokens: int | None = None,
    temperature: float | None = None,
    settings: Settings | None = None,
    extra: dict[str, Any] | None = None,
) -> AsyncIterator[str]:
    """Stream the answer's text deltas from ``POST /v1/chat/completions``.

    Raises :class:`EndpointUnavailable` when nothing answers, :class:`EndpointError`
    when the server rejects the request, and :class:`StreamInterrupted` (with the
    text received so far) when the stream breaks after it started.
    """
    settings = settings or get_settings()
    client = client_for(endpoint, settings)
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=list(messages),  # type: ignore[arg-type]
            stream=True,
            max_tokens=max_tokens or settings.answer_tokens,
            temperature=settings.temperature if temperature is None else temperature,
            **(extra or {}),
        )
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise unavailable(endpoint, type(exc).__name__) from exc
    except openai.APIStatusError as exc:
        raise EndpointError(
            f"The model server at {endpoint.base_url} rejected the request for model "
            f"'{model}' (HTTP {exc.status_code}): {_error_text(exc)}"
        ) from exc

    received: list[str] = []
    try:
        async with stream:
            async for chunk in stream:
                if not chunk.choices:
                    continue
                text = chunk.choices[0].delta.content
                if text:
                    received.append(text)
                    yield text
    except (openai.APIError, httpx.HTTPError) as exc:
        raise StreamInterrupted(
            f"The answer from {endpoint.base_url} stopped before it was complete "
            f"({type(exc).__name__}).",
            partial="".join(received),
        ) from exc


def _error_text(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return exc.message
