"""The docs folder that stays in sync: the watcher alone, and in the running chat app.

The watcher tests run :func:`ingest.watch.watch_docs` on this test's loop over a
real folder, the real pipeline and Chroma store. The app tests start `chainlit
run app.py`, open a chat over a real socket.io client, change files in the docs
folder and search the store the way a user does (`python -m rag.search`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path

import pytest

from ingest.lock import writer_lock
from ingest.pipeline import ingest, state_path
from ingest.watch import QUIET_MS, FolderSynced, _DocsFilter, watch_docs
from rag.settings import Settings
from rag.store import ChunkStore, forget_cached_clients
from tests.chainlit_server import app_env, running_chainlit
from tests.chat_socket import ChatSocket
from tests.documents import TOPICS, prose, write_corpus
from tests.fake_openai import FakeOpenAI
from tests.support import make_settings, run_module

WAIT_S = 120  # the machine is shared and busy: a first ingest loads the embedder
KAYAKS = "# Kayaks\n\nThe sea kayak Osprey is 5.2 metres long and weighs 24 kilograms.\n"
AQUARIUM = "# Aquarium\n\nThe zebrafish aquarium on deck seven holds 340 litres of water.\n"
AQUARIUM_BIGGER = "# Aquarium\n\nThe zebrafish aquarium on deck seven now holds 512 litres.\n"
NOTICE = "**Your documents changed:**"


class Notices:
    """What the watcher told, in order, and a way to wait for the next one."""

    def __init__(self) -> None:
        self.seen: list[FolderSynced] = []

    async def __call__(self, synced: FolderSynced) -> None:
        self.seen.append(synced)

    async def wait_for(self, count: int, timeout_s: float = WAIT_S) -> list[str]:
        """The summaries, once there are ``count`` of them; fails after ``timeout_s``."""
        await _until(lambda: len(self.seen) >= count, timeout_s, f"{count} notice(s)")
        return [s.summary() for s in self.seen]


@asynccontextmanager
async def watching(settings: Settings) -> AsyncIterator[Notices]:
    """Run the watcher over ``settings.docs_dir`` for the block; stop it after."""
    notices = Notices()
    stop = asyncio.Event()
    task = asyncio.create_task(watch_docs(settings, notices, stop_event=stop))
    try:
        yield notices
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=WAIT_S)


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        await asyncio.sleep(0.1)


# --- the watcher on its own -------------------------------------------------------------


@pytest.mark.embedder
async def test_files_there_at_start_then_a_burst_of_new_files_are_two_ingests(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    (settings.docs_dir / "kayaks.md").write_text(KAYAKS)
    async with watching(settings) as notices:
        assert await notices.wait_for(1) == ["1 file added"]
        for name in ("a.md", "b.md", "c.md"):  # one copy of three files: one ingest
            (settings.docs_dir / name).write_text(f"# {name}\n\nNotes about {name} and boats.\n")
        (settings.docs_dir / "empty.txt").write_bytes(b"")
        summaries = await notices.wait_for(2)
        await asyncio.sleep(3 * QUIET_MS / 1000)  # nothing else is on its way
    assert summaries == [
        "1 file added",
        "3 files added, empty.txt could not be read (empty file: nothing to index)",
    ]
    assert len(notices.seen) == 2
    assert ChunkStore(settings).count() == 4


@pytest.mark.embedder
async def test_a_change_and_a_deletion_are_each_one_notice(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    aquarium = settings.docs_dir / "aquarium.md"
    aquarium.write_text(AQUARIUM)
    async with watching(settings) as notices:
        await notices.wait_for(1)
        aquarium.write_text(AQUARIUM_BIGGER)
        assert (await notices.wait_for(2))[1] == "1 file updated"
        texts = [c.text for c in ChunkStore(settings).iter_chunks()]
        assert len(texts) == 1 and "512 litres" in texts[0]
        aquarium.unlink()
        assert (await notices.wait_for(3))[2] == "1 file removed"
    assert ChunkStore(settings).count() == 0


@pytest.mark.embedder
async def test_the_watcher_waits_for_another_writer_then_ingests(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    (settings.docs_dir / "kayaks.md").write_text(KAYAKS)
    async with watching(settings) as notices:
        await notices.wait_for(1)
        released = threading.Event()
        held = threading.Event()

        def other_writer() -> None:
            with writer_lock(settings):
                held.set()
                released.wait(WAIT_S)

        holder = threading.Thread(target=other_writer)
        holder.start()
        held.wait(WAIT_S)
        (settings.docs_dir / "aquarium.md").write_text(AQUARIUM)
        await asyncio.sleep(3 + QUIET_MS / 1000)
        assert len(notices.seen) == 1, "no ingest while another process writes the store"
        released.set()
        holder.join()
        assert (await notices.wait_for(2))[1] == "1 file added"


@pytest.mark.embedder
async def test_a_file_the_upload_ingested_is_not_ingested_again(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    (settings.docs_dir / "kayaks.md").write_text(KAYAKS)
    async with watching(settings) as notices:
        await notices.wait_for(1)
        # What a drop into the chat does: save into the docs folder, ingest at once.
        (settings.docs_dir / "aquarium.md").write_text(AQUARIUM)
        upload = await asyncio.to_thread(ingest, settings.with_overrides(lock_timeout_s=60))
        await asyncio.sleep(3 + 2 * QUIET_MS / 1000)  # the watcher's turn, whichever came first
    added = upload.added + [s for n in notices.seen[1:] for s in n.report.added]
    assert added == ["aquarium.md"], "exactly one of the two ingests adds the file"
    ids = [c.id for c in ChunkStore(settings).iter_chunks()]
    assert len(ids) == len(set(ids)) == 2


@pytest.mark.embedder
def test_threads_opening_one_store_at_once_all_get_a_working_client(tmp_path: Path) -> None:
    # The chat's search and the watcher's ingest open the store at the same moment at start-up.
    settings = make_settings(tmp_path)
    ChunkStore(settings)
    for _ in range(5):
        forget_cached_clients()
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def open_store() -> None:
            barrier.wait()
            try:
                ChunkStore(settings).count()
            except Exception as exc:  # noqa: BLE001 - collected, then asserted
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []


def test_only_changes_that_can_matter_to_an_ingest_wake_the_watcher(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, data_dir=tmp_path / "docs" / "store")
    docs = settings.docs_dir
    (docs / "photo.bin").write_bytes(b"\0")
    (docs / "guide").mkdir()
    wakes = _DocsFilter(settings)
    change = 1  # watchfiles.Change.added
    assert wakes(change, str(docs / "guide" / "install.md"))
    assert wakes(change, str(docs / "guide"))  # a folder (moved in, or deleted)
    assert wakes(change, str(docs / "gone.bin"))  # deleted: it may have been a folder
    assert not wakes(change, str(docs / "photo.bin"))  # no loader reads it
    assert not wakes(change, str(docs / ".notes.md.swp"))
    assert not wakes(change, str(docs / ".git" / "HEAD.md"))
    assert not wakes(change, str(docs / "store" / "chroma" / "index.md"))  # our own writes


# --- the running app ----------------------------------------------------------------------


def _search(store: Path, question: str) -> list[dict[str, object]]:
    """The hits of `python -m rag.search --json` over ``store``; [] while nothing is ingested."""
    done = run_module(
        "rag.search", question, "--json", "--k", "3",
        "--data-dir", store / "data", "--docs-dir", store / "docs", cwd=store,
    )  # fmt: skip
    if done.returncode != 0:
        return []
    return json.loads(done.stdout.strip().splitlines()[-1])["hits"]


def _poll_search(store: Path, question: str, holds: Callable[[list[dict]], bool]) -> list[dict]:
    """Search until ``holds(hits)``; fails after :data:`WAIT_S`."""
    deadline = time.monotonic() + WAIT_S
    while True:
        hits = _search(store, question)
        if holds(hits):
            return hits
        assert time.monotonic() < deadline, f"search never saw the change: {hits}"
        time.sleep(1)


def _notices(chat: ChatSocket) -> list[str]:
    return [text for text in chat.messages().values() if text.startswith(NOTICE)]


def _wait_notice(chat: ChatSocket, count: int) -> str:
    chat.wait_for(lambda: len(_notices(chat)) >= count, f"notice {count} in the chat")
    return _notices(chat)[count - 1]


@pytest.mark.slow
@pytest.mark.embedder
def test_the_running_app_ingests_added_changed_and_deleted_files_and_tells_the_open_chat(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    docs = store / "docs"
    docs.mkdir(parents=True)
    (docs / "kayaks.md").write_text(KAYAKS)
    aquarium = docs / "aquarium.md"
    question = "How many litres does the zebrafish aquarium hold?"

    def has_aquarium(hits: list[dict]) -> bool:
        return any(h["source"] == "aquarium.md" for h in hits)

    with (
        FakeOpenAI(models=["fake-model"], reply="It holds 340 litres [1].") as fake,
        running_chainlit(tmp_path, app_env(store, fake.base_url, RAG_WATCH="1")) as app,
    ):
        # Files there before the app started are ingested once it watches.
        _poll_search(store, "sea kayak Osprey length", lambda hits: bool(hits))
        with ChatSocket(app.url, timeout_s=WAIT_S) as chat:
            aquarium.write_text(AQUARIUM)
            assert _wait_notice(chat, 1) == f"{NOTICE} 1 file added."
            hits = _poll_search(store, question, has_aquarium)
            assert "340 litres" in hits[0]["text"]
            chat.ask(question)  # the app's own search sees it too
            assert "340 litres" in fake.requests[-1]["messages"][-1]["content"]

            aquarium.write_text(AQUARIUM_BIGGER)
            assert _wait_notice(chat, 2) == f"{NOTICE} 1 file updated."
            hits = _poll_search(store, question, has_aquarium)
            assert "512 litres" in hits[0]["text"] and "340" not in hits[0]["text"]

            aquarium.unlink()
            assert _wait_notice(chat, 3) == f"{NOTICE} 1 file removed."
            assert not has_aquarium(_search(store, question))
            assert len(_notices(chat)) == 3


@pytest.mark.slow
@pytest.mark.embedder
def test_with_rag_watch_0_the_running_app_ingests_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    docs = store / "docs"
    docs.mkdir(parents=True)
    (docs / "kayaks.md").write_text(KAYAKS)
    with FakeOpenAI(models=["fake-model"]) as fake:
        env = app_env(store, fake.base_url, RAG_WATCH="0")
        with running_chainlit(tmp_path, env) as app, ChatSocket(app.url, timeout_s=WAIT_S) as chat:
            (docs / "aquarium.md").write_text(AQUARIUM)
            # Watching, the app ingests both within seconds (the test above); here, never.
            time.sleep(10)
            assert _search(store, "sea kayak Osprey length") == []
            assert _notices(chat) == []
            assert "python -m ingest" in next(iter(chat.messages().values()))
    assert not (store / "data" / "chroma").exists()


def _statuses(settings: Settings) -> list[str]:
    """The status of every source in the ingest state; [] while it is missing or locked."""
    try:
        with closing(sqlite3.connect(state_path(settings), timeout=0.05)) as db:
            return [row[0] for row in db.execute("SELECT status FROM sources")]
    except sqlite3.Error:
        return []


def _chunks(settings: Settings) -> list[tuple[str, str, str]]:
    forget_cached_clients()  # another process wrote this store since we last opened it
    return sorted((c.id, c.text, c.file_sha256) for c in ChunkStore(settings).iter_chunks())


@pytest.mark.slow
@pytest.mark.embedder
def test_the_app_killed_mid_ingest_repairs_the_store_when_it_starts_again(tmp_path: Path) -> None:
    store = tmp_path / "store"
    write_corpus(store / "docs", paragraphs=3)
    for topic in TOPICS:
        (store / "docs" / "notes" / f"{topic}.md").parent.mkdir(exist_ok=True)
        (store / "docs" / "notes" / f"{topic}.md").write_text(f"# {topic}\n\n{prose(topic, 6)}")
    files = sum(1 for p in (store / "docs").rglob("*") if p.is_file())
    victim = make_settings(store)
    # One chunk per embedding batch: many small commits, so the kill lands among them.
    with FakeOpenAI(models=["fake-model"]) as fake:
        env = app_env(store, fake.base_url, RAG_WATCH="1", RAG_EMBED_BATCH="1")
        with running_chainlit(tmp_path / "first", env) as app:
            deadline = time.monotonic() + WAIT_S
            while "pending" not in _statuses(victim):
                assert time.monotonic() < deadline, "the app never started to ingest"
                time.sleep(0.01)
            os.kill(app.pid, signal.SIGKILL)
        left = _statuses(victim)
        assert left.count("done") < files, f"the kill came after the ingest: {left}"
        with running_chainlit(tmp_path / "second", env):
            deadline = time.monotonic() + WAIT_S
            while _statuses(victim).count("done") < files:
                assert time.monotonic() < deadline, f"not repaired: {_statuses(victim)}"
                time.sleep(0.5)
    clean = make_settings(tmp_path / "clean", docs_dir=store / "docs")
    ingest(clean)
    assert _chunks(victim) == _chunks(clean)
