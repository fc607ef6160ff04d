"""The RAG as an OpenAI-compatible API, on the chat app's own port.

Any OpenAI client (the ``openai`` SDK, Open WebUI, curl) can chat with the
documents through two routes:

- ``GET /v1/models``: the local endpoint's models (routed: code questions,
  fallback and size rules apply) plus the routed ones as ``endpoint:model``
  (pinned to that endpoint). In ``local-only`` mode remote ones are not listed.
- ``POST /v1/chat/completions`` (streamed or not): retrieval runs on the last
  user message, earlier user/assistant messages are the history, and the answer
  comes from :func:`rag.answer.answer` through the routed endpoint. Files an
  earlier user message mentioned (``@handbook.md``) still limit retrieval for the
  follow-ups, until one mentions others or says ``@all``, as in the chat. The answer
  ends with a ``Sources:`` list (file and page) so every client shows citations.
  Which endpoint answered is in the ``X-RAG-Endpoint``/``X-RAG-Model``/``X-RAG-Route``
  headers (not streamed) and in an extra ``rag`` field of the body (OpenAI clients
  ignore it; streamed, on the first text chunk and the last one);
  when routing sent the question somewhere other than the local model, the
  answer also says so in one line.

When ``RAG_API_KEY`` is set, requests need ``Authorization: Bearer <key>``.
Browsers are kept out: a request with an ``Origin`` that is not this machine
(a web page reading the documents) is refused, and so is one whose ``Host`` is
not a loopback name unless a key is set (DNS rebinding: a page whose own name
resolves to 127.0.0.1).
Errors are OpenAI-style JSON (``{"error": {"message", "type", "param", "code"}}``)
with the library's sentence: 400 malformed or the question does not fit the
context window (``context_length_exceeded``), 401 bad key, 403 refused by
``local-only`` or a foreign origin/host, 404 unknown model, 409 no documents,
502 the model server failed, 503 no model server answered. Never a traceback.
A streamed response opens at once, before retrieval and the model's first token,
so its errors arrive in the stream: an OpenAI ``error`` event (which the ``openai``
SDK raises), also when the answer breaks midway, after the text so far.

The chat app mounts it into Chainlit's FastAPI app::

    from chainlit.server import app as chainlit_app
    mount_openai_api(chainlit_app, get_settings())

Open WebUI is a first-class client:

- its housekeeping prompts (a user message opening ``### Task:`` that asks for
  JSON: a chat's title, tags, follow-up suggestions) go straight to the model
  through :func:`rag.answer.direct`: no retrieval, no gate, no ``Sources:``, so
  the JSON parses; on a server on this machine they wait behind the questions;
- ``max_tokens`` (or ``max_completion_tokens``), ``temperature``, ``top_p`` and
  ``stop`` are honoured, the length capped to what fits after the prompt;
- ``tools`` (Open WebUI attaches ~24 KB of definitions) are ignored: tool calling
  is not offered, and they never count into the prompt;
- with the model server down, ``GET /v1/models`` keeps listing the models known
  (``LLM_MODEL``, the last seen ones, the declared ones), and a chat request gets
  the sentence on what to start: a 503, or, streamed, as the answer's text,
  which is where Open WebUI shows it.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from rag.answer import (
    AnswerDelta,
    AnswerDone,
    AnswerEvent,
    AnswerStart,
    Generation,
    answer,
    direct,
)
from rag.catalog import Offer, model_catalog
from rag.errors import (
    EndpointError,
    EndpointUnavailable,
    NoDocuments,
    RagError,
    StreamInterrupted,
)
from rag.hosts import host_of, is_loopback_host
from rag.llm import Message
from rag.openai_wire import (
    SSE_DONE,
    WireError,
    chunk,
    completion,
    completion_id,
    message_text,
    now,
    number,
    sse,
    stops,
    usage,
)
from rag.prompt import PromptTooLong, source_label
from rag.retrieve import Hit
from rag.routing import Route, RouteRefused, split_qualified
from rag.settings import Settings
from rag.web.chat_text import route_note
from rag.web.front_routes import put_first

log = logging.getLogger(__name__)

SOURCES_MARKER = "\n\nSources:\n"
CLOSEST_MARKER = "\n\nClosest matches (not sources):\n"
# A stream cannot take back the [n] it sent; the whole answer carries the moved ones instead.
CITATIONS_MOVED_NOTE = (
    "\n\n[Some [n] above point at a passage that does not hold the sentence's words; "
    "the sources below are the passages that do.]"
)
OWNER = "local-rag-chat"
# Every housekeeping prompt of Open WebUI (title, tags, follow-ups, queries, autocomplete)
# opens with this line and asks for a JSON reply.
TASK_PREFIX = "### Task:"
# Control characters carry no question (C0 and C1, but tab and newlines are text).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def api_refusal(status: int, message: str, code: str, kind: str = "invalid_request_error") -> WireError:
    """An OpenAI-style error of this API: HTTP status, sentence, code and type."""
    return WireError(status, message, type=kind, code=code)


def api_error(exc: RagError) -> WireError:
    """The HTTP status and code for a library error; the message stays the library's sentence."""
    if isinstance(exc, NoDocuments):
        return api_refusal(409, str(exc), "no_documents")
    if isinstance(exc, PromptTooLong):
        # OpenAI's own code for this, which clients already know how to show.
        return api_refusal(400, str(exc), "context_length_exceeded")
    if isinstance(exc, RouteRefused):
        return api_refusal(403, str(exc), "local_only")
    if isinstance(exc, EndpointUnavailable):
        return api_refusal(503, str(exc), "endpoint_unavailable", "server_error")
    if isinstance(exc, EndpointError | StreamInterrupted):
        return api_refusal(502, str(exc), "endpoint_error", "server_error")
    return api_refusal(500, str(exc), "rag_error", "server_error")


