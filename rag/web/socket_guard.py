"""Keep foreign web pages off the chat's websocket and routes; give each instance its own files.

**The socket.** Chainlit 2.12 builds its socket.io server with
``cors_allowed_origins=[]``, which turns python-engineio's origin check off, so
any web page the user visits could open the chat's websocket and read answers
and passages. Turning that check back on would not be enough: it compares
``Origin`` with ``Host`` only when a browser sends ``Origin``, and a
DNS-rebinding page (``evil.example`` resolving to 127.0.0.1) is same-origin with
itself. So :class:`ChatSocketGuard` wraps the socket.io mount itself: every
request that reaches socket.io (polling GET and POST, the websocket upgrade)
passes :func:`refusal` first, and a refused one gets a 403 before socket.io
sees it, so no chat session or event exists for it. The rule is the one the
``/v1`` API applies: this machine's loopback origins and host names, plus what
the operator lists in ``RAG_ALLOWED_ORIGINS`` and ``RAG_ALLOWED_HOSTS``.
:class:`ChatHttpGuard` applies the same rule to Chainlit's other HTTP routes
(the page, uploads, element files), all but ``/v1``, which checks its own callers.

**The files.** Chainlit keeps session files (uploads, the sources shown beside
an answer) in ``<cwd>/.files`` and deletes that folder when it stops, which
breaks every other instance started from the same folder. When the server starts,
:func:`use_own_files_dir` points Chainlit at ``DATA_DIR/chat-files/<pid>-<random>/``
instead; Chainlit's shutdown then deletes only that folder. A file lock beside it marks it as
alive, so a later start removes the folders of instances that were killed.

>>> guard_chat_server(chainlit.server.app, settings)   # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from filelock import FileLock, Timeout
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from rag.errors import RagError
from rag.hosts import host_of, is_loopback_host
from rag.settings import Settings

log = logging.getLogger(__name__)

FILES_FOLDER = "chat-files"  # under DATA_DIR


class ChatServerUnguarded(RagError):
    """The chat server cannot be set up as this module requires; the app must not start."""


# --- the policy -----------------------------------------------------------------------------


class Refused(Enum):
    """Why a caller is refused: which header named somewhere the chat does not serve."""

    FOREIGN_ORIGIN = "origin"
    FOREIGN_HOST = "host"


@dataclass(frozen=True)
class Refusal:
    """A refused caller: the reason as a value, and the header value that caused it."""

    reason: Refused
    value: str

    def sentence(self) -> str:
        """The refusal for a person: what was refused and which setting opens it."""
        if self.reason is Refused.FOREIGN_ORIGIN:
            return (
                f"Chat connections from web pages at {self.value} are refused: the chat serves "
                "pages of this machine; add the origin to RAG_ALLOWED_ORIGINS to let it connect."
            )
        return (
            f"The chat answers to a loopback host name (127.0.0.1, localhost), not "
            f"'{self.value}'; add the name to RAG_ALLOWED_HOSTS to serve it."
        )


@dataclass(frozen=True)
class Caller:
    """What a request says about where it comes from: every ``Origin`` and ``Host`` it sent."""

    origins: tuple[str, ...]
    hosts: tuple[str, ...]

    @classmethod
    def from_scope(cls, scope: Scope) -> Caller:
        """The caller of an ASGI ``http`` or ``websocket`` request."""
        headers = [(k.lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        return cls(
            origins=tuple(v for k, v in headers if k == b"origin"),
            hosts=tuple(v for k, v in headers if k == b"host"),
        )


def refusal(caller: Caller, settings: Settings) -> Refusal | None:
    """Why ``caller`` may not use the chat, or None when it may.

    The host first: with a host name the operator did not list, even a
    same-origin page may be a DNS-rebinding one. Then each ``Origin``: a
    loopback page, a listed origin, or a page of the (accepted) host itself.
    Requests without ``Origin`` do not come from another site's page: browsers
    send it on every cross-origin request and websocket. This is the one place
    the chat's callers are judged; sign-in checks belong here too.
    """
    for host in caller.hosts or ("",):
        if not _host_allowed(_name_in(host), settings):
            return Refusal(Refused.FOREIGN_HOST, host)
    for origin in caller.origins:
        if not _origin_allowed(origin, caller.hosts, settings):
            return Refusal(Refused.FOREIGN_ORIGIN, origin)
    return None


def _name_in(header: str) -> str:
    """The host name of a ``Host`` or ``Origin`` value; "" for one that does not parse."""
    try:
        return host_of(header)
    except ValueError:  # for example an unclosed IPv6 bracket
        return ""


def _host_allowed(host: str, settings: Settings) -> bool:
    try:
        host = str(ipaddress.ip_address(host))  # the spelling settings keep
    except ValueError:
        host = host.lower().rstrip(".")
    return is_loopback_host(host) or host in settings.allowed_hosts


def _origin_allowed(origin: str, hosts: tuple[str, ...], settings: Settings) -> bool:
    if is_loopback_host(_name_in(origin)):
        return True
    if origin.lower().rstrip("/") in settings.allowed_origins:
        return True
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        return False
    # A page the app itself served under an accepted host name is not foreign.
    return bool(netloc) and bool(hosts) and all(netloc == host.lower() for host in hosts)


# --- the socket guard ---------------------------------------------------------------------------


class ChatSocketGuard:
    """An ASGI app in front of socket.io: a refused caller gets a 403, and never reaches it.

    Over HTTP (socket.io's polling transport) the 403 carries :meth:`Refusal.sentence`;
    every refusal is also logged with it, since a refused websocket upgrade has no body.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refused = refusal(Caller.from_scope(scope), self.settings)
            if refused is not None:
                log.warning("Refused a chat connection: %s", refused.sentence())
                await _refuse(scope, receive, send, refused)
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, refused: Refusal) -> None:
    if scope["type"] == "websocket":
        # Closing before accepting answers the upgrade with a bare 403. Browsers never
        # show a refused upgrade's body, and uvicorn 0.54 logs a false error after one.
        await send({"type": "websocket.close", "code": 1008})
        return
    await PlainTextResponse(refused.sentence(), status_code=403)(scope, receive, send)


