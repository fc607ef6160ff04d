"""A real OpenAI-compatible HTTP server on loopback, for tests and benchmarks.

It stands in for what cannot run here (Foundry Local, Ollama, a cloud LLM):
it lists models, answers ``/v1/chat/completions`` streamed or not, logs every
request it received, and can be told to wait before the first token or to
break the stream midway.

>>> with FakeOpenAI(models=["phi-4-mini"], reply="Hello [1]") as fake:   # doctest: +SKIP
...     openai.OpenAI(base_url=fake.base_url, api_key="x").models.list()
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Reply = str | Callable[[dict[str, Any]], str]


@dataclass
class FakeOpenAI:
    """Start with ``with FakeOpenAI(...) as fake:`` or ``start()``/``stop()``."""

    models: list[str] = field(default_factory=lambda: ["fake-model"])
    reply: Reply = "This is a fake answer [1]."
    first_token_delay_s: float = 0.0  # wait before the first streamed token (TTFT)
    token_delay_s: float = 0.0  # wait between streamed tokens
    break_after_tokens: int | None = None  # cut the connection after this many tokens
    api_key: str | None = None  # when set, requests must carry it as a bearer token
    host: str = "127.0.0.1"
    requests: list[dict[str, Any]] = field(default_factory=list)  # bodies of chat requests

    def __post_init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, 0))
        self.port: int = self._sock.getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def models_called(self) -> list[str]:
        """The ``model`` field of each chat request, in order."""
        return [r.get("model", "") for r in self.requests]

    # --- lifecycle -----------------------------------------------------------
    def start(self) -> FakeOpenAI:
        app = Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving: afterwards connections to :attr:`base_url` are refused."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- handlers --------------------------------------------------------------
    def _unauthorized(self, request: Request) -> Response | None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse(
                {"error": {"message": "Invalid API key", "type": "invalid_request_error"}},
                status_code=401,
            )
        return None

    async def _models(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                    for m in self.models
                ],
            }
        )

    async def _chat(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        body = await request.json()
        self.requests.append(body)
        model = body.get("model", "")
        if model not in self.models:
            return JSONResponse(
                {"error": {"message": f"model '{model}' not found", "type": "not_found"}},
                status_code=404,
            )
        text = self.reply(body) if callable(self.reply) else self.reply
        # Words with their following space, so joined deltas give back the text.
        tokens = [w + " " for w in text.split(" ")]
        tokens[-1] = tokens[-1][:-1]
        created = int(time.time())
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": _count_words(body),
                        "completion_tokens": len(tokens),
                        "total_tokens": _count_words(body) + len(tokens),
                    },
                }
            )
        return StreamingResponse(
            self._sse(model, tokens, created), media_type="text/event-stream"
        )

    async def _sse(self, model: str, tokens: list[str], created: int):  # noqa: ANN202
        def event(delta: dict[str, Any], finish: str | None = None) -> str:
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(chunk)}\n\n"

        if self.first_token_delay_s:
            await asyncio.sleep(self.first_token_delay_s)
        yield event({"role": "assistant", "content": ""})
        for n, token in enumerate(tokens):
            if self.break_after_tokens is not None and n >= self.break_after_tokens:
                # Raising inside the body makes uvicorn drop the connection
                # without ending the chunked response: a real mid-stream break.
                raise ConnectionAbortedError("fake server broke the stream")
            if n and self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            yield event({"content": token})
        yield event({}, "stop")
        yield "data: [DONE]\n\n"


def _count_words(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
