"""Driving app.py's Chainlit handlers without a browser.

:class:`ChatSession` builds a ``ChainlitContext`` around a mocked websocket
session (as Chainlit's own tests do) whose ``emit`` is an ``AsyncMock``, so the
decorated handlers can be awaited directly. It replays what the UI received
into messages, steps, elements and chat settings for the assertions.

>>> async with ChatSession() as chat:                                  # doctest: +SKIP
...     await app.on_chat_start()
...     await chat.send(app.on_message, "How many holidays?")
...     chat.last_answer()
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any
from unittest.mock import AsyncMock, Mock

import chainlit as cl
from chainlit.context import ChainlitContext, context_var
from chainlit.session import WebsocketSession
from chainlit.user_session import user_sessions


@dataclass
class UiMessage:
    """One message or step as the UI would show it after all updates and tokens."""

    id: str
    type: str
    name: str
    output: str
    is_error: bool = False
    elements: list[dict[str, Any]] = field(default_factory=list)


class ChatSession:
    """One chat: a Chainlit context whose emitted events are kept in ``events``."""

    def __init__(self) -> None:
        self.files: dict[str, Any] = {}  # persisted element content by chainlit key
        session = Mock(spec=WebsocketSession)
        session.id = f"test-{uuid.uuid4().hex}"
        session.thread_id = f"thread-{uuid.uuid4().hex}"
        session.user_env = {}
        session.chat_settings = {}
        session.user = None
        session.chat_profile = None
        session.http_referer = None
        session.client_type = "webapp"
        session.languages = ["en-US"]
        session.has_first_interaction = True
        session.emit = AsyncMock()
        session.persist_file = AsyncMock(side_effect=self._persist_file)
        self.session = session
        self._token: Any = None

    async def __aenter__(self) -> ChatSession:
        self.context = ChainlitContext(self.session)
        self._token = context_var.set(self.context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        context_var.reset(self._token)
        user_sessions.pop(self.session.id, None)

    async def _persist_file(
        self, name: str, path: str | None, content: Any, mime: str
    ) -> dict[str, str]:
        key = uuid.uuid4().hex
        self.files[key] = content
        return {"id": key}

    # --- acting like the user ---------------------------------------------------------
    async def send(self, handler: Any, text: str, elements: list[Any] | None = None) -> None:
        """Post a user message and await ``on_message`` the way Chainlit would."""
        message = cl.Message(content=text, type="user_message", elements=elements or [])
        await handler(message)

    # --- what the UI received -----------------------------------------------------------
    @property
    def events(self) -> list[tuple[str, Any]]:
        return [(c.args[0], c.args[1]) for c in self.session.emit.call_args_list]

    def messages(self) -> list[UiMessage]:
        """Messages and steps in the order they first appeared, with their final content."""
        shown: dict[str, UiMessage] = {}
        for event, data in self.events:
            if event in ("new_message", "update_message", "stream_start"):
                current = shown.get(data["id"])
                ui = UiMessage(
                    id=data["id"],
                    type=data["type"],
                    name=data.get("name", ""),
                    output=data.get("output", ""),
                    is_error=bool(data.get("isError")),
                    elements=current.elements if current else [],
                )
                shown[data["id"]] = ui
            elif event == "stream_token":
                ui = shown[data["id"]]
                ui.output = data["token"] if data["isSequence"] else ui.output + data["token"]
            elif event == "element" and data.get("forId") in shown:
                owner = shown[data["forId"]]
                owner.elements = [e for e in owner.elements if e["id"] != data["id"]] + [data]
        return list(shown.values())

    def answers(self) -> list[UiMessage]:
        """Assistant messages (not steps), oldest first."""
        return [m for m in self.messages() if m.type == "assistant_message"]

    def last_answer(self) -> UiMessage:
        return self.answers()[-1]

    def steps(self, type_: str) -> list[UiMessage]:
        return [m for m in self.messages() if m.type == type_]

    def streamed_tokens(self, message_id: str) -> list[str]:
        return [d["token"] for e, d in self.events if e == "stream_token" and d["id"] == message_id]

    def chat_settings(self) -> list[dict[str, Any]]:
        """The widgets of the last ``cl.ChatSettings`` sent."""
        sent = [data for event, data in self.events if event == "chat_settings"]
        return sent[-1] if sent else []

    def element_text(self, element: dict[str, Any]) -> str:
        return str(self.files.get(element.get("chainlitKey"), ""))