def guard_chat_socket(server: Starlette, socket_path: str, settings: Settings) -> None:
    """Put :class:`ChatSocketGuard` in front of the socket.io app mounted at ``socket_path``.

    Raises :class:`ChatServerUnguarded` when no such mount exists (another Chainlit
    version): a chat without the guard must not start. Calling it again (Chainlit's
    ``-w`` reload imports app.py anew) replaces the settings, not the guard.
    """
    for route in server.router.routes:
        if isinstance(route, Mount) and route.path == socket_path.rstrip("/"):
            inner = route.app.app if isinstance(route.app, ChatSocketGuard) else route.app
            route.app = ChatSocketGuard(inner, settings)
            return
    raise ChatServerUnguarded(
        f"The chat's socket.io mount at {socket_path} was not found, so foreign web pages "
        "could not be kept out: install the Chainlit version requirements.txt pins."
    )


# --- every other HTTP route ----------------------------------------------------------------------


class ChatHttpGuard:
    """Starlette middleware on Chainlit's app: every HTTP route gets the socket's policy.

    Chainlit's own routes (the page, ``/project/*``, uploads, ``/auth/*``, element
    files) answer whoever asks, so a DNS-rebinding page could read them as
    same-origin. A refused caller gets a 403 with :meth:`Refusal.sentence`. The
    ``/v1`` API is left to its own check (a key opens it to other names), and
    websockets to :class:`ChatSocketGuard`. The settings live on ``server.state``,
    so a ``-w`` reload can replace them after the middleware stack is built.
    """

    def __init__(self, app: ASGIApp, server: Starlette) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _judged_elsewhere(scope.get("path", "")):
            settings: Settings = self.server.state.rag_http_guard_settings
            refused = refusal(Caller.from_scope(scope), settings)
            if refused is not None:
                log.warning("Refused a chat request: %s", refused.sentence())
                await _refuse(scope, receive, send, refused)
                return
        await self.app(scope, receive, send)


def _judged_elsewhere(path: str) -> bool:
    """True for the OpenAI-compatible API, which checks its callers itself."""
    return path == "/v1" or path.startswith("/v1/")


