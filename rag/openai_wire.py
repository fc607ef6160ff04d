"""OpenAI's chat-completions wire format, in one place.

Both servers this project runs speak it: the RAG API that Open WebUI and other
clients call (:mod:`rag.web.http_api`) and the embedded engine's server
(:mod:`rag.embedded_llm.server`). The request fields they read, the chunk and
completion bodies they send and the error body they answer with are built here,
so the two cannot drift apart.

>>> chunk("chatcmpl-1", 0, "m", {"content": "Hi"})["choices"][0]["delta"]
{'content': 'Hi'}
>>> message_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "messages[0]")
'ab'
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from starlette.responses import JSONResponse

MAX_STOPS = 4  # OpenAI's limit
SSE_DONE = "data: [DONE]\n\n"


class WireError(Exception):
    """A request refused, as OpenAI-style JSON ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        """The error object, as an SSE event or a response body carries it."""
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        }

    def response(self) -> JSONResponse:
        """The HTTP response for this error."""
        return JSONResponse(self.body(), status_code=self.status)


def completion_id(prefix: str = "chatcmpl") -> str:
    """A fresh id for one completion: ``chatcmpl-<24 hex>``."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    """The ``created`` timestamp: whole seconds since the epoch."""
    return int(time.time())


def chunk(
    cid: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish: str | None = None,
    logprobs: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with a single choice."""
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        **extra,
    }


def completion(
    cid: str,
    created: int,
    model: str,
    text: str,
    finish: str,
    usage: dict[str, int],
    logprobs: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A whole ``chat.completion`` with a single assistant message."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": finish,
            }
        ],
        "usage": usage,
        **extra,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event carrying ``obj`` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def model_card(model: str, owned_by: str, created: int = 0, **extra: Any) -> dict[str, Any]:
    """One entry of ``GET /v1/models``."""
    return {"id": model, "object": "model", "created": created, "owned_by": owned_by, **extra}


def message_text(content: Any, param: str) -> str:
    """A message's text: a string, nothing, or OpenAI's list of text content parts.

    Raises :class:`WireError` (400) for anything else: these are text models.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" for p in content
    ):
        return "".join(str(p.get("text", "")) for p in content)
    raise WireError(
        400, f"{param}: the content must be a string or a list of text parts.", param=param
    )


def number(value: Any, name: str, kind: type, low: float | None, high: float | None) -> Any:
    """A numeric request field checked for type and range (None stays None)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and value != int(value))
    ):
        raise WireError(
            400, f"'{name}' must be a{'n integer' if kind is int else ' number'}.", param=name
        )
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise WireError(400, f"'{name}' must be {bounds} (got {value}).", param=name)
    return kind(value)


def stops(stop: Any) -> tuple[str, ...]:
    """The ``stop`` field as a tuple of sequences (a string or a list of up to four)."""
    if stop is None:
        return ()
    listed = [stop] if isinstance(stop, str) else stop
    if not isinstance(listed, list) or not all(isinstance(s, str) for s in listed):
        raise WireError(400, "'stop' must be a string or a list of strings.", param="stop")
    if len(listed) > MAX_STOPS:
        raise WireError(400, f"'stop' takes at most {MAX_STOPS} sequences.", param="stop")
    return tuple(s for s in listed if s)
