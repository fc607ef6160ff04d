"""Local RAG Chat: the Chainlit app (`chainlit run app.py`).

The handlers below read like the conversation: greet and offer the models, take
dropped files into the knowledge base, answer with sources. The work lives in
``rag/`` (discovery, retrieval, prompt, answer pipeline, uploads) and ``ingest/``;
this file only turns its events and error sentences into chat messages.
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

from ingest.pipeline import IngestReport, ingest
from rag.answer import AnswerDelta, AnswerDone, AnswerStart, answer, choose_model
from rag.chat_text import footer, hits_table, upload_summary, welcome
from rag.compare import (
    CompareBoard,
    ModelDelta,
    compare_stream,
    parse_compare_command,
)
from rag.discovery import forget_endpoint, local_endpoint
from rag.errors import EndpointUnavailable, NoDocuments, RagError, StreamInterrupted
from rag.llm import Endpoint, Message, list_models
from rag.openai_api import mount_openai_api
from rag.prompt import source_label
from rag.retrieve import Hit, retrieve
from rag.routing import routed_models
from rag.settings import Settings, get_settings
from rag.uploads import SavedUpload, save_upload
from rag.web.socket_guard import guard_chat_server

log = logging.getLogger("local_rag_chat")
PANEL_REFRESH_S = 0.1

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
    """Find the model server, offer its models in the settings, and say what to do."""
    settings = get_settings()
    cl.user_session.set("history", [])
    try:
        endpoint = await local_endpoint(settings)
        models = await list_models(endpoint, settings)
    except RagError as exc:
        note = f"**No local model server yet.** {exc}"
        if fallback := routed_models(settings):
            # Routing may still answer through the configured fallback.
            await offer_models(None, fallback, settings)
            await cl.context.emitter.set_commands([COMPARE_COMMAND])
            note += f"\n\nUntil one runs, answers come from `{fallback[0]}`."
        await cl.Message(content=f"{welcome(settings)}\n\n{note}").send()
        return
    model = await offer_models(endpoint, models, settings)
    await cl.context.emitter.set_commands([COMPARE_COMMAND])
    await cl.Message(content=welcome(settings, endpoint, model)).send()


@cl.on_settings_update
async def on_settings_update(values: dict[str, object]) -> None:
    """Switch the model for this chat; the history stays and the next answer uses it."""
    model = values.get("model")
    offered = cl.user_session.get("models") or []
    if model in offered and model != cl.user_session.get("model"):
        cl.user_session.set("model", model)
        await cl.Message(
            content=f"Switched to `{model}`. It answers from your next message; "
            "the conversation so far is kept."
        ).send()


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
    except EndpointUnavailable as exc:
        # Discover again next time: Foundry Local comes back on a new port after a restart.
        cl.user_session.set("endpoint", None)
        await cl.Message(content=str(exc)).send()
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
    history: list[Message] = cl.user_session.get("history") or []
    endpoint = await session_endpoint(settings)
    hits = await search_step(question, settings)
    msg = cl.Message(content="")
    start: AnswerStart | None = None
    done: AnswerDone | None = None
    try:
        async for event in answer(
            question,
            history=history,
            model=cl.user_session.get("model") or None,
            local=endpoint,
            hits=hits,
            settings=settings,
        ):
            if isinstance(event, AnswerStart):
                start = event
            elif isinstance(event, AnswerDelta):
                await msg.stream_token(event.text)
            elif isinstance(event, AnswerDone):
                done = event
    except StreamInterrupted as exc:
        msg.content = (
            f"{exc.partial}\n\n---\n*{exc} The answer above is incomplete; ask again to retry.*"
        )
        await msg.send()
        if start is not None:
            await show_sources(start.hits, msg.id)
        remember_turn(history, question, exc.partial)
        return

    assert start is not None and done is not None
    if done.local_down:
        # Another route answered because the local server was down: discover again
        # next time (Foundry Local comes back on a new port after a restart).
        cl.user_session.set("endpoint", None)
    msg.content = (done.text or "_The model returned an empty answer._") + footer(start, done)
    await msg.send()
    await show_sources(start.hits, msg.id)
    remember_turn(history, question, done.text)


async def compare_models(models: list[str], question: str, settings: Settings) -> None:
    """``/compare A B question``: the models answer from the same passages in columns side by
    side (public/elements/Compare.jsx), streaming at the same time (remote servers) or one
    after the other (the same CPU), each with its timings."""
    endpoint = await session_endpoint(settings)
    hits = await search_step(question, settings)
    board = CompareBoard(models)
    panel = cl.CustomElement(name="Compare", props=board.props(), display="inline")
    msg = cl.Message(
        content=f"Comparing {' and '.join(f'`{m}`' for m in models)} on the same passages.",
        elements=[panel],
    )
    await msg.send()
    shown = 0.0
    async for event in compare_stream(
        question, models, history=cl.user_session.get("history") or [], hits=hits,
        local=endpoint, settings=settings,
    ):  # fmt: skip
        if board.apply(event) is None:
            continue
        # Ten repaints a second look live; one per token would flood the websocket.
        if not isinstance(event, ModelDelta) or time.monotonic() - shown > PANEL_REFRESH_S:
            panel.props = board.props()
            await panel.update()
            shown = time.monotonic()
    panel.props = board.props()
    await panel.update()
    msg.content += "\n\n**Sources (the same for every model):** " + " · ".join(
        f"[{n}] {source_label(h)}" for n, h in enumerate(hits, start=1)
    )
    await msg.update()
    await show_sources(hits, msg.id)


async def search_step(question: str, settings: Settings) -> list[Hit]:
    """Retrieve the passages inside a collapsed step that lists them."""
    async with cl.Step(name="document search", type="retrieval", default_open=False) as step:
        step.input = question
        # Embedding and Chroma block for a few ms; keep the event loop free. NoDocuments
        # propagates: the step shows its sentence and on_message says how to add files.
        hits = await asyncio.to_thread(retrieve, question, settings=settings)
        step.output = hits_table(hits)
    return hits


async def show_sources(hits: Sequence[Hit], answer_id: str) -> None:
    """Show the answer's passages (file, page, full text) in the sidebar beside the chat.

    The sidebar's elements are *replaced* per answer (keyed by its id): side elements
    attached to messages pile up duplicates across turns, and inline ones print every
    full passage into the conversation. The answer itself keeps the file/page line.
    """
    elements = [
        cl.Text(name=f"[{n}] {source_label(h)}", content=f"**[{n}] {source_label(h)}**\n\n{h.text}")
        for n, h in enumerate(hits, start=1)
    ]
    await cl.ElementSidebar.set_elements(elements, key=answer_id)
    if elements:
        # After the elements: a title set first is dropped when the new elements arrive.
        await cl.ElementSidebar.set_title("Sources of the last answer")


# --- uploads ----------------------------------------------------------------------------


async def add_uploads(elements: Sequence[cl.File], settings: Settings) -> None:
    """Save dropped files into the docs folder, ingest them, and report in one message."""
    names = ", ".join(el.name for el in elements)
    progress = cl.Message(content=f"Adding {names} to the knowledge base…")
    await progress.send()
    saved: list[SavedUpload] = []
    problems: list[str] = []
    for el in elements:
        try:
            # Hashing and copying a 20 MB file would stall every chat on the event loop.
            path = Path(str(el.path))
            saved.append(await asyncio.to_thread(save_upload, path, el.name, settings))
        except RagError as exc:
            problems.append(str(exc))
    report: IngestReport | None = None
    if saved:
        try:
            report = await asyncio.to_thread(ingest, settings)
        except RagError as exc:
            problems.append(str(exc))
    progress.content = upload_summary(saved, report, problems)
    await progress.update()


# --- session state -----------------------------------------------------------------------


async def offer_models(endpoint: Endpoint | None, models: list[str], settings: Settings) -> str:
    """Remember the endpoint and show the model picker; returns the preselected model.

    ``endpoint`` is None when no local server answers and only routed models are offered.
    A model the user already picked stays picked when it is still offered (rediscovery).
    """
    # Models on other endpoints (fallback, routing file) can be picked as endpoint:model.
    offered = models + [m for m in routed_models(settings, endpoint) if m not in models]
    current = cl.user_session.get("model")
    if current and current in offered:
        model = current
    else:
        model = choose_model(models, settings.llm_model or (endpoint and endpoint.model))
    cl.user_session.set("endpoint", endpoint)
    cl.user_session.set("models", offered)
    cl.user_session.set("model", model)
    if offered:
        index = offered.index(model) if model in offered else 0
        await cl.ChatSettings(
            [Select(id="model", label="Model", values=offered, initial_index=index)]
        ).send()
    return model


async def session_endpoint(settings: Settings) -> Endpoint | None:
    """This chat's endpoint; discovered again (and the picker shown) if none answered at start.

    None when no local server answers but routing knows a fallback: the answer
    pipeline then discovers again and routes around the missing local server.
    """
    endpoint: Endpoint | None = cl.user_session.get("endpoint")
    if endpoint is None:
        try:
            endpoint = await local_endpoint(settings)
            try:
                models = await list_models(endpoint, settings)
            except EndpointUnavailable:
                forget_endpoint(endpoint)
                raise
            await offer_models(endpoint, models, settings)
        except EndpointUnavailable:
            if not routed_models(settings):
                raise
            return None
    return endpoint


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


# --- at import: Chainlit loads this file once per server start -------------------------------
apply_upload_limit(get_settings())
# Open WebUI and any OpenAI client chat with the documents at http://127.0.0.1:8000/v1.
mount_openai_api(chainlit_server, get_settings())
# Only this machine's pages (and RAG_ALLOWED_*) reach the chat socket; own files folder.
guard_chat_server(chainlit_server, get_settings())
