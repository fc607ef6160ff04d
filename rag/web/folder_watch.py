"""The watched docs folder in the chat app: it starts and stops with the app, and tells every chat.

:func:`watch_docs_folder` registers Chainlit's app start and stop hooks around
:func:`ingest.watch.watch_docs`, which runs as a task on the app's event loop
(its ingests run in a worker thread). After an ingest that changed something,
every open chat gets one short message (``Your documents changed: 2 files added,
1 updated.``). ``RAG_WATCH=0`` registers nothing.

Chainlit has no broadcast to its chats; it keeps its open websocket sessions in
``chainlit.session.ws_sessions_id``, and a message is sent to one of them by
giving a task that session's context, as Chainlit does for each incoming event.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ingest.watch import FolderSynced, watch_docs
from rag.settings import Settings
from rag.web.chat_text import folder_notice

# Chainlit is imported where it is used, so importing this module does not load it.
if TYPE_CHECKING:
    from chainlit.session import WebsocketSession

log = logging.getLogger(__name__)

# Stopping waits this long for an ingest in progress; a kill mid-ingest is repaired anyway.
STOP_WAIT_S = 10.0


class FolderWatch:
    """The one watcher task of this app process, started and stopped by the app's hooks."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.stop_event: asyncio.Event | None = None

    def start(self, settings: Settings) -> None:
        """Start watching ``settings.docs_dir`` on the running loop (once per process)."""
        if self.task is not None and not self.task.done():
            return
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(
            watch_docs(settings, announce, stop_event=self.stop_event), name="docs folder watch"
        )
        log.info("Watching %s: changes there are ingested by themselves.", settings.docs_dir)

    async def stop(self) -> None:
        """Stop watching; an ingest in progress may finish for up to :data:`STOP_WAIT_S`."""
        if self.task is None or self.stop_event is None:
            return
        self.stop_event.set()
        try:
            await asyncio.wait_for(self.task, timeout=STOP_WAIT_S)
        except (TimeoutError, asyncio.CancelledError):
            pass  # the next start's ingest repairs whatever this one left
        except Exception:  # noqa: BLE001 - stopping must not stop the app's own shutdown
            log.exception("the docs folder watch ended with an error")
        self.task = None


# Module-level, so that a reload of app.py (chainlit run -w) finds the running watcher.
WATCH = FolderWatch()


def watch_docs_folder(settings: Settings) -> None:
    """Watch the docs folder from app start to app stop; nothing when ``RAG_WATCH=0``."""
    import chainlit as cl

    if not settings.watch:
        return

    @cl.on_app_startup
    async def start_watching() -> None:
        WATCH.start(settings)

    @cl.on_app_shutdown
    async def stop_watching() -> None:
        await WATCH.stop()


async def announce(synced: FolderSynced) -> None:
    """Send the notice of ``synced`` to every open chat of this app."""
    from chainlit.session import ws_sessions_id

    text = folder_notice(synced.summary())
    log.info("Docs folder ingested: %s", synced.report.summary())
    # gather runs each send in a task of its own, so each sets the Chainlit context of its
    # own session only; a list, because sessions come and go while the sends run.
    await asyncio.gather(*(_tell(session, text) for session in list(ws_sessions_id.values())))


async def _tell(session: WebsocketSession, text: str) -> None:
    """Send ``text`` as an assistant message in ``session``'s chat."""
    import chainlit as cl
    from chainlit.context import init_ws_context

    try:
        init_ws_context(session)
        await cl.Message(content=text).send()
    except Exception:  # noqa: BLE001 - a chat that went away must not cost the others
        log.warning("could not tell the chat %s about the changed documents", session.id)
