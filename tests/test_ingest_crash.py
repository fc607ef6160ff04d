"""Crash safety for real: `python -m ingest` killed with SIGKILL at random moments, then repaired.

After any number of kills, one complete run must leave the store and the state
exactly as a clean ingest of the same corpus into another data dir: same chunk
ids, same texts and metadata, no orphans, no duplicates.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.pipeline import ingest, state_path
from rag.store import ChunkStore, forget_cached_clients
from tests.documents import TOPICS, prose, write_corpus
from tests.support import cli_env, make_settings

pytestmark = [pytest.mark.slow, pytest.mark.embedder]
# Files are committed to the store in batches of 8 embedding batches; with batches
# of 1 chunk, this small corpus is written in many commits, so kills land between
# and inside them rather than only while embedding.
SMALL_COMMITS = {"RAG_EMBED_BATCH": "1"}


def _snapshot(
    tmp_path: Path, data: Path
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Chunks (id, source, index, page, heading, text, sha) and state rows of a data dir."""
    forget_cached_clients()  # another process wrote this store since we last opened it
    store = ChunkStore(make_settings(tmp_path, data_dir=data))
    chunks = sorted(
        (c.id, c.source, c.index, c.page, c.heading, c.text, c.file_sha256)
        for c in store.iter_chunks()
    )
    assert store.count() == len(chunks)
    with sqlite3.connect(state_path(make_settings(tmp_path, data_dir=data))) as db:
        rows = sorted(db.execute("SELECT source, sha256, chunks, status FROM sources").fetchall())
    return chunks, rows


def _state_rows(cwd: Path, data: Path) -> list[tuple[str, float]]:
    """(status, updated_at) of every source in a data dir's state; [] while it is unreadable."""
    try:
        db = sqlite3.connect(state_path(make_settings(cwd, data_dir=data)), timeout=0.05)
        try:
            return list(db.execute("SELECT status, updated_at FROM sources"))
        finally:
            db.close()
    except sqlite3.Error:
        return []  # not created yet, or locked by the writer this very moment


def _killed_run(
    docs: Path, data: Path, cwd: Path, *, when: Callable[[list[tuple[str, float]], float], bool],
    then_s: float,
) -> str:  # fmt: skip
    """Start an ingest, SIGKILL it ``then_s`` seconds after ``when(state rows, start)`` holds.

    Watching the state file puts kills inside the write phase (between and during
    commits), not only in start-up or embedding. Returns what the kill left behind.
    """
    start = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", str(docs), "--data-dir", str(data), "--json"],
        cwd=cwd,
        env=cli_env(**SMALL_COMMITS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while proc.poll() is None and not when(_state_rows(cwd, data), start):
        time.sleep(0.01)
    time.sleep(then_s)
    proc.send_signal(signal.SIGKILL)
    outcome = "killed" if proc.wait() == -signal.SIGKILL else "finished"
    statuses = Counter(status for status, _ in _state_rows(cwd, data))
    return f"{outcome}: {dict(statuses)}"


def _pending_now(rows: list[tuple[str, float]], start: float) -> bool:
    return any(status == "pending" for status, t in rows if t >= start)


def _done_at_least(n: int) -> Callable[[list[tuple[str, float]], float], bool]:
    return lambda rows, start: sum(status == "done" for status, t in rows if t >= start) >= n


def _written_since_start(rows: list[tuple[str, float]], start: float) -> bool:
    return any(t >= start for _, t in rows)


def _clean_ingest(docs: Path, data: Path, cwd: Path) -> None:
    """A complete run, in this process (it repairs the same way; no interpreter start-up)."""
    forget_cached_clients()  # a killed process wrote this store since we last opened it
    report = ingest(make_settings(cwd, docs_dir=docs, data_dir=data, embed_batch=1))
    assert report.failed == [], report.failed


def test_ingest_killed_at_any_moment_is_repaired_to_exactly_a_clean_store(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    corpus = write_corpus(docs, paragraphs=2)
    for topic in TOPICS:
        (docs / "notes" / f"{topic}.md").parent.mkdir(exist_ok=True)
        (docs / "notes" / f"{topic}.md").write_text(f"# {topic}\n\n{prose(topic, 4)}")
    rng = random.Random(20261121)
    victim = tmp_path / "victim"

    # Round 1: a first ingest killed again and again: while starting or embedding,
    # right after the first commits, and a little after later ones.
    _clean_ingest(docs, tmp_path / "clean1", tmp_path)
    kills = [
        # Within interpreter and Chroma start-up: lands even when a quiet machine
        # would finish this small corpus in a second or two.
        (lambda rows, start: True, rng.uniform(0.2, 0.8)),
        (_pending_now, 0.0),
        (_done_at_least(1), rng.uniform(0.0, 0.3)),
        (_pending_now, rng.uniform(0.0, 0.05)),
    ]
    outcomes = [_killed_run(docs, victim, tmp_path, when=w, then_s=t) for w, t in kills]
    assert sum(o.startswith("killed") for o in outcomes) >= 2, outcomes
    _clean_ingest(docs, victim, tmp_path)
    assert _snapshot(tmp_path, victim) == _snapshot(tmp_path, tmp_path / "clean1"), outcomes

    # Round 2: an incremental update (changed, deleted, added files) killed midway.
    corpus["kitchen/bread.txt"].write_text(prose("bread", 5) + "\n\nRye needs more water.")
    corpus["volcanoes.md"].unlink()
    (docs / "notes" / "chess.md").unlink()
    (docs / "new.md").write_text(f"# New\n\n{prose('tides', 3)}")
    _clean_ingest(docs, tmp_path / "clean2", tmp_path)
    kills = [(_pending_now, 0.0), (_written_since_start, rng.uniform(0.0, 0.2))]
    outcomes += [_killed_run(docs, victim, tmp_path, when=w, then_s=t) for w, t in kills]
    _clean_ingest(docs, victim, tmp_path)
    assert _snapshot(tmp_path, victim) == _snapshot(tmp_path, tmp_path / "clean2"), outcomes
    print(outcomes)