def guard_http_routes(server: Starlette, settings: Settings) -> None:
    """Add :class:`ChatHttpGuard` to ``server`` once; a second call only replaces the settings."""
    server.state.rag_http_guard_settings = settings
    if not any(m.cls is ChatHttpGuard for m in server.user_middleware):
        # Outermost, ahead of Chainlit's CORS layer: a refused preflight is refused too.
        server.add_middleware(ChatHttpGuard, server=server)


# --- each instance its own files folder -----------------------------------------------------------


@dataclass(frozen=True)
class InstanceFiles:
    """A files folder only this process uses, and the lock that says it is alive.

    The cache in :func:`instance_files` keeps this object, and so the lock, for
    the life of the process.
    """

    path: Path
    lock: FileLock


@cache
def instance_files(root: Path) -> InstanceFiles:
    """This process's folder under ``root``, made once (a ``-w`` reload keeps it).

    Folders of processes that died without Chainlit's shutdown are removed first.
    The lock is taken before the folder exists, so a start that sweeps at the
    same moment never removes a folder in use.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        sweep_abandoned(root)
        while True:
            name = f"{os.getpid()}-{secrets.token_hex(4)}"
            lock = FileLock(root / f"{name}.lock", timeout=0)
            try:
                lock.acquire()
            except Timeout:
                continue  # a sweep holds this new name's lock for a moment; take another
            path = root / name
            path.mkdir()
            return InstanceFiles(path=path, lock=lock)
    except OSError as exc:
        raise ChatServerUnguarded(
            f"Cannot create the chat's files folder in {root} ({exc.strerror or exc}): "
            "set RAG_DATA_DIR to a folder this user can write."
        ) from None


def sweep_abandoned(root: Path) -> list[Path]:
    """Remove the folders under ``root`` whose instance is gone; returns what was removed.

    An instance holds ``<name>.lock`` for as long as it runs (the OS drops the lock
    when it dies, even by SIGKILL), so a lock that can be taken marks a folder nobody uses.
    """
    removed = []
    for lock_path in sorted(root.glob("*.lock")):
        lock = FileLock(lock_path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            continue  # its instance is running
        try:
            folder = lock_path.with_suffix("")
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            lock_path.unlink(missing_ok=True)
        finally:
            lock.release()
    return removed


def use_own_files_dir(settings: Settings) -> Path:
    """Point Chainlit's session files at this instance's folder under ``DATA_DIR/chat-files``.

    Chainlit reads ``chainlit.config.FILES_DIRECTORY`` whenever a session stores a
    file, and ``chainlit.server.FILES_DIRECTORY`` (its own copy) when it deletes the
    folder at shutdown; both must name the new folder.
    """
    # Imported here, not at the top: importing chainlit.server builds Chainlit's app.
    import chainlit.config
    import chainlit.server

    files = instance_files((settings.data_dir / FILES_FOLDER).resolve())
    for module in (chainlit.config, chainlit.server):
        if not hasattr(module, "FILES_DIRECTORY"):
            raise ChatServerUnguarded(
                f"{module.__name__}.FILES_DIRECTORY is gone, so two chats from one folder would "
                "delete each other's files: install the Chainlit version requirements.txt pins."
            )
        module.FILES_DIRECTORY = files.path
    return files.path


def own_files_dir_at_start(server: Starlette, settings: Settings) -> None:
    """Run :func:`use_own_files_dir` when ``server`` starts, ahead of Chainlit's own start-up.

    At start, not at import: tests and shells import app.py without serving, and
    only a serving process deletes its folder when it stops. (Chainlit's start-up
    ends the process at shutdown, so nothing can run after it; its own cleanup
    deletes the folder.)
    """
    chainlit_lifespan = server.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        use_own_files_dir(settings)
        async with chainlit_lifespan(app) as state:
            yield state

    server.router.lifespan_context = lifespan


def guard_chat_server(server: Starlette, settings: Settings) -> None:
    """Everything this module does to Chainlit's server, for app.py's one call at import.

    Keeps foreign pages off the chat socket (:func:`guard_chat_socket`) and off its
    other HTTP routes (:func:`guard_http_routes`), and gives this instance its own
    files folder once it starts (:func:`own_files_dir_at_start`).
    """
    from chainlit.server import SOCKET_IO_PATH

    guard_chat_socket(server, SOCKET_IO_PATH, settings)
    guard_http_routes(server, settings)
    own_files_dir_at_start(server, settings)
