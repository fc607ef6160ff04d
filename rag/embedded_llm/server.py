"""The embedded engine's OpenAI-compatible HTTP server (Starlette + uvicorn).

Routes:

- ``GET /v1/models``: the loaded model (its id is the model folder's name);
- ``POST /v1/chat/completions``: ``stream`` true or false, ``max_tokens`` (or
  ``max_completion_tokens``), ``temperature``, ``top_p``, ``stop``, ``seed``,
  ``stream_options.include_usage``, ``logprobs`` and ``top_logprobs`` (in a stream,
  all on the last chunk); vLLM's ``min_tokens`` / ``ignore_eos`` extensions are
  accepted too. ``usage`` carries real token counts;
- ``GET /health`` and ``GET /engine/stats`` (generation counters).

Every error is OpenAI-shaped JSON ``{"error": {"message", "type", "param", "code"}}``.
A generation that repeats one phrase three times in a row ends with ``finish_reason``
"stop" (tiny models loop; see :func:`rag.embedded_llm.generation.ends_in_loop`).

    python -m rag.embedded_llm serve --port 8099
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rag.embedded_llm.generation import Delta, Engine, Failed, Finished, Sampling
from rag.embedded_llm.model import BUILD_HINT, GENAI_CONFIG
from rag.openai_wire import (
    SSE_DONE,
    WireError,
    chunk,
    completion,
    message_text,
    model_card,
    now,
    number,
    sse,
    stops,
    usage,
)
from rag.openai_wire import completion_id as new_completion_id
from rag.settings import Settings

log = logging.getLogger("rag.embedded_llm")

ROLES = {"system", "user", "assistant", "tool", "developer"}


# Kept as a name of this module: the engine's tests and callers refuse requests with it.
EngineRequestError = WireError


@dataclass(frozen=True)
class ChatRequest:
    """A validated ``/v1/chat/completions`` body."""

    model: str
    messages: list[dict[str, str]]
    stream: bool
    include_usage: bool
    sampling: Sampling
    max_tokens_given: bool


def parse_engine_request(body: Any, model_id: str, default_max_tokens: int) -> ChatRequest:
    """Validate a request body; raises :class:`EngineRequestError` (400/404) if unusable."""
    if not isinstance(body, dict):
        raise EngineRequestError(400, "The request body must be a JSON object.")
    model = body.get("model") or model_id
    if model != model_id:
        raise EngineRequestError(
            404,
            f"The model '{model}' does not exist: this server serves '{model_id}'.",
            param="model",
            code="model_not_found",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise EngineRequestError(
            400, "'messages' is required: a non-empty list of chat messages.", param="messages"
        )
    clean = [_message(m, i) for i, m in enumerate(messages)]

    n = body.get("n", 1)
    if n not in (1, None):
        raise EngineRequestError(400, "Only n=1 is supported.", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    given = max_tokens is not None
    max_tokens = number(max_tokens, "max_tokens", int, 1, None) if given else default_max_tokens
    temperature = number(body.get("temperature"), "temperature", float, 0.0, 2.0)
    top_p = number(body.get("top_p"), "top_p", float, 0.0, 1.0)
    seed = number(body.get("seed"), "seed", int, None, None)
    min_tokens = number(body.get("min_tokens"), "min_tokens", int, 0, None) or 0
    if body.get("ignore_eos") is True:
        min_tokens = max_tokens
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise EngineRequestError(400, "'stream' must be true or false.", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise EngineRequestError(400, "'stream_options' must be an object.", param="stream_options")
    top_logprobs = _top_logprobs(body)
    return ChatRequest(
        model=model_id,
        messages=clean,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        sampling=Sampling(
            max_tokens=max_tokens,
            temperature=1.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            stop=stops(body.get("stop")),
            seed=seed,
            min_tokens=min_tokens,
            top_logprobs=top_logprobs,
        ),
        max_tokens_given=given,
    )


def _top_logprobs(body: dict[str, Any]) -> int | None:
    """OpenAI's ``logprobs`` (true/false) and ``top_logprobs`` (0-20, only with logprobs)."""
    wanted = body.get("logprobs") or False
    if not isinstance(wanted, bool):
        raise EngineRequestError(400, "'logprobs' must be true or false.", param="logprobs")
    top = number(body.get("top_logprobs"), "top_logprobs", int, 0, 20)
    if top is not None and not wanted:
        raise EngineRequestError(
            400, "'top_logprobs' needs 'logprobs': true.", param="top_logprobs"
        )
    return (top or 0) if wanted else None


