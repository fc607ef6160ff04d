"""Chats that survive a restart: the history database under the data folder.

Chainlit's own ``SQLAlchemyDataLayer`` over ``sqlite+aiosqlite`` keeps threads,
messages and feedback (it is tested upstream and already speaks the sidebar's
routes; a data layer of our own would re-implement a dozen methods). It does not
create its tables, so :func:`open_history` creates and migrates them at start-up,
idempotently: missing tables are created and missing columns added, which is how
a database made by an older release catches up. ``PRAGMA user_version`` records
the schema version.

Each answer is saved with what the chat shows beside it: its message's metadata
holds :class:`AnswerRecord` (question, answer text, model, cited sources), so a
resumed chat rebuilds the history the model is sent and ``python -m rag.feedback``
exports rated answers with their sources.

A database that cannot be read never stops the chat: it is renamed aside
(``history.db.unreadable-<time>``, never overwritten), a fresh one is started,
and :func:`history_notice` says so in the first chat after the start.

>>> state = open_history(settings)          # doctest: +SKIP
>>> state.url, state.notice                 # doctest: +SKIP
('sqlite+aiosqlite:////…/.data/history.db', None)
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from rag.llm import Message
from rag.settings import Settings

log = logging.getLogger(__name__)

HISTORY_FILE = "history.db"  # under DATA_DIR
SCHEMA_VERSION = 1
ANSWER_KEY = "rag_answer"  # the key of an answer's AnswerRecord in its message metadata
MODEL_KEY = "rag_model"  # the key of the picked model in the thread metadata

# The columns Chainlit 2.12's SQLAlchemyDataLayer reads and writes, per table. JSON
# columns hold text in SQLite; the data layer (de)serialises them itself.
TABLES: dict[str, dict[str, str]] = {
    "users": {"id": "TEXT PRIMARY KEY", "identifier": "TEXT NOT NULL UNIQUE",
              "metadata": "TEXT NOT NULL DEFAULT '{}'", "createdAt": "TEXT"},
    "threads": {"id": "TEXT PRIMARY KEY", "createdAt": "TEXT", "name": "TEXT",
                "userId": "TEXT REFERENCES users(id) ON DELETE CASCADE",
                "userIdentifier": "TEXT", "tags": "TEXT", "metadata": "TEXT"},
    "steps": {"id": "TEXT PRIMARY KEY", "name": "TEXT NOT NULL", "type": "TEXT NOT NULL",
              "threadId": "TEXT NOT NULL REFERENCES threads(id) ON DELETE CASCADE",
              "parentId": "TEXT", "streaming": "BOOLEAN NOT NULL DEFAULT 0",
              "waitForAnswer": "BOOLEAN", "isError": "BOOLEAN", "metadata": "TEXT",
              "tags": "TEXT", "input": "TEXT", "output": "TEXT", "createdAt": "TEXT",
              "command": "TEXT", "modes": "TEXT", "start": "TEXT", "end": "TEXT",
              "generation": "TEXT", "showInput": "TEXT", "language": "TEXT", "indent": "INT",
              "defaultOpen": "BOOLEAN", "autoCollapse": "BOOLEAN", "icon": "TEXT"},
    "elements": {"id": "TEXT PRIMARY KEY",
                 "threadId": "TEXT REFERENCES threads(id) ON DELETE CASCADE",
                 "type": "TEXT", "url": "TEXT", "chainlitKey": "TEXT", "name": "TEXT NOT NULL",
                 "display": "TEXT", "objectKey": "TEXT", "size": "TEXT", "page": "INT",
                 "language": "TEXT", "forId": "TEXT", "mime": "TEXT", "props": "TEXT",
                 "autoPlay": "BOOLEAN", "playerConfig": "TEXT"},
    "feedbacks": {"id": "TEXT PRIMARY KEY", "forId": "TEXT NOT NULL", "threadId": "TEXT",
                  "value": "INT NOT NULL", "comment": "TEXT"},
}
INDEXES = (
    'CREATE INDEX IF NOT EXISTS threads_user ON threads("userId")',
    'CREATE INDEX IF NOT EXISTS steps_thread ON steps("threadId")',
    'CREATE INDEX IF NOT EXISTS feedbacks_for ON feedbacks("forId")',
)


# --- what an answer keeps --------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerRecord:
    """What the history keeps of one answer, beside the text the chat shows.

    ``answer`` is the model's text as the next question's history sends it (without
    the source lines the chat adds); ``sources`` are the cited passages' labels.
    """

    question: str
    answer: str
    model: str | None = None
    sources: tuple[str, ...] = ()

    def metadata(self) -> dict[str, Any]:
        """The record as a message's metadata (JSON-ready)."""
        return {ANSWER_KEY: {**asdict(self), "sources": list(self.sources)}}

    @classmethod
    def from_metadata(cls, metadata: object) -> AnswerRecord | None:
        """The record in a stored message's metadata (a dict or its JSON), or None."""
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata)
            except json.JSONDecodeError:
                return None
        record = metadata.get(ANSWER_KEY) if isinstance(metadata, Mapping) else None
        if not isinstance(record, Mapping) or not isinstance(record.get("question"), str):
            return None
        return cls(
            question=record["question"],
            answer=str(record.get("answer") or ""),
            model=record.get("model") or None,
            sources=tuple(str(s) for s in record.get("sources") or ()),
        )


@dataclass(frozen=True)
class ResumedChat:
    """A stored chat as the session needs it: the conversation and the model it used."""

    history: list[Message] = field(default_factory=list)
    model: str | None = None


