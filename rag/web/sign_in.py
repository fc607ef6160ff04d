"""Who is using the chat: the person at this machine, or a user who signed in with a password.

History needs a signed-in user (Chainlit keeps each user's chats apart by it), yet
``make chat`` must stay one command. So the sign-in depends on where the app listens:

- **Loopback** (``--host 127.0.0.1``, the default): Chainlit's header sign-in, which
  the page calls by itself, signs in the user ``local`` without a password, but only
  for a request whose peer address is this machine and whose ``Host``/``Origin``
  pass the chat socket's :func:`~rag.web.socket_guard.refusal` (so a DNS-rebinding
  page gets no session and cannot read the history routes).
- **Beyond loopback** (``--host 0.0.0.0``), or with ``RAG_TRUST_LOOPBACK=false``
  (behind a reverse proxy every request comes from loopback): password sign-in
  against ``python -m rag.users``. With no user and no ``RAG_API_KEY`` such an app
  refuses to start.

Sessions are signed with ``CHAINLIT_AUTH_SECRET``; unless the environment sets it,
one is generated on first start into ``DATA_DIR/auth-secret`` (owner-only).

>>> sign_in_mode(Settings(CHAINLIT_HOST="0.0.0.0"))   # doctest: +SKIP
<SignIn.PASSWORD: 'password'>
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import secrets
import stat
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from rag.errors import RagError
from rag.hosts import is_loopback_host
from rag.settings import Settings
from rag.users import check_password, list_users
from rag.web.socket_guard import Caller, refusal

if TYPE_CHECKING:
    from chainlit.user import User

log = logging.getLogger(__name__)

SECRET_FILE = "auth-secret"  # under DATA_DIR
LOCAL_USER = "local"
HEADER_SIGN_IN_PATH = "/auth/header"
_peer: contextvars.ContextVar[str | None] = contextvars.ContextVar("rag_sign_in_peer", default=None)


class SignInMissing(RagError):
    """The app would serve the network with nobody able (or required) to sign in."""


class SignIn(Enum):
    """How people sign in to this app."""

    LOOPBACK = "loopback"  # the person at the machine, no password
    PASSWORD = "password"  # users of python -m rag.users


def sign_in_mode(settings: Settings) -> SignIn:
    """Password sign-in beyond loopback or when loopback is not trusted; else loopback sign-in."""
    if is_loopback_host(settings.bind_host.strip("[]")) and settings.trust_loopback:
        return SignIn.LOOPBACK
    return SignIn.PASSWORD


def check_can_start(settings: Settings) -> None:
    """Refuse an app bound beyond loopback that has no user and no ``RAG_API_KEY``."""
    if is_loopback_host(settings.bind_host.strip("[]")):
        if sign_in_mode(settings) is SignIn.PASSWORD and not list_users(settings):
            log.warning("RAG_TRUST_LOOPBACK=false and no user: add one with python -m rag.users add NAME")
        return
    if not list_users(settings) and settings.api_key is None:
        raise SignInMissing(
            f"The chat listens on {settings.bind_host}, beyond this machine, and nobody could "
            "sign in: add a user with `python -m rag.users add NAME` (or set RAG_API_KEY for "
            "the API), then start it again; or serve on 127.0.0.1."
        )


# --- the session secret ------------------------------------------------------------------------


def ensure_auth_secret(settings: Settings) -> str:
    """The secret that signs sessions: ``CHAINLIT_AUTH_SECRET``, or the one kept in the data folder.

    Chainlit reads the secret from the environment only, so a generated one is put there.
    """
    secret = settings.auth_secret or _secret_from_file(settings.data_dir / SECRET_FILE)
    os.environ["CHAINLIT_AUTH_SECRET"] = secret
    return secret


def _secret_from_file(path: Path) -> str:
    """Read the secret at ``path``, creating it (owner-only, 0600) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)  # a copy made with a wider mode would let others forge sessions
        secret = path.read_text(encoding="ascii").strip()
        if secret:
            return secret
        path.unlink()
        return _secret_from_file(path)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        secret = secrets.token_urlsafe(48)
        out.write(secret + "\n")
    return secret


# --- the two ways in ----------------------------------------------------------------------------


def loopback_user(headers: Headers, settings: Settings) -> User | None:
    """The local user for a header sign-in from this machine's own pages; None otherwise."""
    from chainlit.user import User

    caller = Caller(origins=tuple(headers.getlist("origin")), hosts=tuple(headers.getlist("host")))
    refused = refusal(caller, settings)
    if refused is not None:
        log.warning("Refused a sign-in: %s", refused.sentence())
        return None
    if sign_in_mode(settings) is not SignIn.LOOPBACK or not is_loopback_host(_peer.get()):
        return None
    return User(identifier=LOCAL_USER, display_name="You", metadata={"provider": "loopback"})


async def password_user(name: str, password: str, settings: Settings) -> User | None:
    """The user ``name`` when ``password`` is theirs; None otherwise."""
    from chainlit.user import User

    # bcrypt takes ~0.2 s on purpose; the event loop keeps serving other chats meanwhile.
    if not await asyncio.to_thread(check_password, settings, name, password):
        log.info("A password sign-in as %r failed", name)
        return None
    return User(identifier=name, metadata={"provider": "password"})


class PeerRecorder:
    """ASGI middleware that makes the peer address of a header sign-in visible to its callback.

    Chainlit passes the header callback the request headers only; the peer address
    (which a client cannot forge, unlike headers) travels in a context variable.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != HEADER_SIGN_IN_PATH:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        token = _peer.set(client[0] if client else None)
        try:
            await self.app(scope, receive, send)
        finally:
            _peer.reset(token)


def record_peer(server: Starlette) -> None:
    """Put :class:`PeerRecorder` in front of Chainlit's app (before it serves; once)."""
    if not any(m.cls is PeerRecorder for m in server.user_middleware):
        server.add_middleware(PeerRecorder)


def set_up_sign_in(server: Starlette, settings: Settings) -> SignIn:
    """Everything sign-in needs before the app serves: the start check, the secret, the peer.

    Returns the sign-in mode, for app.py to register the matching Chainlit callback.
    """
    check_can_start(settings)
    ensure_auth_secret(settings)
    record_peer(server)
    return sign_in_mode(settings)

