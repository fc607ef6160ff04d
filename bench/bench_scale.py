"""Adding one file to a 100k-chunk store: the incremental ingest against a full BM25 rebuild.

    python -m bench.bench_scale [--chunks 100000] [--quick]

The store is built once under ``bench/_work/scale-N`` and reused:

- 100,000 chunks of real text (the paragraphs :func:`bench.bench_search.harvest`
  collects), in sources of 100 chunks, written to Chroma *with* their documents
  (as ingest writes them) and random unit vectors: Chroma's cost does not depend
  on what the vectors mean;
- one small file per source in the docs folder and a matching ingest state, so
  the real :func:`ingest.pipeline.ingest` sees those sources as unchanged.

Then, with the embedder loaded, one real Markdown file is added, edited and deleted
through ``ingest()``; each run is timed end to end (scan and hash of every file,
chunking, embedding, Chroma writes, the BM25 update). For comparison, the same
run also times :func:`rag.bm25.rebuild_bm25_index`, which every changing ingest
paid before the index updated in place (read every chunk back from Chroma, index).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_search import WORK, harvest, make_queries
from bench.bm25_fts5 import Fts5Bm25
from ingest import pipeline
from ingest.pipeline import ingest, state_path, vector_fingerprint
from ingest.state import IngestState
from rag.bm25 import Bm25Index, index_path, load_bm25_index, publish, rebuild_bm25_index
from rag.embed import Embedder, get_embedder
from rag.settings import Settings
from rag.store import Chunk, ChunkStore

REPO = Path(__file__).resolve().parents[1]
_PER_SOURCE = 100
_TARGET_S = 2.0
# The file that is added, edited and removed: a real document of the sample docs.
_NEW_FILE = REPO / "docs" / "user-guide.md"


def _settings(root: Path) -> Settings:
    (root / "docs").mkdir(parents=True, exist_ok=True)
    return Settings(
        _env_file=None,
        docs_dir=root / "docs",
        data_dir=root / "data",
        models_dir_override=REPO / ".data" / "models",
    )


def build(settings: Settings, n: int) -> float:
    """Write ``n`` chunks, their docs files and the ingest state; returns seconds taken."""
    t0 = time.perf_counter()
    pairs = harvest(n, WORK / "harvest.jsonl")
    store = ChunkStore(settings)
    store.reset()
    rng = np.random.default_rng(42)
    done: list[tuple[str, str, int]] = []
    for start in range(0, n, _PER_SOURCE * 40):
        chunks: list[Chunk] = []
        for first in range(start, min(start + _PER_SOURCE * 40, n), _PER_SOURCE):
            source = f"part-{first // _PER_SOURCE:05d}.md"
            body = f"Synthetic source {source}\n".encode()
            (settings.docs_dir / source).write_bytes(body)
            sha = hashlib.sha256(body).hexdigest()
            texts = [text for _, text in pairs[first : first + _PER_SOURCE]]
            chunks += [Chunk(f"{source}#{i}", source, i, t, file_sha256=sha) for i, t in enumerate(texts)]
            done.append((source, sha, len(texts)))
        vectors = rng.normal(size=(len(chunks), 384)).astype(np.float32)
        store.add(chunks, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    with IngestState(state_path(settings)) as state:
        state.mark_done(*done)
        state.set_meta("store", f"{store.location}#{settings.collection}")
        state.set_meta("vectors", vector_fingerprint(settings))
    publish(settings, store, {s: sha for s, sha, _ in done}, rebuild=True)
    (settings.data_dir / "built").write_text(str(n))
    return time.perf_counter() - t0


class _Parts:
    """Seconds spent in the BM25 update and in embedding during one ingest, and chunks embedded."""

    def __init__(self) -> None:
        self.bm25 = self.embed = 0.0
        self.chunks = 0

    def wrap(self, embedder: Embedder) -> None:
        """Time :func:`ingest.pipeline.publish` and ``embedder.embed`` from now on."""
        publish_fn, embed_fn = pipeline.publish, embedder.embed

        def timed_publish(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return publish_fn(*args, **kwargs)
            finally:
                self.bm25 += time.perf_counter() - t0

        def timed_embed(texts: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return embed_fn(texts)
            finally:
                self.embed += time.perf_counter() - t0
                self.chunks += len(texts)

        pipeline.publish = timed_publish  # type: ignore[assignment]
        embedder.embed = timed_embed  # type: ignore[method-assign]


def _timed_ingest(settings: Settings, parts: _Parts) -> tuple[float, str]:
    """Seconds of one ``ingest()`` and a row's breakdown (BM25 update, embedding)."""
    parts.__init__()  # type: ignore[misc]
    t0 = time.perf_counter()
    ingest(settings)
    seconds = time.perf_counter() - t0
    return seconds, (
        f"{parts.bm25:.2f} | {parts.embed:.2f} ({parts.chunks} chunks)" if parts.chunks
        else f"{parts.bm25:.2f} | -"
    )


