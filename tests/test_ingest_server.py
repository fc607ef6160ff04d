"""Scale-out: with CHROMA_HOST set, ingest writes to a real `chroma run` server on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.pipeline import ingest
from rag.embed import get_embedder
from rag.retrieve import Retriever
from rag.store import ChunkStore
from tests.support import free_port, make_settings, stop_process
from tests.documents import write_corpus

pytestmark = [pytest.mark.slow, pytest.mark.embedder]
# The `chroma` script installed next to this interpreter (whatever the venv is called).
CHROMA = Path(sys.executable).parent / "chroma"


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[int]:
    """A real Chroma server on a free loopback port, stopped at the end; yields the port."""
    port = free_port()
    log = (tmp_path / "chroma.log").open("w")
    server = subprocess.Popen(
        [
            str(CHROMA),
            "run",
            "--path",
            str(tmp_path / "server-data"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1
                ).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"chroma run did not start: {(tmp_path / 'chroma.log').read_text()[-2000:]}"
                    )
                time.sleep(0.2)
        yield port
    finally:
        stop_process(server, timeout_s=10)
        log.close()


def test_ingest_writes_to_a_chroma_server_and_it_is_searchable(
    tmp_path: Path, chroma_server: int
) -> None:
    settings = make_settings(tmp_path, chroma_host="127.0.0.1", chroma_port=chroma_server)
    write_corpus(settings.docs_dir)
    report = ingest(settings)
    assert len(report.added) == 5 and report.failed == []
    assert not settings.chroma_dir.exists(), "nothing may go to the embedded store"

    store = ChunkStore(settings)
    assert store.count() == report.chunks
    assert {c.source for c in store.iter_chunks()} == set(report.added)
    best, _ = store.query(get_embedder(settings).embed_query("when are spring tides?"), k=1)[0]
    assert best.source == "sea/tides guide.pdf" and best.page == 1
    # Hybrid search reads the same server (dense) and the BM25 index ingest saved.
    hits = Retriever(settings).search("when are spring tides?", 3)
    assert hits[0].source == "sea/tides guide.pdf" and hits[0].page == 1
    assert hits[0].dense_rank is not None and hits[0].bm25_rank is not None

    (settings.docs_dir / "volcanoes.md").unlink()
    again = ingest(settings)
    assert again.removed == ["volcanoes.md"] and len(again.unchanged) == 4
    assert "volcanoes.md" not in {c.source for c in ChunkStore(settings).iter_chunks()}
