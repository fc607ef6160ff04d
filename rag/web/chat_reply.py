"""Answering in the chat: search, stream the answer, show its sources, remember the turn.

:func:`reply` is what ``app.py``'s message handler calls for a question; it turns
the answer pipeline's events (:func:`rag.answer.answer`) into one streamed Chainlit
message, its sources beside it, and the turn in the session's history.
"""

from __future__ import annotations

# Chainlit is imported in reply() itself, so importing this module does not load it.
from rag.answer import AnswerDelta, AnswerDone, AnswerStart, answer
from rag.errors import StreamInterrupted
from rag.llm import Message
from rag.prompt import source_label
from rag.settings import Settings
from rag.web.chat_text import answer_text, interrupted
from rag.web.chat_ui import (
    SOURCES_TITLE,
    ReadingStep,
    passage_elements,
    refresh_models,
    remember_turn,
    scoped_search,
    show_sources,
    source_elements,
)
from rag.web.history import AnswerRecord, keep_model


async def reply(question: str, settings: Settings) -> None:
    """Search, then stream the answer with its sources; a broken stream keeps its partial text."""
    import chainlit as cl

    await refresh_models(settings)
    history: list[Message] = cl.user_session.get("history") or []
    hits = await scoped_search(question, history, settings)  # None: answer() reads the files
    msg = cl.Message(content="")
    start: AnswerStart | None = None
    done: AnswerDone | None = None
    model = cl.user_session.get("model") or None
    try:
        events = answer(
            question, settings, model=model, history=history, hits=hits, on_progress=ReadingStep()
        )
        async for event in events:
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
