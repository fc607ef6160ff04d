"""Chat history: the schema we create, a damaged file kept aside, answers that resume, feedback export."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from rag.web.history import (
    AnswerRecord,
    history_notice,
    migrate,
    open_history,
    resumed_chat,
)
from tests.chainlit_server import app_env, running_chainlit
from tests.chat_socket import ChatSocket
from tests.support import make_settings
from tests.fake_openai import FakeOpenAI

HOLIDAYS = "How many days of paid holiday do employees get?"


def columns(db: Path, table: str) -> set[str]:
    with sqlite3.connect(db) as con:
        return {row[1] for row in con.execute(f'PRAGMA table_info("{table}")')}


def test_schema_is_created_once_and_an_older_one_gains_the_missing_columns(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    with sqlite3.connect(db) as con:  # a database made before the steps table had "modes"
        con.execute('CREATE TABLE steps ("id" TEXT PRIMARY KEY, "name" TEXT, "type" TEXT)')
        con.execute("INSERT INTO steps VALUES ('s1', 'User', 'user_message')")
    assert migrate(db) > 0
    assert {"modes", "threadId", "metadata", "defaultOpen"} <= columns(db, "steps")
    assert {"users", "threads", "elements", "feedbacks"} <= {
        row[0] for row in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")
    }
    assert migrate(db) == 0  # idempotent
    assert sqlite3.connect(db).execute("SELECT id FROM steps").fetchall() == [("s1",)]


def test_a_damaged_history_is_kept_aside_and_a_new_one_started_with_one_notice(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    settings.data_dir.mkdir(parents=True)
    damaged = b"SQLite format 3\x00" + b"\x13" * 5000
    (settings.data_dir / "history.db").write_bytes(damaged)

    state = open_history(settings)

    assert state.url is not None
    kept = list(settings.data_dir.glob("history.db.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged  # not overwritten
    assert "users" in {r[0] for r in sqlite3.connect(state.path).execute("SELECT name FROM sqlite_master")}
    notice = history_notice(settings)
    assert notice is not None and str(kept[0]) in notice
    assert history_notice(settings) is None  # said once


def test_resumed_chat_sends_the_answered_turns_and_the_kept_model() -> None:
    first = AnswerRecord("Q1?", "A1", "m-old", ("[1] handbook.md",))
    second = AnswerRecord("Q2?", "A2", "m-old")
    thread = {
        "metadata": json.dumps({"rag_model": "m-picked"}),
        "steps": [
            {"type": "assistant_message", "createdAt": "1", "output": "Welcome", "metadata": "{}"},
            {"type": "user_message", "createdAt": "2", "output": "Q1?", "metadata": "{}"},
            {"type": "assistant_message", "createdAt": "3", "metadata": json.dumps(first.metadata())},
            {"type": "assistant_message", "createdAt": "5", "metadata": second.metadata()},
            {"type": "user_message", "createdAt": "4", "output": "Q2?", "metadata": {}},
        ],
    }
    chat = resumed_chat(thread)
    assert chat.model == "m-picked"
    assert chat.history == [
        {"role": "user", "content": "Q1?"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2?"},
        {"role": "assistant", "content": "A2"},
    ]


@pytest.fixture
def fake() -> FakeOpenAI:
    server = FakeOpenAI(models=["m-one", "m-two"], reply="Employees get 28 days of paid holiday [1].")
    server.start()
    yield server
    server.stop()


def test_a_chat_resumes_after_a_restart_and_the_follow_up_carries_its_history(
    tmp_path: Path, private_store: Path, fake: FakeOpenAI
) -> None:
    env = app_env(private_store, fake.base_url)
    with running_chainlit(tmp_path / "first", env) as app:
        with ChatSocket(app.url) as chat:
            first = chat.ask(HOLIDAYS)
            thread_id = chat.thread_id_started()
    assert "28 days" in first.text and thread_id

    with running_chainlit(tmp_path / "second", env) as app:
        with ChatSocket(app.url, thread_id=thread_id) as chat:
            chat.ask("And do unused days carry over?")
            with chat.http() as http:
                listed = http.post("/project/threads", json={"pagination": {"first": 20}, "filter": {}})
    sent = fake.requests[-1]["messages"]
    assert any(m["role"] == "user" and m["content"] == HOLIDAYS for m in sent)
    assert any(m["role"] == "assistant" and "28 days" in m["content"] for m in sent)
    assert [t["id"] for t in listed.json()["data"]] == [thread_id]

