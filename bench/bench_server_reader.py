"""What a chat on another machine pays when the store is a Chroma server.

    python -m bench.bench_server_reader [--chunks 5000] [--rounds 30]

Starts `chroma run` on loopback in a temporary folder, fills one collection with
synthetic chunks (random unit vectors, text drawn from a word list of realistic
frequencies), and measures, interleaved in one process:

- the generation check a reader makes before every search: the server's collection
  metadata against the local store's generation file;
- one hybrid search (BM25 and dense, the question embedded by ONNX), so the check
  can be read as a share of a search;
- building the BM25 index of a reader whose data folder is empty (every chunk read
  back from the server), against a reader that already has one catching up after
  the owner changed one file (the sources' hashes and counts compared, that file
  read again).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from rag.bm25 import load_bm25_index
from rag.retrieve import Retriever
from rag.settings import Settings
from rag.store import Chunk, ChunkStore, bump_generation, read_generation

CHROMA = Path(sys.executable).parent / "chroma"
MODELS = Path(__file__).resolve().parents[1] / ".data" / "models"


def _start_server(folder: Path, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [str(CHROMA), "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).close()
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("chroma run did not start")


def _fill(settings: Settings, chunks: int) -> None:
    rng = random.Random(7)
    words = [f"w{i}" for i in range(20_000)]
    weights = [1 / (i + 1) for i in range(len(words))]  # Zipf-like document frequencies
    vectors = np.random.default_rng(7).standard_normal((chunks, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    batch = [
        Chunk(
            f"f{i // 10}.md#{i % 10}",
            f"f{i // 10}.md",
            i % 10,
            " ".join(rng.choices(words, weights, k=120)),
        )
        for i in range(chunks)
    ]
    ChunkStore(settings).add(batch, vectors)
    bump_generation(settings)


def _reader(base: dict[str, object], folder: Path, port: int) -> Settings:
    return Settings(**base, data_dir=folder, chroma_host="127.0.0.1", chroma_port=port)  # type: ignore[arg-type]


def _change_one_file(owner: Settings, round_: int) -> None:
    """What the owner's ingest does for one edited file: its chunks rewritten, a new hash."""
    store = ChunkStore(owner)
    edited = [
        dataclasses.replace(c, text=f"{c.text} edit{round_}", file_sha256=f"edit{round_}")
        for c in store.chunks_of("f0.md")
    ]
    store.delete_source("f0.md")
    store.add(edited, np.tile(np.eye(1, 384, dtype=np.float32), (len(edited), 1)))
    bump_generation(owner)


def _catch_up_s(reader: Settings, chunks: int) -> float:
    start = time.perf_counter()
    index = load_bm25_index(reader, ChunkStore(reader, create=False))
    took = time.perf_counter() - start
    assert len(index) == chunks and index.generation == read_generation(reader)
    index.close()
    return took


def _ms(call: object, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_server_reader")
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-server-"))
    port = 18000 + os.getpid() % 1000
    server = _start_server(root / "server", port)
    try:
        base = {"_env_file": None, "docs_dir": root / "docs", "models_dir_override": MODELS}
        owner = Settings(**base, data_dir=root / "owner", chroma_host="127.0.0.1", chroma_port=port)
        local = Settings(**base, data_dir=root / "local")
        _fill(owner, args.chunks)
        bump_generation(local)
        retriever = Retriever(owner)
        retriever.search("w3 w50 w700", 5)  # load the models and the index once
        server_gen, local_gen, search = [], [], []
        for _ in range(3):  # interleaved, so load drift hits every variant alike
            server_gen.append(_ms(lambda: read_generation(owner), args.rounds))
            local_gen.append(_ms(lambda: read_generation(local), args.rounds))
            search.append(_ms(lambda: retriever.search("w3 w50 w700", 5), args.rounds))
        reader = _reader(base, root / "follower", port)
        load_bm25_index(reader, ChunkStore(reader, create=False)).close()
        builds, follows = [], []
        for i in range(3):  # the owner changes one file; a new reader and a follower catch up
            _change_one_file(owner, i)
            fresh = _reader(base, root / f"fresh{i}", port)
            builds.append(_catch_up_s(fresh, args.chunks))
            follows.append(_catch_up_s(reader, args.chunks))
        gen_s, gen_l, s = (statistics.median(v) for v in (server_gen, local_gen, search))
        print(f"chunks {args.chunks}, load {os.getloadavg()[0]:.2f}")
        print(f"generation check: server {gen_s:.2f} ms, local file {gen_l:.3f} ms")
        print(f"hybrid search (with its check) {s:.1f} ms; the server check is {gen_s / s:.0%}")
        build, follow = statistics.median(builds), statistics.median(follows)
        print(
            f"reader BM25 build from the server: {build:.2f} s median of 3"
            f" ({args.chunks / build:.0f} chunks/s); catching up after one changed file:"
            f" {follow:.2f} s ({follow / build:.2f}x)"
        )
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
