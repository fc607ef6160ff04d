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
from pathlib import Path

import pytest

from ingest.pipeline import state_path
from rag.store import ChunkStore, forget_cached_clients
from tests.conftest import make_settings
from tests.documents import TOPICS, prose, write_corpus
from tests.test_ingest_cli import _env, run_ingest

pytestmark = pytest.mark.slow


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


def _killed_run(docs: Path, data: Path, after_s: float, cwd: Path) -> str:
    """Start an ingest, SIGKILL it after ``after_s`` seconds; returns what it was doing."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", str(docs), "--data-dir", str(data), "--json"],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(after_s)
    proc.send_signal(signal.SIGKILL)
    return "killed" if proc.wait() == -signal.SIGKILL else "finished before the kill"


def _clean_ingest(docs: Path, data: Path, cwd: Path) -> float:
    start = time.monotonic()
    done = run_ingest(docs, "--data-dir", data, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - start


def test_ingest_killed_at_any_moment_is_repaired_to_exactly_a_clean_store(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    corpus = write_corpus(docs, paragraphs=2)
    for topic in TOPICS:
        (docs / "notes" / f"{topic}.md").parent.mkdir(exist_ok=True)
        (docs / "notes" / f"{topic}.md").write_text(f"# {topic}\n\n{prose(topic, 4)}")
    rng = random.Random(20261121)
    victim = tmp_path / "victim"

    # Round 1: a first ingest killed again and again, each kill hitting a later moment.
    duration = _clean_ingest(docs, tmp_path / "clean1", tmp_path)
    # Each window is a fraction of a clean run (about a third of which is start-up).
    windows = [(0.3, 0.5), (0.4, 0.65), (0.55, 0.9)]
    outcomes = [
        _killed_run(docs, victim, rng.uniform(lo, hi) * duration, tmp_path) for lo, hi in windows
    ]
    assert "killed" in outcomes, outcomes
    _clean_ingest(docs, victim, tmp_path)
    assert _snapshot(tmp_path, victim) == _snapshot(tmp_path, tmp_path / "clean1")

    # Round 2: an incremental update (changed, deleted, added files) killed midway.
    corpus["kitchen/bread.txt"].write_text(prose("bread", 5) + "\n\nRye needs more water.")
    corpus["volcanoes.md"].unlink()
    (docs / "notes" / "chess.md").unlink()
    (docs / "new.md").write_text(f"# New\n\n{prose('tides', 3)}")
    duration = _clean_ingest(docs, tmp_path / "clean2", tmp_path)
    outcomes = [
        _killed_run(docs, victim, rng.uniform(lo, hi) * duration, tmp_path)
        for lo, hi in windows[1:]
    ]
    _clean_ingest(docs, victim, tmp_path)
    assert _snapshot(tmp_path, victim) == _snapshot(tmp_path, tmp_path / "clean2")
