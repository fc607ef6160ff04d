"""What the chat server gets beyond Chainlit's own routes, set up once at start.

:func:`extend_chat_server` is called by ``app.py`` when Chainlit loads it: the
upload limit, the OpenAI-compatible API, the ownership check on ratings, the
in-browser search page, the file names that the composer's ``@`` completion offers,
the guard on every route and the chat socket, and the docs folder watch.
"""

from __future__ import annotations

from fastapi import FastAPI

from rag.settings import Settings
from rag.web.chat_ui import apply_upload_limit
from rag.web.feedback_owner import guard_feedback
from rag.web.file_names import mount_file_names
from rag.web.folder_watch import watch_docs_folder
from rag.web.http_api import mount_openai_api
from rag.web.search_page import mount_search_page
from rag.web.socket_guard import guard_chat_server


def extend_chat_server(app: FastAPI, settings: Settings) -> None:
    """Add our routes, guards and the docs folder watch to Chainlit's server ``app``."""
    apply_upload_limit(settings)
    # Open WebUI and any OpenAI client chat with the documents at http://127.0.0.1:8000/v1.
    mount_openai_api(app, settings)
    guard_feedback(app)
    # The search page at /search embeds questions in the browser (ONNX Runtime Web).
    mount_search_page(app, settings)
    # Typing "@" in the composer lists the ingested files (public/file_mentions.js).
    mount_file_names(app, settings)
    # Only this machine's pages (and RAG_ALLOWED_*) reach any route and the chat socket.
    guard_chat_server(app, settings)
    # Changes under the docs folder are ingested by themselves; open chats are told (RAG_WATCH).
    watch_docs_folder(settings)