def _search_latency(settings: Settings, n: int) -> dict[str, float]:
    """BM25 search milliseconds (p50/p95) of the index and of format 4's FTS5 path, interleaved.

    Both search the same chunks (format 4's index is rebuilt from this one's, once);
    ``same`` counts the queries whose top 30 (ids and order) the two agree on.
    """
    held_out = [text for _, text in harvest(n + 400, WORK / "harvest.jsonl")[n:]]
    index = Bm25Index.open(index_path(settings))
    chunks = [Chunk(cid, src, i, text) for cid, src, i, text in index._db.execute(
        "SELECT id, source, idx, text FROM chunks ORDER BY rowid"
    )]
    before = Fts5Bm25.build(index_path(settings).with_name("format4.sqlite3"), chunks, index.generation)
    queries = make_queries(held_out, 100)
    for query in queries[:5]:  # the first search builds the postings; not a steady-state figure
        index.search(query, 30), before.search(query, 30)
    samples: dict[str, list[float]] = {"new": [], "old": []}
    same = 0
    for query in queries:
        t0 = time.perf_counter()
        new = index.search(query, 30)
        t1 = time.perf_counter()
        old = before.search(query, 30)
        samples["old"].append((time.perf_counter() - t1) * 1000)
        samples["new"].append((t1 - t0) * 1000)
        same += [c.id for c, _ in new] == [c.id for c, _ in old]
    index.close()
    before.close()
    figures = {
        f"{name}_p{q}": float(np.percentile(values, q))
        for name, values in samples.items() for q in (50, 95)
    }
    return {**figures, "same": same, "queries": len(queries)}


def _first_search_ms(reader: Bm25Index, query: str) -> float:
    """One search by a reader that was open before the ingest: it reloads its postings."""
    t0 = time.perf_counter()
    reader.search(query, 30)
    return (time.perf_counter() - t0) * 1000


def run(n: int) -> str:
    root = WORK / f"scale-{n}"
    settings = _settings(root)
    built = settings.data_dir / "built"
    build_s = build(settings, n) if not built.exists() or built.read_text() != str(n) else None
    # An index of an older format is rebuilt here, from the store, not inside a timed run.
    load_bm25_index(settings).close()
    embedder = get_embedder(settings)
    embedder.embed(["warm up"])  # the model load is not part of adding a file
    parts = _Parts()
    parts.wrap(embedder)
    target = settings.docs_dir / "guide-new.md"
    target.unlink(missing_ok=True)
    _timed_ingest(settings, parts)  # a previous interrupted run may have left the file ingested

    text = _NEW_FILE.read_text(encoding="utf-8")
    # A reader open all along, as the chat's is: its first search after each ingest reloads.
    reader = Bm25Index.open(index_path(settings))
    probe = "skeg rudder paddle"
    reader.search(probe, 30)
    target.write_text(text, encoding="utf-8")
    add_s, add_parts = _timed_ingest(settings, parts)
    first_ms = [_first_search_ms(reader, probe)]
    hits = reader.search(text[:200], 5)
    found = any(c.source == "guide-new.md" for c, _ in hits)
    target.write_text(text + "\n\nOne more paragraph about the skeg and the rudder.\n")
    edit_s, edit_parts = _timed_ingest(settings, parts)
    first_ms.append(_first_search_ms(reader, probe))
    target.unlink()
    delete_s, delete_parts = _timed_ingest(settings, parts)
    first_ms.append(_first_search_ms(reader, probe))
    reader.close()
    unchanged_s, unchanged_parts = _timed_ingest(settings, parts)
    search = _search_latency(settings, n)
    t0 = time.perf_counter()
    rebuild_bm25_index(settings, ChunkStore(settings))
    rebuild_s = time.perf_counter() - t0

    verdict = "meets" if max(add_s, edit_s, delete_s) < _TARGET_S else "misses"
    lines = [
        "## Adding one file to a 100k-chunk store (bench_scale)",
        "",
        f"`python -m bench.bench_scale --chunks {n}`: {n:,} chunks of real text in"
        f" {n // _PER_SOURCE} sources (random vectors, documents stored as ingest stores them),"
        f" then `{_NEW_FILE.relative_to(REPO)}` ({len(text.split())} words) added, edited and"
        " deleted through `ingest()`, each timed end to end with the embedder already loaded"
        + (f"; building the store took {build_s:.0f} s." if build_s else "; store reused."),
        "",
        ("| run | seconds | of which BM25 update | of which embedding |"
        " first BM25 search after it, ms |"),
        "|---|---|---|---|---|",
        f"| add one file | {add_s:.2f} | {add_parts} | {first_ms[0]:.0f} |",
        f"| edit it | {edit_s:.2f} | {edit_parts} | {first_ms[1]:.0f} |",
        f"| delete it | {delete_s:.2f} | {delete_parts} | {first_ms[2]:.0f} |",
        f"| nothing changed | {unchanged_s:.2f} | {unchanged_parts} | |",
        f"| full BM25 rebuild (what every changing ingest paid before) | {rebuild_s:.2f} | | | |",
        "",
        (f"BM25 search over the {n:,} chunks (`Bm25Index.search`, 30 candidates as hybrid"
        f" search asks, {search['queries']} six-word queries from held-out paragraphs), interleaved"
        " per query with format 4's FTS5 path (`bench/bm25_fts5.py`) on the same chunks:"),
        "",
        "| path | p50 ms | p95 ms |",
        "|---|---|---|",
        (f"| format 4: FTS5 `bm25()` candidates, best 100 rescored | {search['old_p50']:.1f} |"
        f" {search['old_p95']:.1f} |"),
        (f"| format 5: numpy postings, every match scored | {search['new_p50']:.2f} |"
        f" {search['new_p95']:.2f} |"),
        (f"| ratio old / new | {search['old_p50'] / search['new_p50']:.0f}x |"
        f" {search['old_p95'] / search['new_p95']:.0f}x |"),
        "",
        (f"Same top 30 (ids and order) from both paths: {search['same']} of {search['queries']}"
        " queries."),
        f"1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "",
        (f"Adding one file: {add_s:.2f} s, target under {_TARGET_S:g} s: {verdict};"
        f" the full rebuild alone is {rebuild_s / add_s:.1f}x that. The new file was"
        f" {'found' if found else 'NOT found'} by BM25 right after."),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_scale", description=__doc__)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 chunks")
    args = parser.parse_args(argv)
    return run(10_000 if args.quick else args.chunks)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
