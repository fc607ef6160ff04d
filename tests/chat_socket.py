"""A real socket.io client that chats with a running app the way Chainlit's web page does.

It speaks Chainlit 2.12's protocol (``/ws/socket.io``, the ``auth`` handshake,
``connection_successful``, ``client_message``) and records every event the app
emits, so tests and benchmarks can read the answer and its source elements.
``origin`` and ``host`` set the headers a browser on some other page would send.

>>> with ChatSocket(app.url, origin="http://127.0.0.1") as chat:   # doctest: +SKIP
...     chat.ask("How many days of paid holiday do I get?").text
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import httpx
import socketio

SOCKET_PATH = "/ws/socket.io"
Transport = Literal["websocket", "polling"]


@dataclass
class ChatAnswer:
    """The assistant's last message after a question, and the sidebar's elements with it."""

    text: str
    elements: list[dict[str, Any]] = field(default_factory=list)


class ChatSocket:
    """One chat over one socket.io connection; ``connect()`` raises if the app refuses it."""

    def __init__(
        self,
        url: str,
        *,
        origin: str | None = None,
        host: str | None = None,
        transport: Transport = "websocket",
        timeout_s: float = 60,
        login: tuple[str, str] | None = None,
        thread_id: str | None = None,
    ) -> None:
        self.url = url
        self.origin = origin
        self.host = host
        self.transport = transport
        self.timeout_s = timeout_s
        self.login = login
        self.thread_id = thread_id
        self.cookies: dict[str, str] = {}
        self.session_id = str(uuid.uuid4())
        self.events: list[tuple[str, Any]] = []
        self._changed = threading.Condition()
        self.sio = socketio.Client(reconnection=False, **self._header_options())
        self.sio.on("*", self._record)

    def _header_options(self) -> dict[str, Any]:
        # websocket-client writes its own Origin and Host lines; set them through its
        # options so each header is sent once, as a browser would.
        if self.transport == "websocket":
            return {"websocket_extra_options": {"origin": self.origin, "host": self.host}}
        return {}

    def _polling_headers(self) -> dict[str, str]:
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        sign_in = {"Cookie": cookie} if cookie else {}
        if self.transport == "websocket":
            return sign_in
        headers = {"Origin": self.origin, "Host": self.host}
        return {k: v for k, v in headers.items() if v is not None} | sign_in

    def sign_in(self) -> dict[str, str]:
        """Sign in as the page does: with ``login`` (name, password), else by header sign-in.

        Keeps the session cookie for the socket and for :meth:`http`; an app
        without sign-in, or one that refuses it, leaves no cookie.
        """
        headers = {k: v for k, v in {"Origin": self.origin, "Host": self.host}.items() if v}
        with httpx.Client(base_url=self.url, headers=headers, timeout=10) as client:
            if self.login is not None:
                name, password = self.login
                response = client.post("/login", data={"username": name, "password": password})
            else:
                response = client.post("/auth/header")
            self.cookies = dict(response.cookies) if response.status_code == 200 else {}
        return self.cookies

    def http(self) -> httpx.Client:
        """An HTTP client to the app carrying this chat's sign-in (for the history routes)."""
        return httpx.Client(base_url=self.url, cookies=self.cookies, timeout=10)

    def _record(self, event: str, *args: Any) -> None:
        with self._changed:
            self.events.append((event, args[0] if args else None))
            self._changed.notify_all()

    # --- lifecycle ---------------------------------------------------------------------
    def connect(self) -> ChatSocket:
        """Sign in, open the socket and start (or resume) the chat; returns once it is ready."""
        if not self.cookies:
            self.sign_in()
        self.sio.connect(
            self.url,
            socketio_path=SOCKET_PATH,
            transports=[self.transport],
            headers=self._polling_headers(),
            auth={
                "sessionId": self.session_id,
                "clientType": "webapp",
                "userEnv": "{}",
                "chatProfile": None,
                "threadId": self.thread_id,
            },
            wait_timeout=10,
        )
        self.sio.emit("connection_successful")
        if self.thread_id is None:
            self.wait_for(lambda: bool(self.messages()), "the welcome message")
        else:
            names = ("resume_thread", "resume_thread_error")
            self.wait_for(lambda: any(n in names for n, _ in self.events), "the resumed chat")
        return self

    def close(self) -> None:
        if self.sio.connected:
            self.sio.disconnect()

    def __enter__(self) -> ChatSocket:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- chatting ----------------------------------------------------------------------
    def ask(self, question: str) -> ChatAnswer:
        """Send ``question`` as the user and wait until the app has finished answering."""
        start = len(self.events)
        self.sio.emit(
            "client_message",
            {
                "message": {
                    "id": str(uuid.uuid4()),
                    "threadId": self.thread_id or "",
                    "name": "User",
                    "type": "user_message",
                    "output": question,
                    "createdAt": datetime.now(timezone.utc).isoformat(),
                },
                "fileReferences": [],
            },
        )
        self.wait_for(lambda: _finished_task(self.events[start:]), f"an answer to {question!r}")
        answers = self.messages(self.events[start:])
        sidebars = [data for name, data in self.events[start:] if name == "set_sidebar_elements"]
        return ChatAnswer(
            text=list(answers.values())[-1] if answers else "",
            elements=sidebars[-1]["elements"] if sidebars else [],
        )

    def element_text(self, element: dict[str, Any]) -> str:
        """Download an element's file the way the page does (``/project/file/<key>``)."""
        response = httpx.get(
            f"{self.url}/project/file/{element['chainlitKey']}",
            params={"session_id": self.session_id},
            cookies=self.cookies,
            timeout=10,
        )
        response.raise_for_status()
        return response.text

    # --- reading what arrived ----------------------------------------------------------
    def thread_id_started(self) -> str | None:
        """The id of the thread this chat saved to, once the first question started it."""
        for name, data in self.events:
            if name == "first_interaction":
                return data.get("thread_id")
        return self.thread_id

    def messages(self, events: list[tuple[str, Any]] | None = None) -> dict[str, str]:
        """Assistant messages by id, as the page shows them after every token and update."""
        shown: dict[str, str] = {}
        for name, data in self.events if events is None else events:
            if name in ("new_message", "update_message", "stream_start"):
                if data.get("type") == "assistant_message":
                    shown[data["id"]] = data.get("output", "")
            elif name == "stream_token" and data["id"] in shown:
                shown[data["id"]] += data["token"]
        return shown

    def wait_for(self, condition: Any, what: str) -> None:
        """Block until ``condition()`` holds after some event, or fail after ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    names = [name for name, _ in self.events]
                    raise TimeoutError(f"no {what} within {self.timeout_s} s; events: {names}")
                self._changed.wait(left)


def _finished_task(events: list[tuple[str, Any]]) -> bool:
    names = [name for name, _ in events]
    return "task_start" in names and "task_end" in names[names.index("task_start") :]