def resumed_chat(thread: Mapping[str, Any]) -> ResumedChat:
    """Rebuild a chat from a stored thread (Chainlit's ``ThreadDict``).

    The history is the answered turns in order, exactly as they were sent to the
    model; the model is the one kept in the thread metadata, or else the last
    answer's.
    """
    steps = sorted(thread.get("steps") or (), key=lambda s: str(s.get("createdAt") or ""))
    records = [r for r in (AnswerRecord.from_metadata(s.get("metadata")) for s in steps) if r]
    history: list[Message] = []
    for record in records:
        history.append({"role": "user", "content": record.question})
        history.append({"role": "assistant", "content": record.answer})
    metadata = thread.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata or "{}")
    model = metadata.get(MODEL_KEY) or next((r.model for r in reversed(records) if r.model), None)
    return ResumedChat(history=history, model=model)


# --- the database file ------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryState:
    """The history database of this start: its URL (None: no history) and what to tell users."""

    path: Path
    url: str | None
    notice: str | None = None


def history_path(settings: Settings) -> Path:
    """Where the history database lives: ``DATA_DIR/history.db``."""
    return settings.data_dir / HISTORY_FILE


@cache
def open_history(settings: Settings) -> HistoryState:
    """Check, create or migrate the history database once per process; never raises.

    An unreadable file is renamed aside and a fresh one started; when even that is
    impossible the chat runs without history. Either way ``notice`` says what happened.
    """
    path = history_path(settings).resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _check_readable(path)
        migrate(path)
        return HistoryState(path=path, url=f"sqlite+aiosqlite:///{path}")
    except (sqlite3.DatabaseError, OSError) as exc:
        log.warning("The chat history database %s cannot be used: %s", path, exc)
    try:
        aside = keep_aside(path)
        migrate(path)
    except (sqlite3.DatabaseError, OSError) as exc:
        log.warning("No chat history this time: %s", exc)
        return HistoryState(path=path, url=None, notice=(
            f"**Chat history is off for this run:** {path} cannot be read or replaced "
            f"({exc}). Check the file's permissions, or move it away and restart the app."
        ))
    return HistoryState(path=path, url=f"sqlite+aiosqlite:///{path}", notice=(
        f"**Earlier chats could not be read:** the history file was damaged, so it was kept "
        f"as {aside} and a new history was started. Chats from now on are saved."
    ))


def _check_readable(path: Path) -> None:
    """Raise ``sqlite3.DatabaseError`` unless ``path`` is a SQLite file that passes a quick check."""
    with _connect(path) as db:
        result = db.execute("PRAGMA quick_check").fetchone()
    if not result or result[0] != "ok":
        raise sqlite3.DatabaseError(f"quick_check says {result[0] if result else 'nothing'}")


def keep_aside(path: Path) -> Path:
    """Rename ``path`` (and its journal files) to a new name beside it; never overwrites."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.unreadable-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.unreadable-{stamp}-{n}")
    path.rename(aside)
    for suffix in ("-wal", "-shm", "-journal"):
        journal = path.with_name(path.name + suffix)
        if journal.exists():
            journal.rename(aside.with_name(aside.name + suffix))
    return aside


def migrate(path: Path) -> int:
    """Create the tables, add columns they lack, and record the schema version; idempotent.

    Returns the number of tables and columns added (0 when the schema was current).
    """
    added = 0
    with _connect(path) as db:
        for table, columns in TABLES.items():
            present = {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}
            if not present:
                body = ", ".join(f'"{name}" {kind}' for name, kind in columns.items())
                db.execute(f'CREATE TABLE "{table}" ({body})')
                added += 1
                continue
            for name, kind in columns.items():
                if name not in present:
                    # ALTER TABLE cannot add NOT NULL/PRIMARY KEY columns to existing rows.
                    db.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {_plain(kind)}')
                    added += 1
        for index in INDEXES:
            db.execute(index)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return added


def _plain(kind: str) -> str:
    return kind.split()[0]


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10)
    db.execute("PRAGMA foreign_keys = ON")
    return db


# --- the data layer ------------------------------------------------------------------------------


@cache
def data_layer(settings: Settings) -> Any | None:
    """Chainlit's data layer over the history database, or None when history is off."""
    state = open_history(settings)
    if state.url is None:
        return None
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer

    class HistoryDataLayer(SQLAlchemyDataLayer):
        """SQLAlchemyDataLayer whose list and dict values are stored as JSON text.

        SQLite has no array type; Chainlit binds a step's ``tags`` (a list) as they are,
        which SQLite refuses, and the data layer would then drop the whole step.
        """

        async def execute_sql(self, query: str, parameters: dict) -> Any:
            return await super().execute_sql(query, dict(_as_sqlite(parameters)))

    return HistoryDataLayer(conninfo=state.url)


def _as_sqlite(parameters: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    for key, value in parameters.items():
        yield key, json.dumps(value) if isinstance(value, (list, dict, tuple)) else value


_told: set[Path] = set()


def history_notice(settings: Settings) -> str | None:
    """The sentence about an unreadable history, the first time it is asked per process."""
    state = open_history(settings)
    if state.notice is None or state.path in _told:
        return None
    _told.add(state.path)
    return state.notice



async def keep_model(settings: Settings, thread_id: str, model: str | None) -> None:
    """Remember the chat's picked model in its thread metadata, so a resumed chat gets it back.

    Called once the chat has a saved turn: the data layer would otherwise create a
    thread that belongs to nobody.
    """
    layer = data_layer(settings)
    if layer is not None and model:
        await layer.update_thread(thread_id, metadata={MODEL_KEY: model})
