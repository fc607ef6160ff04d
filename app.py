"""Local RAG Chat: the Chainlit app (`chainlit run app.py`).

The handlers below read like the conversation: greet and offer the models, take
dropped files into the knowledge base, answer with sources. The work lives in
``rag/`` (the model catalog, retrieval, the answer pipeline), ``rag/web/`` (the
chat's answering and Chainlit pieces, its wording, the HTTP API, the search page,
the guards) and ``ingest/``; this file only wires Chainlit's hooks to them and
turns their error sentences into chat messages.
"""

from __future__ import annotations

import logging

import chainlit as cl
from chainlit.server import app as chainlit_server
from starlette.datastructures import Headers

from rag.catalog import model_catalog
from rag.errors import NoDocuments, RagError
from rag.settings import get_settings
from rag.web.chat_reply import reply
from rag.web.chat_server import extend_chat_server
from rag.web.chat_text import opening, switched
from rag.web.chat_ui import add_uploads, compare_models, list_files, offer_models
from rag.web.compare_board import parse_compare_command
from rag.web.history import data_layer, history_notice, keep_model, resumed_chat
from rag.web.sign_in import SignIn, loopback_user, password_user, set_up_sign_in

log = logging.getLogger("local_rag_chat")

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
        elif text == "/files":
            await list_files(settings)
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
extend_chat_server(chainlit_server, get_settings())
