"""Scale-out: with CHROMA_HOST set, ingest writes to a real `chroma run` server on loopback.

Two data folders stand for two machines: each has its own lock, ingest state and
BM25 index, and both point at one server.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from ingest.owner import CollectionOwned
from ingest.pipeline import ingest
from rag.bm25 import Bm25Index, index_path
from rag.embed import get_embedder
from rag.errors import RagError
from rag.retrieve import Retriever
from rag.settings import Settings
from rag.store import Chunk, ChunkStore, bump_generation, read_generation
from tests.documents import write_corpus
from tests.support import cli_env, free_port, make_settings, run_module, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.embedder]
# The `chroma` script installed next to this interpreter (whatever the venv is called).
CHROMA = Path(sys.executable).parent / "chroma"


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[int]:
    """A real Chroma server on a free loopback port, stopped at the end; yields the port."""
    with running_chroma(tmp_path) as port:
        yield port


@contextmanager
def running_chroma(tmp_path: Path) -> Iterator[int]:
    """`chroma run` on a free loopback port while the block runs; yields the port."""
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


def _machine(tmp_path: Path, name: str, port: int, **overrides: object) -> Settings:
    """Settings of one machine: its own docs and data folders, the shared server."""
    return make_settings(tmp_path / name, chroma_host="127.0.0.1", chroma_port=port, **overrides)


def _stored(settings: Settings) -> dict[str, str]:
    """Every chunk id in the server collection, with its text."""
    return {c.id: c.text for c in ChunkStore(settings).iter_chunks()}


def test_a_second_data_folder_is_refused_and_the_owners_chunks_stay(
    tmp_path: Path, chroma_server: int
) -> None:
    owner = _machine(tmp_path, "a", chroma_server)
    write_corpus(owner.docs_dir)
    first = ingest(owner)
    before = _stored(owner)
    assert len(before) == first.chunks > 0

    # Another machine, whose docs differ and whose state is empty: before this design
    # it reset the collection. Now it writes nothing and says whose it is.
    other = _machine(tmp_path, "b", chroma_server)
    (other.docs_dir / "other.md").write_text("# Other\n\nA note only the second machine has.\n")
    with pytest.raises(CollectionOwned) as refused:
        ingest(other)
    sentence = str(refused.value)
    assert str(owner.data_dir.resolve()) in sentence and "'chunks'" in sentence
    assert f"127.0.0.1:{chroma_server}" in sentence and "RAG_COLLECTION" in sentence
    assert _stored(owner) == before

    # The owner keeps ingesting into it.
    (owner.docs_dir / "glaciers.md").write_text("# Glaciers\n\nIce moves downhill slowly.\n")
    again = ingest(owner)
    assert again.added == ["glaciers.md"] and len(again.unchanged) == 5
    assert set(before) < set(_stored(owner))

    # Another collection name is the second machine's own.
    own = ingest(other.with_overrides(collection="team-b"))
    assert own.added == ["other.md"]
    assert {
        c.source for c in ChunkStore(other.with_overrides(collection="team-b")).iter_chunks()
    } == {"other.md"}
    assert "other.md" not in {c.split("#")[0] for c in _stored(owner)}


def test_an_unowned_collection_from_an_older_version_is_adopted(
    tmp_path: Path, chroma_server: int
) -> None:
    legacy = _machine(tmp_path, "a", chroma_server)
    write_corpus(legacy.docs_dir)
    # What an older version left: chunks in the collection and no owner in its metadata.
    ChunkStore(legacy).add(
        [Chunk("old.md#0", "old.md", 0, "Written before collections had owners.")],
        np.eye(1, 384, dtype=np.float32),
    )
    report = ingest(legacy)
    assert any("adopted" in w.error for w in report.warnings)
    # This state never knew the collection, so it is rebuilt from the docs folder.
    assert {c.split("#")[0] for c in _stored(legacy)} == set(report.added)
    assert read_generation(legacy) != ""

    with pytest.raises(CollectionOwned):
        ingest(_machine(tmp_path, "b", chroma_server))
    assert ingest(legacy).warnings == []


def test_the_cli_refuses_a_second_folder_until_it_takes_over_and_then_refuses_the_first(
    tmp_path: Path, chroma_server: int
) -> None:
    first = _machine(tmp_path, "a", chroma_server)
    write_corpus(first.docs_dir)
    ingest(first)
    second = _machine(tmp_path, "b", chroma_server)
    (second.docs_dir / "other.md").write_text("# Other\n\nThe second machine's note.\n")
    env = cli_env(CHROMA_HOST="127.0.0.1", CHROMA_PORT=str(chroma_server))
    args = (second.docs_dir, "--data-dir", second.data_dir)

    refused = run_module("ingest", *args, cwd=tmp_path, env=env)
    assert refused.returncode == 1
    assert refused.stderr.startswith("ingest: The collection 'chunks' on the Chroma server")
    assert "--take-over" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert "other.md" not in {c.split("#")[0] for c in _stored(first)}

    taken = run_module("ingest", *args, "--take-over", cwd=tmp_path, env=env)
    assert taken.returncode == 0, taken.stderr
    assert "took the collection over" in taken.stdout
    assert {c.split("#")[0] for c in _stored(second)} == {"other.md"}
    with pytest.raises(CollectionOwned) as back:
        ingest(first)
    assert str(second.data_dir.resolve()) in str(back.value)
    assert {c.split("#")[0] for c in _stored(second)} == {"other.md"}


def test_a_reader_with_an_empty_data_folder_searches_both_halves_and_sees_new_files(
    tmp_path: Path, chroma_server: int
) -> None:
    owner = _machine(tmp_path, "a", chroma_server)
    write_corpus(owner.docs_dir)
    ingest(owner)
    reader = Retriever(_machine(tmp_path, "reader", chroma_server))

    hits = reader.search("when are spring tides?", 3)
    assert hits[0].source == "sea/tides guide.pdf"
    assert hits[0].dense_rank is not None and hits[0].bm25_rank is not None

    # The owner ingests more; the reader follows the generation kept with the collection.
    (owner.docs_dir / "glaciers.md").write_text(
        "# Glaciers\n\nThe Zwischbergen glacier moves downhill slowly.\n"
    )
    ingest(owner)
    hits = reader.search("Zwischbergen", 3, mode="bm25")
    assert hits and hits[0].source == "glaciers.md"
    assert "glaciers.md" in reader.sources()
    assert not (tmp_path / "reader" / "data" / "ingest-state.sqlite3").exists()

    (owner.docs_dir / "glaciers.md").unlink()
    ingest(owner)
    assert reader.search("Zwischbergen", 3, mode="bm25") == []

    # Re-chunked by the owner (a reset: same files, same hashes, other chunks), the
    # reader's keyword index holds exactly the collection's new chunks.
    ingest(owner.with_overrides(chunk_tokens=40, chunk_overlap=8))
    hits = reader.search("seismometers eruption", 50, mode="bm25")
    assert hits and {(h.chunk_id, h.text) for h in hits} <= set(_stored(owner).items())
    assert len(Bm25Index.open(index_path(reader.settings))) == len(_stored(owner))

    # A reset that keeps every file's hash and chunk count (a chunker cutting elsewhere)
    # is told apart by the collection's new id.
    store = ChunkStore(owner)
    kept = list(store.iter_chunks())
    store.reset()
    store.add(
        [dataclasses.replace(c, text=f"{c.text} Quillwort.") for c in kept],
        np.tile(np.eye(1, 384, dtype=np.float32), (len(kept), 1)),
    )
    bump_generation(owner)
    assert len(reader.search("quillwort", 50, mode="bm25")) == len(kept)


def test_a_reader_whose_server_stopped_is_told_so_in_a_sentence(tmp_path: Path) -> None:
    with running_chroma(tmp_path) as port:
        owner = _machine(tmp_path, "a", port)
        (owner.docs_dir / "tides.md").write_text("# Tides\n\nSpring tides follow new moons.\n")
        ingest(owner)
        reader = Retriever(_machine(tmp_path, "reader", port))
        assert reader.search("spring tides", 1, mode="bm25")[0].source == "tides.md"
    with pytest.raises(RagError) as stopped:
        reader.search("spring tides", 1)
    assert f"127.0.0.1:{port} did not answer" in str(stopped.value)
    assert "CHROMA_HOST" in str(stopped.value)
