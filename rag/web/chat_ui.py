"""The chat's Chainlit pieces that the handlers in ``app.py`` call.

Each function turns the library's values into what Chainlit shows: the collapsed
search step, the sources sidebar (cited passages, a PDF at its page), the compare
columns, the model picker and the upload report. The handlers stay a script of
the conversation; the library underneath (``rag``, ``ingest``) knows no Chainlit.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.ocr import IMAGE_SUFFIXES
from ingest.uploads import add_uploads as ingest_uploads
from rag.answer import AnswerDone, AnswerStart, question_scope, search_query
from rag.catalog import Offer, model_catalog
from rag.compare import ModelDelta, compare_stream
from rag.llm import Message
from rag.mentions import Scope, whole_document_files
from rag.prompt import source_label
from rag.retrieve import Hit, get_retriever, retrieve
from rag.settings import Settings
from rag.summarize import Progress
from rag.web.chat_text import files_list, highlighted, hits_table, scope_note, search_name
from rag.web.compare_board import CompareBoard

# Chainlit is imported where it is used: importing this module (from a shell, a test, the
# API) must not load Chainlit and its configuration.
if TYPE_CHECKING:
    import chainlit as cl

PANEL_REFRESH_S = 0.1
SOURCES_TITLE = "Sources of the last answer"
# A dropped file waits this long for another writer (the docs folder watch) before failing.
UPLOAD_LOCK_WAIT_S = 120.0


async def compare_models(models: list[str], question: str, settings: Settings) -> None:
    """``/compare A B question``: the models answer from the same passages in columns side by
    side (public/elements/Compare.jsx), each with its timings."""
    import chainlit as cl

    hits = await search_step(question, settings)
    board = CompareBoard(models)
    panel = cl.CustomElement(name="Compare", props=board.props(), display="inline")
    names = " and ".join(f"`{m}`" for m in models)
    msg = cl.Message(content=f"Comparing {names} on the same passages.", elements=[panel])
    await msg.send()
    shown = 0.0
    history = cl.user_session.get("history") or []
    async for event in compare_stream(question, models, settings, history=history, hits=hits):
        # Ten repaints a second look live; one per token would flood the websocket.
        changed = board.apply(event) is not None
        if changed and (
            not isinstance(event, ModelDelta) or time.monotonic() - shown > PANEL_REFRESH_S
        ):
            panel.props = board.props()
            await panel.update()
            shown = time.monotonic()
    panel.props = board.props()
    await panel.update()
    msg.content += "\n\n**Sources (the same for every model):** " + " · ".join(
        f"[{n}] {source_label(h)}" for n, h in enumerate(hits, start=1)
    )
    await msg.update()
    await show_sources(passage_elements(hits), SOURCES_TITLE, msg.id)


async def search_step(question: str, settings: Settings, scope: Scope | None = None) -> list[Hit]:
    """Retrieve the passages inside a collapsed step that lists them; with a ``scope`` that
    names files, only from those, and the step says so (in its name, seen collapsed)."""
    import chainlit as cl

    sources = scope.sources if scope else ()
    async with cl.Step(name=search_name(scope), type="retrieval", default_open=False) as step:
        step.input = question
        # Embedding and Chroma block for a few ms; keep the event loop free. NoDocuments
        # propagates: the step shows its sentence and on_message says how to add files.
        hits = await asyncio.to_thread(retrieve, question, settings=settings, sources=sources)
        note = scope_note(scope) if scope else ""
        step.output = f"{note}\n\n{hits_table(hits)}" if note else hits_table(hits)
    return hits


async def scoped_search(
    question: str, history: Sequence[Message], settings: Settings
) -> list[Hit] | None:
    """The search step for ``question``, limited to the files it mentions with ``@``, or to
    those an earlier question mentioned (a follow-up keeps the scope until ``@all``).

    None, with no search shown, when the answer needs none: a mentioned name that is
    not ingested (the answer names close ones), a bare ``@all``, or a task over whole
    files, which reads all their chunks (:class:`ReadingStep` shows its progress).
    """
    scope = await asyncio.to_thread(question_scope, question, settings, None, history)
    if scope.unknown or whole_document_files(scope) or not scope.question:
        return None
    return await search_step(search_query(scope.question, history), settings, scope)


class ReadingStep:
    """The progress of a whole-document task as one step that says how far it is
    ("reading part 3 of 7"); pass it as ``answer(..., on_progress=ReadingStep())``."""

    def __init__(self) -> None:
        self._step: cl.Step | None = None

    async def __call__(self, progress: Progress) -> None:
        import chainlit as cl

        if self._step is None:
            self._step = cl.Step(name="reading the documents", type="tool", default_open=True)
            self._step.output = progress.what
            await self._step.send()
            return
        self._step.output = progress.what
        await self._step.update()


async def list_files(settings: Settings) -> None:
    """``/files``: the ingested files, and how to ask about one."""
    import chainlit as cl

    sources = await asyncio.to_thread(get_retriever(settings).sources)
    await cl.Message(content=files_list(sources)).send()


def source_elements(
    start: AnswerStart, done: AnswerDone, settings: Settings
) -> tuple[list[cl.Element], str]:
    """The sidebar for an answer: its cited passages with the supporting sentences in bold,
    and a PDF opened at the cited page (an image shown); or the closest matches when nothing
    was covered."""
    import chainlit as cl

    if done.refused:
        return passage_elements(start.hits), "Closest matches (not sources)"
    elements: list[cl.Element] = []
    for citation in done.sources:
        hit, label = citation.hit, f"[{citation.number}] {source_label(citation.hit)}"
        body = highlighted(hit.text, done.text, settings.support_min)
        elements.append(cl.Text(name=label, content=f"**{label}**\n\n{body}"))
        pdf = settings.docs_dir / hit.source
        if hit.page is not None and pdf.suffix.lower() == ".pdf" and pdf.is_file():
            elements.append(
                cl.Pdf(name=f"{label} (PDF)", path=str(pdf), page=hit.page, display="side")
            )
        elif pdf.suffix.lower() in IMAGE_SUFFIXES and pdf.is_file():
            # The picture beside its OCR'd text, so a misread word can be checked.
            elements.append(cl.Image(name=f"{label} (image)", path=str(pdf), display="side"))
    return elements, SOURCES_TITLE


def passage_elements(hits: Sequence[Hit]) -> list[cl.Element]:
    """Retrieved passages as sidebar texts, numbered as in the prompt."""
    import chainlit as cl

    return [
        cl.Text(name=f"[{n}] {source_label(h)}", content=f"**[{n}] {source_label(h)}**\n\n{h.text}")
        for n, h in enumerate(hits, start=1)
    ]


async def show_sources(elements: list[cl.Element], title: str, answer_id: str) -> None:
    """Show an answer's passages in the sidebar beside the chat.

    The sidebar's elements are *replaced* per answer (keyed by its id): side elements
    attached to messages pile up duplicates across turns, and inline ones print every
    full passage into the conversation. The answer itself keeps the file/page line.
    """
    import chainlit as cl

    await cl.ElementSidebar.set_elements(elements, key=answer_id)
    if elements:
        # After the elements: a title set first is dropped when the new elements arrive.
        await cl.ElementSidebar.set_title(title)


async def add_uploads(elements: Sequence[cl.File], settings: Settings) -> None:
    """Save dropped files into the docs folder, ingest them, and report in one message."""
    import chainlit as cl

    names = ", ".join(el.name for el in elements)
    progress = cl.Message(content=f"Adding {names} to the knowledge base…")
    await progress.send()
    files = [(Path(str(el.path)), el.name) for el in elements]
    # The docs folder watch may be ingesting (this very drop, or a copy): wait for its turn.
    wait = max(settings.lock_timeout_s, UPLOAD_LOCK_WAIT_S)
    patient = settings.with_overrides(lock_timeout_s=wait)
    # Hashing, copying and ingesting would stall every chat on the event loop.
    outcome = await asyncio.to_thread(ingest_uploads, files, patient)
    progress.content = outcome.text
    await progress.update()


async def offer_models(offer: Offer) -> None:
    """Show the model picker; a model the user already picked stays picked while offered."""
    import chainlit as cl
    from chainlit.input_widget import Select

    current = cl.user_session.get("model")
    model = current if current in offer.models else offer.default
    cl.user_session.set("models", offer.models)
    cl.user_session.set("model", model)
    cl.user_session.set("local_found", offer.local is not None)
    if offer.models:
        index = offer.models.index(model) if model in offer.models else 0
        await cl.ChatSettings(
            [Select(id="model", label="Model", values=offer.models, initial_index=index)]
        ).send()


async def refresh_models(settings: Settings) -> None:
    """No local server answered when the chat began: look again, and offer its models if found."""
    import chainlit as cl

    if not cl.user_session.get("local_found"):
        offer = await model_catalog(settings).offer()
        if offer.local is not None or not cl.user_session.get("models"):
            await offer_models(offer)


def remember_turn(history: list[Message], question: str, text: str) -> None:
    import chainlit as cl

    history.append({"role": "user", "content": question})
    history.append({"role": "assistant", "content": text})
    cl.user_session.set("history", history)


def apply_upload_limit(settings: Settings) -> None:
    """Give the browser's file picker the limit of RAG_UPLOAD_MAX_MB (the one place it is set).

    Chainlit reads ``max_size_mb`` (whole MB) from its config on every page load;
    save_upload checks the exact limit again on the server.
    """
    from chainlit.config import config as chainlit_config

    upload = chainlit_config.features.spontaneous_file_upload
    if upload is not None:
        upload.max_size_mb = max(1, math.ceil(settings.upload_max_mb))
