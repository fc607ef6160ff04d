"""The ingested file names for the composer's ``@`` completion (``GET /file-names``).

Chainlit 2.12's message composer completes ``/commands`` only, so the chat page
loads ``public/file_mentions.js`` (``custom_js`` in ``.chainlit/config.toml``): typing
``@`` in the composer opens a list of the ingested files, filtered as you type, and
the chosen one is inserted as a mention (``@policies/expenses.txt``, quoted when it
holds a space). The script asks this route each time a list opens, so files added
by an upload or by the docs folder watch are offered at once, and removed ones go.

The names say what the knowledge base holds, so the route follows the ``/search``
data routes: the chat's rule on who may connect (:func:`rag.web.socket_guard.refusal`),
and beyond loopback a signed-in user (:func:`rag.web.search_page.signed_in`).

>>> mount_file_names(chainlit.server.app, settings)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, PlainTextResponse, Response

from rag.errors import NoDocuments
from rag.mentions import EVERY_FILE
from rag.retrieve import get_retriever
from rag.settings import Settings
from rag.web.chat_text import mention_name
from rag.web.front_routes import put_first
from rag.web.search_page import SIGN_IN_FIRST, signed_in
from rag.web.socket_guard import Caller, refusal

ROUTE = "/file-names"


def file_names(settings: Settings) -> dict[str, Any]:
    """What the completion offers: each ingested file with how to mention it, and the word
    that goes back to every file. No files yet is an empty list, not an error."""
    try:
        sources = get_retriever(settings).sources()
    except NoDocuments:
        sources = ()
    return {
        "files": [{"source": s, "mention": f"@{mention_name(s)}"} for s in sources],
        "every_file": f"@{EVERY_FILE}",
    }


def create_file_names_router(settings: Settings) -> APIRouter:
    """``GET /file-names`` as a router (mount it with :func:`mount_file_names`)."""
    router = APIRouter()

    @router.get(ROUTE)
    async def names(request: Request) -> Response:
        if (refused := refusal(Caller.from_scope(request.scope), settings)) is not None:
            return PlainTextResponse(refused.sentence(), status_code=403)
        if not await signed_in(request, settings):
            return PlainTextResponse(SIGN_IN_FIRST, status_code=401)
        # The BM25 index is SQLite: a few ms, off the event loop all the same.
        body = await run_in_threadpool(file_names, settings)
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return router


def mount_file_names(app: FastAPI, settings: Settings) -> None:
    """Add ``GET /file-names`` to the *front* of ``app``'s routes (Chainlit's server app).

    Chainlit answers every other GET with its web app, so the route goes ahead of
    that catch-all; a reload replaces it instead of adding a second copy.
    """
    put_first(app, create_file_names_router(settings), "rag_file_name_routes")