def _message(message: Any, index: int) -> dict[str, str]:
    param = f"messages[{index}]"
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise EngineRequestError(
            400, f"{param} must be an object with a role ({', '.join(sorted(ROLES))}).", param=param
        )
    content = message_text(message.get("content"), param)
    role = "system" if message["role"] == "developer" else message["role"]
    return {"role": role, "content": content}


class EngineApp:
    """The HTTP face of an :class:`Engine`; ``.app`` is the Starlette application."""

    def __init__(self, engine: Engine, default_max_tokens: int = 512) -> None:
        self.engine = engine
        self.default_max_tokens = default_max_tokens
        self.created = int((engine.info.path / GENAI_CONFIG).stat().st_mtime)
        self.app = Starlette(
            routes=[
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model_id:path}", self.model, methods=["GET"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/engine/stats", self.stats, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_error, Exception: self._crash},
        )

    # --- routes ---------------------------------------------------------------
    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> JSONResponse:
        if request.path_params["model_id"] != self.engine.info.id:
            return EngineRequestError(
                404,
                f"The model '{request.path_params['model_id']}' does not exist.",
                code="model_not_found",
            ).response()
        return JSONResponse(self._model_card())

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": self.engine.info.id})

    async def stats(self, request: Request) -> JSONResponse:
        return JSONResponse(self.engine.stats.as_dict())

    async def chat(self, request: Request) -> Response:
        try:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, ValueError) as exc:
                raise EngineRequestError(
                    400, f"The request body is not valid JSON: {exc}."
                ) from exc
            chat = parse_engine_request(body, self.engine.info.id, self.default_max_tokens)
            try:
                prompt = self.engine.render(chat.messages)
            except Exception as exc:  # the template's own check, e.g. roles out of order
                raise EngineRequestError(
                    400, f"The chat template refused the messages: {exc}"
                ) from exc
            prompt_ids = self.engine.encode(prompt)
            sampling = self._fit(chat, len(prompt_ids))
        except EngineRequestError as exc:
            return exc.response()
        completion_id = new_completion_id()
        if chat.stream:
            return StreamingResponse(
                self._sse(chat, sampling, prompt_ids, completion_id),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await self._complete(request, chat, sampling, prompt_ids, completion_id)

    # --- helpers ----------------------------------------------------------------
    def _model_card(self) -> dict[str, Any]:
        info = self.engine.info
        return model_card(info.id, "local", self.created, context_length=info.context_tokens)

    def _fit(self, chat: ChatRequest, prompt_tokens: int) -> Sampling:
        """Check the prompt fits the context; shrink max_tokens to the room that is left."""
        context = self.engine.info.context_tokens
        room = context - prompt_tokens
        if room < 1:
            raise EngineRequestError(
                400,
                f"This model's maximum context length is {context} tokens, but the messages "
                f"take {prompt_tokens} tokens. Shorten the messages or the context.",
                param="messages",
                code="context_length_exceeded",
            )
        s = chat.sampling
        if s.max_tokens <= room:
            return s
        # A default max_tokens must not fail a long prompt; an explicit one that cannot fit does.
        if chat.max_tokens_given:
            raise EngineRequestError(
                400,
                f"This model's maximum context length is {context} tokens: the messages take "
                f"{prompt_tokens} and max_tokens asks for {s.max_tokens} more. Lower max_tokens "
                f"to at most {room}.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return replace(s, max_tokens=room, min_tokens=min(s.min_tokens, room))

    def _chunk(
        self,
        cid: str,
        delta: dict[str, Any],
        finish: str | None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return chunk(cid, now(), self.engine.info.id, delta, finish, logprobs)

    async def _sse(
        self, chat: ChatRequest, sampling: Sampling, prompt_ids: np.ndarray, completion_id: str
    ) -> AsyncGenerator[str, None]:
        """OpenAI's SSE stream: role chunk, text chunks, finish chunk, usage chunk, ``[DONE]``."""

        yield sse(self._chunk(completion_id, {"role": "assistant", "content": ""}, None))
        async for event in self.engine.generate(prompt_ids, sampling):
            if isinstance(event, Delta):
                yield sse(self._chunk(completion_id, {"content": event.text}, None))
            elif isinstance(event, Failed):
                # Headers are sent already; an error event is how OpenAI reports this mid-stream.
                yield sse(WireError(500, event.message, type="server_error").body())
                break
            elif isinstance(event, Finished):
                last = self._chunk(completion_id, {}, event.reason, _logprobs(sampling, event))
                counts = usage(len(prompt_ids), event.completion_tokens)
                last["usage"] = counts
                yield sse(last)
                if chat.include_usage:
                    yield sse(
                        {**self._chunk(completion_id, {}, None), "choices": [], "usage": counts}
                    )
        yield SSE_DONE

    async def _complete(
        self,
        request: Request,
        chat: ChatRequest,
        sampling: Sampling,
        prompt_ids: np.ndarray,
        completion_id: str,
    ) -> Response:
        """Collect a whole answer, cancelling it if the client disconnects meanwhile."""

        async def collect() -> tuple[str, Finished | Failed]:
            parts: list[str] = []
            async for event in self.engine.generate(prompt_ids, sampling):
                if isinstance(event, Delta):
                    parts.append(event.text)
                else:
                    return "".join(parts), event
            raise AssertionError("generation ended without a final event")

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work = asyncio.create_task(collect())
        watch = asyncio.create_task(disconnected())
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        if not work.done():
            work.cancel()  # closes the generation iterator, which stops the worker
            return Response(status_code=499)
        text, end = work.result()
        if isinstance(end, Failed):
            return EngineRequestError(500, end.message, type="server_error").response()
        counts = usage(len(prompt_ids), end.completion_tokens)
        return JSONResponse(
            completion(
                completion_id, now(), self.engine.info.id, text, end.reason, counts,
                _logprobs(sampling, end),
            )
        )  # fmt: skip

    async def _http_error(self, request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return EngineRequestError(
            exc.status_code, f"{request.method} {request.url.path}: {exc.detail}.", type=kind
        ).response()

    async def _crash(self, request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return EngineRequestError(500, f"The engine failed: {exc}", type="server_error").response()


def _logprobs(sampling: Sampling, end: Finished) -> dict[str, Any] | None:
    """The choice's ``logprobs`` (in a stream, on its last chunk): each token's
    log-probability and its likeliest alternatives; None when the request did not ask."""
    if sampling.top_logprobs is None:
        return None

    def token(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    content = [
        {**token(e.token, e.logprob), "top_logprobs": [token(t, lp) for t, lp in e.top]}
        for e in end.logprobs
    ]
    return {"content": content, "refusal": None}


def _exit_when_parent_dies() -> None:
    """Exit at stdin EOF: only the parent holds the write end, and the OS closes it on death."""

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(1024):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(3)  # a graceful shutdown had its chance; never outlive the parent
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8099,
    model_dir: Path | None = None,
    fd: int | None = None,
    exit_with_parent: bool = False,
    threads: int | None = None,
) -> int:
    """Load the model and serve it until interrupted; returns the exit code."""
    import uvicorn  # only the server needs it; process.py and the CLI's build path do not

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    model_dir = (model_dir or settings.engine_model_dir).expanduser()
    if not (model_dir / GENAI_CONFIG).is_file():
        print(
            f"No embedded model in {model_dir} (no {GENAI_CONFIG}): {BUILD_HINT} first.",
            file=sys.stderr,
        )
        return 1
    if exit_with_parent:
        _exit_when_parent_dies()
    started = time.perf_counter()
    engine = Engine(model_dir, threads=settings.threads if threads is None else threads)
    api = EngineApp(engine, default_max_tokens=settings.answer_tokens)
    if fd is not None:
        sock = socket.socket(fileno=fd)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    bound_host, bound_port = sock.getsockname()[:2]
    config = uvicorn.Config(
        api.app, log_level="warning", access_log=False, lifespan="off",
        # Open SSE streams must not hold a shutdown (or a stop()) for long.
        timeout_graceful_shutdown=2,
    )  # fmt: skip
    server = uvicorn.Server(config)
    print(
        f"Embedded engine serving {engine.info.id} at http://{bound_host}:{bound_port}/v1 "
        f"(loaded in {time.perf_counter() - started:.1f}s)",
        flush=True,
    )
    server.run(sockets=[sock])
    return 0
