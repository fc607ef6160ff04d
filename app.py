"""Local RAG Chat: the Chainlit app (`chainlit run app.py`).

The handlers below read like the conversation: greet and offer the models, take
dropped files into the knowledge base, answer with sources. The work lives in
``rag/`` (the model catalog, retrieval, the answer pipeline), ``rag/web/`` (the
chat's wording, the compare board, the HTTP API) and ``ingest/``; this file only
turns their events and error sentences into chat messages.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import chainlit as cl
from chainlit.config import config as chainlit_config
from chainlit.input_widget import Select
from chainlit.server import app as chainlit_server
from starlette.datastructures import Headers

from ingest.uploads import add_uploads as ingest_uploads
from rag.answer import AnswerDelta, AnswerDone, AnswerStart, answer, search_query
from rag.catalog import Offer, model_catalog
from rag.compare import ModelDelta, compare_stream
from rag.errors import NoDocuments, RagError, StreamInterrupted
from rag.llm import Message
from rag.prompt import source_label
from rag.retrieve import Hit, retrieve
from rag.settings import Settings, get_settings
from rag.web.chat_text import (
    answer_text,
    highlighted,
    hits_table,
    interrupted,
    opening,
    switched,
)
from rag.web.compare_board import CompareBoard, parse_compare_command
from rag.web.history import AnswerRecord, data_layer, history_notice, keep_model, resumed_chat
from rag.web.http_api import mount_openai_api
from rag.web.sign_in import SignIn, loopback_user, password_user, set_up_sign_in
from rag.web.socket_guard import guard_chat_server

log = logging.getLogger("local_rag_chat")
PANEL_REFRESH_S = 0.1
SOURCES_TITLE = "Sources of the last answer"

COMPARE_COMMAND = {
    "id": "compare",
    "icon": "columns-2",
    "description": "Two models, same passages: compare MODEL_A MODEL_B your question",
    "button": False,
    "persistent": False,
}


# --- the conversation ---------------------------------------------------------------


@cl.on_chat_start
async def on_chat_start() -> None:
    """Offer the models in the settings, and say what to do."""
    settings = get_settings()
    cl.user_session.set("history", [])
    offer = await model_catalog(settings).offer()
    await offer_models(offer)
    await cl.context.emitter.set_commands([COMPARE_COMMAND])
    await cl.Message(content=opening(settings, offer)).send()
    if notice := history_notice(settings):
        await cl.Message(content=notice).send()


@cl.on_chat_resume
async def on_chat_resume(thread: dict) -> None:
    """Open a past chat: its conversation and model come back, and the picker is offered again."""
    chat = resumed_chat(thread)
    cl.user_session.set("history", chat.history)
    cl.user_session.set("model", chat.model)
    await offer_models(await model_catalog(get_settings()).offer())
    await cl.context.emitter.set_commands([COMPARE_COMMAND])


@cl.on_settings_update
async def on_settings_update(values: dict[str, object]) -> None:
    """Switch the model for this chat; the history stays and the next answer uses it."""
    model = values.get("model")
    if model in (cl.user_session.get("models") or []) and model != cl.user_session.get("model"):
        cl.user_session.set("model", model)
        await cl.Message(content=switched(str(model))).send()
        if cl.user_session.get("history"):
            await keep_model(get_settings(), cl.context.session.thread_id, str(model))


@cl.on_message
async def on_message(message: cl.Message) -> None:
    """Add dropped files to the knowledge base, then answer (or compare models on) the question."""
    settings = get_settings()
    try:
        uploads = [el for el in message.elements if getattr(el, "path", None)]
        if uploads:
            await add_uploads(uploads, settings)
        text = message.content.strip()
        # Picked from the command menu, the command arrives apart from its text.
        command = f"/compare {text}" if message.command == "compare" else text
        comparison = parse_compare_command(command)
        if comparison is not None:
            await compare_models(*comparison, settings)
        elif text:
            await reply(text, settings)
    except NoDocuments as exc:
        await cl.Message(content=f"**The knowledge base is empty.** {exc}").send()
    except RagError as exc:
        await cl.Message(content=str(exc)).send()
    except Exception:  # noqa: BLE001 - the chat shows a sentence, the log keeps the traceback
        log.exception("unexpected error while handling a message")
        await cl.Message(
            content="Something went wrong while answering. The details are in the server log; "
            "please try again."
        ).send()


# --- answering ------------------------------------------------------------------------


async def reply(question: str, settings: Settings) -> None:
    """Search, then stream the answer with its sources; a broken stream keeps its partial text."""
    await refresh_models(settings)
    history: list[Message] = cl.user_session.get("history") or []
    hits = await search_step(search_query(question, history), settings)
    msg = cl.Message(content="")
    start: AnswerStart | None = None
    done: AnswerDone | None = None
    model = cl.user_session.get("model") or None
    try:
        async for event in answer(question, settings, model=model, history=history, hits=hits):
            if isinstance(event, AnswerStart):
                start = event
            elif isinstance(event, AnswerDelta):
                await msg.stream_token(event.text)
            else:
                done = event
    except StreamInterrupted as exc:
        msg.content = interrupted(exc.partial, str(exc))
        msg.metadata = AnswerRecord(question, exc.partial, model).metadata()
        await msg.send()
        await show_sources(passage_elements(start.hits if start else []), SOURCES_TITLE, msg.id)
        remember_turn(history, question, exc.partial)
        return
    assert start is not None and done is not None
    msg.content = answer_text(start, done)
    labels = tuple(f"[{c.number}] {source_label(c.hit)}" for c in done.sources)
    msg.metadata = AnswerRecord(question, done.text, model, labels).metadata()
    await msg.send()
    await show_sources(*source_elements(start, done, settings), msg.id)
    remember_turn(history, question, done.text)
    await keep_model(settings, cl.context.session.thread_id, model)


async def compare_models(models: list[str], question: str, settings: Settings) -> None:
    """``/compare A B question``: the models answer from the same passages in columns side by
    side (public/elements/Compare.jsx), each with its timings."""
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
        if changed and (not isinstance(event, ModelDelta) or time.monotonic() - shown > PANEL_REFRESH_S):
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


async def search_step(question: str, settings: Settings) -> list[Hit]:
    """Retrieve the passages inside a collapsed step that lists them."""
    async with cl.Step(name="document search", type="retrieval", default_open=False) as step:
        step.input = question
        # Embedding and Chroma block for a few ms; keep the event loop free. NoDocuments
        # propagates: the step shows its sentence and on_message says how to add files.
        hits = await asyncio.to_thread(retrieve, question, settings=settings)
        step.output = hits_table(hits)
    return hits


def source_elements(
    start: AnswerStart, done: AnswerDone, settings: Settings
) -> tuple[list[cl.Element], str]:
    """The sidebar for an answer: its cited passages with the supporting sentences in bold,
    and a PDF opened at the cited page; or the closest matches when nothing was covered."""
    if done.refused:
        return passage_elements(start.hits), "Closest matches (not sources)"
    elements: list[cl.Element] = []
    for citation in done.sources:
        hit, label = citation.hit, f"[{citation.number}] {source_label(citation.hit)}"
        body = highlighted(hit.text, done.text, settings.support_min)
        elements.append(cl.Text(name=label, content=f"**{label}**\n\n{body}"))
        pdf = settings.docs_dir / hit.source
        if hit.page is not None and pdf.suffix.lower() == ".pdf" and pdf.is_file():
            elements.append(cl.Pdf(name=f"{label} (PDF)", path=str(pdf), page=hit.page, display="side"))
    return elements, SOURCES_TITLE


def passage_elements(hits: Sequence[Hit]) -> list[cl.Element]:
    """Retrieved passages as sidebar texts, numbered as in the prompt."""
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
    await cl.ElementSidebar.set_elements(elements, key=answer_id)
    if elements:
        # After the elements: a title set first is dropped when the new elements arrive.
        await cl.ElementSidebar.set_title(title)


# --- uploads ----------------------------------------------------------------------------


async def add_uploads(elements: Sequence[cl.File], settings: Settings) -> None:
    """Save dropped files into the docs folder, ingest them, and report in one message."""
    names = ", ".join(el.name for el in elements)
    progress = cl.Message(content=f"Adding {names} to the knowledge base…")
    await progress.send()
    files = [(Path(str(el.path)), el.name) for el in elements]
    # Hashing, copying and ingesting would stall every chat on the event loop.
    outcome = await asyncio.to_thread(ingest_uploads, files, settings)
    progress.content = outcome.text
    await progress.update()


# --- session state -----------------------------------------------------------------------


async def offer_models(offer: Offer) -> None:
    """Show the model picker; a model the user already picked stays picked while offered."""
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
    if not cl.user_session.get("local_found"):
        offer = await model_catalog(settings).offer()
        if offer.local is not None or not cl.user_session.get("models"):
            await offer_models(offer)


def remember_turn(history: list[Message], question: str, text: str) -> None:
    history.append({"role": "user", "content": question})
    history.append({"role": "assistant", "content": text})
    cl.user_session.set("history", history)


def apply_upload_limit(settings: Settings) -> None:
    """Give the browser's file picker the limit of RAG_UPLOAD_MAX_MB (the one place it is set).

    Chainlit reads ``max_size_mb`` (whole MB) from its config on every page load;
    save_upload checks the exact limit again on the server.
    """
    upload = chainlit_config.features.spontaneous_file_upload
    if upload is not None:
        upload.max_size_mb = max(1, math.ceil(settings.upload_max_mb))


# --- history and sign-in ------------------------------------------------------------------------
# Beyond loopback with nobody able to sign in, this raises and the app does not start.
SIGN_IN = set_up_sign_in(chainlit_server, get_settings())


@cl.data_layer
def history_store() -> object:
    """Chats, answers and feedback in DATA_DIR/history.db; None when history is off this run."""
    return data_layer(get_settings())


if SIGN_IN is SignIn.LOOPBACK:

    @cl.header_auth_callback
    async def sign_in_here(headers: Headers) -> cl.User | None:
        """The person at this machine is signed in without a password."""
        return loopback_user(headers, get_settings())

else:

    @cl.password_auth_callback
    async def sign_in_with_password(name: str, password: str) -> cl.User | None:
        """Beyond loopback, users of `python -m rag.users` sign in with their password."""
        return await password_user(name, password, get_settings())


# --- at import: Chainlit loads this file once per server start -------------------------------
apply_upload_limit(get_settings())
# Open WebUI and any OpenAI client chat with the documents at http://127.0.0.1:8000/v1.
mount_openai_api(chainlit_server, get_settings())
# Only this machine's pages (and RAG_ALLOWED_*) reach the chat socket; own files folder.
guard_chat_server(chainlit_server, get_settings())