# --- request parsing ------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """What one chat completions body asks for."""

    model: str
    question: str  # the last user message, control characters removed
    history: list[Message]  # earlier user and assistant turns, this API's trailers cut off
    stream: bool
    generation: Generation
    housekeeping: list[Message] | None  # the client's messages as sent, when it is a task


async def read_json(request: Request) -> Any:
    """The request body as JSON, or a 400 for bytes that are not JSON text.

    Python's parser gives up on very deep nesting with a RecursionError and
    accepts lone surrogates (``"\\ud800"``) that no model server can encode:
    both are the sender's mistake, so both are a 400 with a sentence.
    """
    raw = await request.body()
    try:
        body = json.loads(raw)
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise api_refusal(400, "The request body is not valid JSON.", "bad_json") from None
    except RecursionError:
        raise api_refusal(
            400,
            "The request body is nested too deeply to read; send a plain chat request.",
            "bad_json",
        ) from None
    except UnicodeEncodeError:
        raise api_refusal(
            400,
            "The request contains a lone surrogate (such as \\ud800), which is not text; "
            "send the text as valid UTF-8.",
            "bad_unicode",
        ) from None
    return body


def parse_chat_request(body: Any) -> ChatRequest:
    """The :class:`ChatRequest` of a chat completions body, or a 400 with a sentence.

    The question is the last message, which must come from the user and hold
    text once control characters are removed. History is the earlier user and
    assistant turns; client system prompts are dropped because the pipeline's
    own system message keeps answers grounded. The ``Sources:`` trailer this API
    appended to earlier answers is cut off again, so it does not eat the history
    budget. A housekeeping prompt (:func:`is_housekeeping`) keeps every message.
    """
    if not isinstance(body, dict):
        raise api_refusal(400, "The request body must be a JSON object.", "bad_body")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise api_refusal(400, "The request needs a 'model' (see GET /v1/models).", "missing_model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise api_refusal(400, "The request needs a non-empty 'messages' list.", "missing_messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise api_refusal(400, "Each message needs a 'role' and 'content'.", "bad_message")
    last = messages[-1]
    if last["role"] != "user":
        raise api_refusal(400, "The last message must be a non-empty user message.", "no_question")
    question = _text(last, "messages[-1]")
    if not question:
        raise api_refusal(
            400,
            "The question is empty: the last user message holds no text, only blanks or "
            "control characters.",
            "empty_question",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise api_refusal(400, "'stream' must be true or false.", "bad_stream")
    housekeeping = _as_sent(messages) if is_housekeeping(question) else None
    history = _history(messages[:-1])
    generation = parse_generation(body)
    return ChatRequest(model.strip(), question, history, stream, generation, housekeeping)


def parse_generation(body: dict[str, Any]) -> Generation:
    """The request's sampling settings, each checked for type and range (a 400 if not).

    ``max_completion_tokens`` is OpenAI's newer name for ``max_tokens`` and wins.
    """
    newer = body.get("max_completion_tokens") is not None
    name = "max_completion_tokens" if newer else "max_tokens"
    return Generation(
        max_tokens=number(body.get(name), name, int, 1, None),
        temperature=number(body.get("temperature"), "temperature", float, 0.0, 2.0),
        top_p=number(body.get("top_p"), "top_p", float, 0.0, 1.0),
        stop=stops(body.get("stop")),
    )


def is_housekeeping(text: str) -> bool:
    """True for a client's housekeeping prompt rather than a person's question.

    >>> is_housekeeping('### Task:\\nGenerate a concise title ... JSON format: { "title": "" }')
    True
    >>> is_housekeeping("What does ### Task: mean in a prompt?")
    False
    """
    return text.lstrip().startswith(TASK_PREFIX) and "JSON" in text


def _text(message: dict[str, Any], param: str) -> str:
    return _CONTROL.sub("", message_text(message.get("content"), param)).strip()


def _history(messages: list[dict[str, Any]]) -> list[Message]:
    history: list[Message] = []
    for message in messages:
        if message["role"] not in ("user", "assistant"):
            continue
        text = _text(message, "messages").split(SOURCES_MARKER)[0]
        text = text.split(CLOSEST_MARKER)[0].strip()
        if text:
            history.append({"role": message["role"], "content": text})
    return history


def _as_sent(messages: list[dict[str, Any]]) -> list[Message]:
    """The client's own conversation for the model: its system, user and assistant texts."""
    kept = [m for m in messages if m["role"] in ("system", "user", "assistant")]
    return [{"role": m["role"], "content": t} for m in kept if (t := _text(m, "messages"))]


# --- models -----------------------------------------------------------------------


def model_cards(offer: Offer) -> list[dict[str, Any]]:
    """``GET /v1/models`` entries: every model a client may ask for, local ones first
    (while the local server is down, the ones it is known to serve)."""
    return [
        {"id": m, "object": "model", "created": 0, "owned_by": f"{OWNER}:{offer.owner(m)}"}
        for m in offer.known
    ]


# --- the answer ------------------------------------------------------------------


def cited(start: AnswerStart, done: AnswerDone | None) -> list[tuple[int, Hit]]:
    """The answer's sources as ``(number, passage)``: the ones it cites, or every passage of
    the prompt when the stream broke before the end."""
    if done is None:
        return list(enumerate(start.hits, start=1))
    return [(c.number, c.hit) for c in done.sources]


def sources_trailer(start: AnswerStart, done: AnswerDone | None) -> str:
    """The text appended to every answer: its sources (or the closest matches when the
    documents do not cover it), and where routing sent it if not to the local model."""
    route = done.route if done else start.route
    parts: list[str] = []
    if route is not None and route.answered_elsewhere:
        parts.append(f"\n\n_Answered by '{route.provider.name}' ({route.model}): {route_note(route)}._")
    if done is not None and done.refused:
        if start.hits:
            parts.append(CLOSEST_MARKER + _numbered(list(enumerate(start.hits, start=1))))
    elif sources := cited(start, done):
        parts.append(SOURCES_MARKER + _numbered(sources))
    return "".join(parts)


def _numbered(sources: list[tuple[int, Hit]]) -> str:
    return "\n".join(f"[{n}] {source_label(h)}" for n, h in sources)


def rag_field(
    start: AnswerStart, done: AnswerDone | None, housekeeping: bool = False
) -> dict[str, Any]:
    """The extra ``rag`` field: who answered and the sources, for clients that look."""
    return {
        "housekeeping": housekeeping,
        **route_field(done.route if done else start.route),
        "covered": not (done and done.refused),
        "sources": [{"n": n, "source": h.source, "page": h.page} for n, h in cited(start, done)],
    }


def _headers(route: Route | None) -> dict[str, str]:
    def latin1(value: str) -> str:
        return value.encode("latin-1", "replace").decode("latin-1")

    if route is None:
        return {"X-RAG-Endpoint": "none", "X-RAG-Route": "not covered by the documents"}
    return {
        "X-RAG-Endpoint": latin1(route.provider.name),
        "X-RAG-Model": latin1(route.model),
        "X-RAG-Route": latin1(route_note(route)),
    }


def _chunk(
    cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None, **extra: Any
) -> str:
    return sse(chunk(cid, created, model, delta, finish, **extra))


def route_field(route: Route | None) -> dict[str, Any]:
    """Who answers, as the ``rag`` field of a stream's first text chunk: a stream's headers
    leave before the route is known, so this is where a streamed client finds it."""
    return {
        "endpoint": route.provider.name if route else None,
        "model": route.model if route else None,
        "local": route.provider.on_premises if route else True,
        "reason": route.reason.value if route else "not-covered",
    }


async def _sse(
    events: AsyncGenerator[AnswerEvent, None],
    model: str,
    trailer: bool,
    check: Callable[[], Awaitable[None]],
) -> AsyncGenerator[str, None]:
    """A streamed answer as SSE, its first bytes sent before retrieval and the model start.

    A client that waits a long time for the model's first token (a CPU model, a busy
    server) sees the stream open at once; even the model check (``check``, which asks
    the model server for its list) runs after that. What goes wrong before the answer begins is
    told in the stream (:func:`_not_begun`); a break midway ends with an ``error``
    event (:func:`_cut_off`), never with ``finish_reason: "stop"``.
    """
    cid, created = completion_id("chatcmpl-rag"), now()
    yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
    try:
        async for event in _sse_answer(events, cid, created, model, trailer, check):
            yield event
    finally:
        # Also when the client leaves while the model is thinking: the model server stops.
        await events.aclose()


async def _sse_answer(
    events: AsyncGenerator[AnswerEvent, None],
    cid: str,
    created: int,
    model: str,
    trailer: bool,
    check: Callable[[], Awaitable[None]],
) -> AsyncGenerator[str, None]:
    """:func:`_sse` after its opening chunk: the route, the text, the sources, the end."""
    try:
        await check()
        start = await anext(events)
    except StopAsyncIteration:
        start = None
    except WireError as exc:
        for event in _not_begun(exc, cid, created, model):
            yield event
        return
    except RagError as exc:
        for event in _not_begun(api_error(exc), cid, created, model):
            yield event
        return
    except Exception:  # the status is sent: the failure must be told in the stream
        log.exception("answer stream failed before it began")
        for event in _not_begun(_INTERNAL, cid, created, model):
            yield event
        return
    if not isinstance(start, AnswerStart):
        for event in _not_begun(_EMPTY, cid, created, model):
            yield event
        return
    yield _chunk(cid, created, model, {"content": ""}, rag=route_field(start.route))
    done: AnswerDone | None = None
    broke: WireError | None = None
    try:
        async for event in events:
            if isinstance(event, AnswerDelta):
                yield _chunk(cid, created, model, {"content": event.text})
            elif isinstance(event, AnswerDone):
                done = event
    except RagError as exc:
        broke = api_error(exc)
    except Exception:  # a client must get a finished stream, not a cut one
        log.exception("answer stream failed")
        broke = _INTERNAL
    if broke is not None:
        note = f"\n\n[The answer stopped early: {broke.message}]"
        yield _chunk(cid, created, model, {"content": note})
    elif done is not None and done.withdrawn is not None:
        # The draft has streamed; a client can only be told at its end that it does not stand.
        note = f"\n\n[{done.withdrawn.sentence()} {done.text}]"
        yield _chunk(cid, created, model, {"content": note})
    elif done is not None and done.citations_moved and trailer:
        yield _chunk(cid, created, model, {"content": CITATIONS_MOVED_NOTE})
    if trailer:
        yield _chunk(cid, created, model, {"content": sources_trailer(start, done)})
    if broke is not None:
        yield _cut_off(broke, rag_field(start, done, not trailer))
    else:
        yield _chunk(cid, created, model, {}, "stop", rag=rag_field(start, done, not trailer))
    yield SSE_DONE


_EMPTY = api_refusal(
    502, "The model server ended the answer before it began.", "empty", "server_error"
)
_INTERNAL = api_refusal(
    500,
    "The RAG server failed on this request; its log has the details.",
    "internal_error",
    "server_error",
)


def _cut_off(error: WireError, rag: dict[str, Any]) -> str:
    """The last event of a stream that broke midway: an OpenAI ``error`` event.

    The ``openai`` SDK raises ``APIError`` with its message once the text before it
    has been read; Open WebUI keeps the text and marks the message failed. A
    ``finish_reason: "stop"`` would tell both that the answer was complete.
    """
    code = "stream_interrupted" if error.code == "endpoint_error" else error.code
    return sse({"error": {**error.body()["error"], "code": code}, "rag": rag})


def _not_begun(error: WireError, cid: str, created: int, model: str) -> list[str]:
    """The rest of a stream whose answer never began.

    No model server answered: the sentence is the answer's text, where Open WebUI
    shows it (a bare error tells a person nothing about which server to start),
    and the final chunk carries the error too. Anything else (no documents, a
    question too long, a route refused) is an ``error`` event, which OpenAI
    clients raise as the error they would have had from a status code.
    """
    if error.code == "endpoint_unavailable":
        return [
            _chunk(cid, created, model, {"content": error.message}),
            _chunk(cid, created, model, {}, "stop", rag={"endpoint": None, **error.body()}),
            SSE_DONE,
        ]
    return [sse({**error.body(), "rag": {"endpoint": None}}), SSE_DONE]


async def _check_model(model: str, settings: Settings) -> None:
    """A 404 for a plain model id the local server does not list.

    When the local server is down its list is unknown: routing decides (a
    fallback in local-first, the server-down sentence in local-only). Pinned
    ``endpoint:model`` ids are routing's to judge.
    """
    catalog = model_catalog(settings)
    if split_qualified(model, catalog.table()) is not None:
        return
    offer = await catalog.offer()
    if offer.local is not None and model not in offer.listed:
        raise api_refusal(
            404,
            f"The model '{model}' does not exist here; GET /v1/models lists the available ones.",
            "model_not_found",
        )


async def chat_completions(request: Request, settings: Settings) -> Response:
    """``POST /v1/chat/completions``: the handler behind the route (see the module docstring)."""
    chat = parse_chat_request(await read_json(request))
    if chat.housekeeping is not None:
        events = direct(
            chat.housekeeping, settings, model=chat.model, generation=chat.generation
        )
    else:
        events = answer(
            chat.question,
            settings,
            model=chat.model,
            history=chat.history,
            generation=chat.generation,
        )
    trailer = chat.housekeeping is None  # housekeeping wants bare JSON back
    if chat.stream:
        # No headers depend on the model or route: they leave before the model server is asked.
        return StreamingResponse(
            _sse(events, chat.model, trailer, lambda: _check_model(chat.model, settings)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    await _check_model(chat.model, settings)
    try:
        start = await anext(events)
    except StopAsyncIteration:
        raise api_refusal(
            502, "The model server ended the answer before it began.", "empty", "server_error"
        ) from None
    except RagError as exc:
        raise api_error(exc) from exc
    assert isinstance(start, AnswerStart)
    return await _whole(events, start, chat.model, trailer)


async def _whole(
    events: AsyncGenerator[AnswerEvent, None], start: AnswerStart, model: str, trailer: bool
) -> JSONResponse:
    """The non-streamed response: the whole answer (and its sources) in one body."""
    parts: list[str] = []
    done: AnswerDone | None = None
    try:
        async for event in events:
            if isinstance(event, AnswerDelta):
                parts.append(event.text)
            elif isinstance(event, AnswerDone):
                done = event
    except RagError as exc:
        raise api_error(exc) from exc
    route = done.route if done else start.route
    # The finished text, not the streamed one: a withdrawal or a moved citation changes it.
    said = done.text if done is not None else "".join(parts)
    if done is not None and done.withdrawn is not None:
        said = f"{done.text}\n\n{done.withdrawn.sentence()}"
    text = said + (sources_trailer(start, done) if trailer else "")
    completion_tokens = done.completion_tokens if done else len(parts)
    counts = usage(start.prompt_tokens, completion_tokens)
    body = completion(
        completion_id("chatcmpl-rag"),
        now(),
        model,
        text,
        "stop",
        counts,
        rag=rag_field(start, done, not trailer),
    )
    return JSONResponse(body, headers=_headers(route))


# --- mounting ----------------------------------------------------------------------


def _authorized(request: Request, settings: Settings) -> bool:
    if not settings.api_key:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    # Constant-time comparison: the key is the only thing between the network and the documents.
    return scheme.lower() == "bearer" and secrets.compare_digest(
        token.strip().encode(), settings.api_key.encode()
    )


def _foreign_caller(request: Request, settings: Settings) -> str | None:
    """Why a request must be refused as coming from a web page, or None.

    Chainlit's CORS layer covers the whole app, so the browser's same-origin rule
    cannot be the only lock on ``/v1``.
    """
    origin = request.headers.get("origin")
    if origin is not None and not is_loopback_host(host_of(origin)):
        return f"Requests from web pages at {origin} are refused: the API serves this machine."
    host = host_of(request.headers.get("host", ""))
    if not settings.api_key and not is_loopback_host(host):
        return (
            f"The API answers to a loopback host name (127.0.0.1, localhost), not '{host}'; "
            "set RAG_API_KEY to serve other names."
        )
    return None


Handler = Callable[[Request, Settings], Awaitable[Response]]


def create_router(settings: Settings) -> APIRouter:
    """The ``/v1`` routes as a FastAPI router (mount with :func:`mount_openai_api`)."""
    router = APIRouter()

    async def guarded(request: Request, handler: Handler) -> Response:
        s = settings
        if (refused := _foreign_caller(request, s)) is not None:
            return api_refusal(403, refused, "forbidden_origin").response()
        if not _authorized(request, s):
            return api_refusal(
                401,
                "Missing or wrong API key: send 'Authorization: Bearer <RAG_API_KEY>'.",
                "invalid_api_key",
            ).response()
        try:
            return await handler(request, s)
        except WireError as exc:
            return exc.response()
        except RagError as exc:
            return api_error(exc).response()
        except Exception:  # clients get JSON, the log gets the traceback
            log.exception("OpenAI-compatible API request failed")
            return api_refusal(
                500,
                "The RAG server failed on this request; its log has the details.",
                "internal_error",
                "server_error",
            ).response()

    async def models_handler(request: Request, s: Settings) -> Response:
        offer = await model_catalog(s).offer()
        if not offer.known:
            raise api_error(offer.problem or EndpointError("No model is available."))
        return JSONResponse({"object": "list", "data": model_cards(offer)})

    @router.get("/v1/models")
    async def list_models_route(request: Request) -> Response:
        return await guarded(request, models_handler)

    @router.post("/v1/chat/completions")
    async def chat_route(request: Request) -> Response:
        return await guarded(request, chat_completions)

    return router


def mount_openai_api(app: FastAPI, settings: Settings) -> None:
    """Add ``GET /v1/models`` and ``POST /v1/chat/completions`` to ``app`` (Chainlit's server app).

    The routes go to the *front* of the route list: Chainlit serves its web app
    from a catch-all GET route, which would otherwise answer ``/v1/models``
    with HTML. Calling it again (a reload re-running app.py) replaces the routes
    instead of adding a second copy.
    """
    put_first(app, create_router(settings), "rag_openai_routes")
