"""Talking to OpenAI-compatible model servers through the ``openai`` SDK: transport only.

An :class:`Endpoint` is where one server is (Foundry Local, Ollama, llama.cpp,
vLLM, the embedded engine or a cloud service) and the key it wants; what the
app knows *about* a server (its models, context window, whether it stays on
the premises, what to start when it is down) lives in
:class:`rag.catalog.Provider`. This module lists a server's models and streams
chat completions from it, and turns transport failures into
:class:`~rag.errors.EndpointUnavailable` / :class:`~rag.errors.EndpointError` /
:class:`~rag.errors.StreamInterrupted`.

>>> Endpoint(name="ollama", base_url="http://127.0.0.1:11434/v1/").base_url
'http://127.0.0.1:11434/v1'
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI

from rag.errors import EndpointError, EndpointUnavailable, StreamInterrupted
from rag.settings import Settings

Message = dict[str, str]

# OpenAI-compatible local servers want *some* bearer token; this one says what it is.
NO_KEY = "not-needed"


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
    after the SDK's back-off; the catalog decides what to try next.
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


async def list_models(endpoint: Endpoint, settings: Settings) -> list[str]:
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
    :class:`EndpointError` when the server rejects the request, and
    :class:`StreamInterrupted` (with the text received so far) when the stream
    breaks after it started.
    """
    sampling: dict[str, Any] = {}
    if top_p is not None:
        sampling["top_p"] = top_p
    if stop:
        sampling["stop"] = list(stop)
    try:
        stream = await client_for(endpoint, settings).chat.completions.create(
            model=model,
            messages=list(messages),  # type: ignore[arg-type]
            stream=True,
            max_tokens=max_tokens or settings.answer_tokens,
            temperature=settings.temperature if temperature is None else temperature,
            **sampling,
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
                text = chunk.choices[0].delta.content if chunk.choices else None
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
