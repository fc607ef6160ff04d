"""Embedding throughput: our ONNX path against sentence-transformers on torch and fastembed.

Run as ``python -m bench.bench_embed [--chunks N] [--rounds R] [--quick] [--no-quality]``; prints
a markdown section for bench/RESULTS.md. Every path embeds the same texts in the same process,
taking turns slice by slice, with truncation at 256 tokens and one thread per core:

- sentence-transformers on torch fp32 (the 1.00 baseline and the cosine reference), batch 32;
- ``rag.embed.Embedder`` as the app runs it (batches of ``RAG_EMBED_BATCH`` side by side, one
  thread each) on the fused fp32 graph and on its int8 variant;
- the embedder as it ran before, one batch of 32 at a time with every op on all threads;
- fastembed pointed at the very same ONNX files (a folder of symlinks plus the package's
  tokenizer configs, with its truncation set to 256 so it sees the same tokens), batch 32.

The texts are real English prose about code: the docstrings of the Python standard library on
this machine (no network needed), cut into 200-word chunks (what ingest embeds; nearly all
exceed 256 tokens) and into a second set of mixed lengths (queries and short last chunks among
full ones), where sorting by length before batching matters.

Then, unless ``--no-quality``, retrieval quality per precision (not affected by load): the
shipped ``docs/`` and the test corpus are ingested with the real pipeline and every answerable
question of their QA sets (retrieval and answer sets, no follow-ups) is searched dense and
hybrid with :func:`rag.eval.evaluate`.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rag.embed import (
    MODEL_FILES,
    TOKENIZER_NAME,
    Embedder,
    load_tokenizer,
    read_manifest,
    session_options,
)
from rag.eval import QA, evaluate
from rag.export_embedder import source_model_dir
from rag.retrieve import Retriever
from rag.settings import Settings, get_settings

WORDS_PER_CHUNK = 200
BATCH = 32
MAX_TOKENS = 256
MIXED_WORDS = (8, 200, 30, 120, 12, 200, 60, 160, 20, 90)

Embed = Callable[[Sequence[str]], np.ndarray]


def stdlib_words() -> Iterator[str]:
    """The words of the standard library's docstrings on this machine, always in one order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if "test" in path.parent.name or path.name.startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= 20:  # skip one-liners like "Return self."
                    yield from doc.split()


def stdlib_chunks(count: int, lengths: Sequence[int] = (WORDS_PER_CHUNK,)) -> list[str]:
    """``count`` chunks of standard-library docstring text, cycling through word ``lengths``."""
    words = stdlib_words()
    chunks = []
    for i in range(count):
        chunk = list(itertools.islice(words, lengths[i % len(lengths)]))
        if not chunk:
            break
        chunks.append(" ".join(chunk))
    return chunks


def fastembed_loader(embedder_dir: Path, precision: str, threads: int) -> Embed:
    """fastembed's TextEmbedding on our ONNX file, offline; raises if it cannot load it."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    source, _ = source_model_dir()
    embedder_dir = embedder_dir.resolve()  # symlink targets must not be relative
    folder = Path(tempfile.mkdtemp(prefix=f"fastembed-{precision}-"))
    # fastembed reads the HF tokenizer configs beside tokenizer.json and truncates at the
    # config's model_max_length (512 for this package): cap it at 256 like everyone else.
    (folder / "model.onnx").symlink_to(embedder_dir / MODEL_FILES[precision])
    (folder / TOKENIZER_NAME).symlink_to(embedder_dir / TOKENIZER_NAME)
    for name in ("config.json", "special_tokens_map.json"):
        (folder / name).symlink_to(source / name)
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["model_max_length"] = MAX_TOKENS
    (folder / "tokenizer_config.json").write_text(json.dumps(config))

    name = f"local/all-MiniLM-L6-v2-onnx-{precision}"
    try:
        TextEmbedding.add_custom_model(
            model=name,
            pooling=PoolingType.MEAN,
            normalization=True,
            sources=ModelSource(hf=name),  # never fetched: specific_model_path wins
            dim=384,
            model_file="model.onnx",
        )
    except ValueError:  # registered by an earlier main() in this process
        pass
    model = TextEmbedding(
        name, threads=threads, specific_model_path=str(folder), local_files_only=True
    )
    return lambda texts: np.stack(list(model.embed(list(texts), batch_size=BATCH)))


def torch_loader(threads: int) -> Embed:
    """sentence-transformers on torch fp32, from the package folder (the reference)."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    source, _ = source_model_dir()
    model = SentenceTransformer(str(source), device="cpu")
    model.max_seq_length = MAX_TOKENS
    return lambda texts: model.encode(
        list(texts), batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True
    )


def onnx_loader(settings: Settings, precision: str, *, before: bool = False) -> Embed:
    """Our query/ingest path, :class:`rag.embed.Embedder`, with the app's batch size.

    ``before=True`` runs it as it was until batches went side by side: one batch of 32 at a
    time, every op split over all threads (spinning between ops, onnxruntime's default).
    """
    embedder = Embedder(
        settings.with_overrides(embed_precision=precision, embed_max_tokens=MAX_TOKENS)
    )
    if not before:
        return embedder.embed
    model = embedder.embedder_dir / MODEL_FILES[precision]
    session = ort.InferenceSession(  # a variant for comparison only
        str(model), sess_options=session_options(embedder.workers),
        providers=["CPUExecutionProvider"],
    )
    embedder._session = session

    def one_batch_at_a_time(texts: Sequence[str]) -> np.ndarray:
        encodings = embedder._tokenizer.encode_batch(list(texts))
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        out = np.empty((len(texts), embedder.dim), dtype=np.float32)
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            out[batch] = embedder._embed_encoded([encodings[i] for i in batch])
        return out

    return one_batch_at_a_time


def real_chunks(settings: Settings, copies: int) -> list[str]:
    """The chunks ingest cuts from ``docs/`` and the test corpus, ``copies`` times over."""
    from ingest.chunker import Chunker
    from ingest.loaders import load_document
    from tests.corpus import build_corpus

    repo = Path(__file__).resolve().parents[1]
    chunker = Chunker.from_settings(settings)
    folders = [repo / "docs", build_corpus(Path(tempfile.mkdtemp(prefix="corpus-")))]
    texts = []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            source = path.relative_to(folder).as_posix()
            texts += [c.text for c in chunker.run(load_document(source, path.read_bytes()), "")]
    return texts * copies


def interleaved(
    embedders: list[Embed], texts: list[str], rounds: int
) -> tuple[list[float], list[np.ndarray]]:
    """Chunks per second of each embedder and its vectors, measured in rounds of turns.

    The machine is shared, so load comes and goes; taking turns slice by slice (rotating who
    goes first) spreads that noise evenly instead of letting it land on one path.
    """
    for embed in embedders:
        embed(texts[:BATCH])  # warm-up: session initialisation and first allocations
    seconds = [0.0] * len(embedders)
    parts: list[list[np.ndarray]] = [[] for _ in embedders]
    size = -(-len(texts) // rounds)
    for r, start in enumerate(range(0, len(texts), size)):
        part = texts[start : start + size]
        for i in [(r + j) % len(embedders) for j in range(len(embedders))]:
            began = time.perf_counter()
            parts[i].append(embedders[i](part))
            seconds[i] += time.perf_counter() - began
    return [len(texts) / s for s in seconds], [np.concatenate(p) for p in parts]


Row = tuple[str, str, float | None, np.ndarray | None, str]


def measure(loaded: list[tuple[str, str, Embed]], texts: list[str], rounds: int) -> list[Row]:
    """(path, precision, chunks/s, vectors, "") for every loaded path, measured interleaved."""
    rates, vectors = interleaved([embed for _, _, embed in loaded], texts, rounds)
    return [
        (label, precision, rate, vecs, "")
        for (label, precision, _), rate, vecs in zip(loaded, rates, vectors, strict=True)
    ]


def table(rows: list[Row], failed: list[Row]) -> list[str]:
    """Markdown table rows with ratios against torch and fastembed at the same precision."""
    rate_of = {(label.split(",")[0].split(":")[0], p): r for label, p, r, _, _ in rows}
    torch_rate = rate_of.get(("sentence-transformers", "fp32"))
    reference = next((v for label, _, _, v, _ in rows if label.startswith("sentence")), None)
    lines = [
        "| path | precision | chunks/s | vs torch | vs fastembed (same precision) "
        "| cosine vs torch (mean / min) |",
        "|---|---|---|---|---|---|",
    ]
    for label, precision, rate, vectors, _ in rows:
        assert rate is not None and vectors is not None
        fast = rate_of.get(("fastembed", precision))
        vs_fast = f"{rate / fast:.2f}" if fast and label.startswith("ours") else ""
        vs_torch = f"{rate / torch_rate:.2f}" if torch_rate else ""
        cosine = ""
        if reference is not None:
            cos = (vectors * reference).sum(axis=1)
            cosine = f"{cos.mean():.4f} / {cos.min():.4f}"
        lines.append(f"| {label} | {precision} | {rate:.1f} | {vs_torch} | {vs_fast} | {cosine} |")
    for label, precision, _, _, error in failed:
        lines.append(f"| {label} | {precision} | could not run: {error} | | | |")
    return lines + ["", *_verdict(rate_of)]


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark and return the markdown section for bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_embed", description=__doc__)
    parser.add_argument("--chunks", type=int, default=1000, help="~200-word chunks per path")
    parser.add_argument("--rounds", type=int, default=5, help="turns the paths take")
    parser.add_argument("--quick", action="store_true", help="150 chunks, 2 rounds (smoke run)")
    parser.add_argument("--no-quality", action="store_true", help="skip the retrieval quality")
    args = parser.parse_args(argv)
    count, rounds = (150, 2) if args.quick else (args.chunks, args.rounds)

    settings = get_settings()
    threads = settings.threads or os.cpu_count() or 1
    manifest = read_manifest(settings.embedder_dir)
    uniform = stdlib_chunks(count)
    # Queries, headings, short last chunks of files and full chunks: here sorting by length
    # before batching pays, which a set of equally long chunks cannot show.
    mixed = stdlib_chunks(max(count * 2 // 5, 20), lengths=MIXED_WORDS)

    paths: list[tuple[str, str, Callable[[], Embed]]] = [
        ("sentence-transformers, torch", "fp32", lambda: torch_loader(threads)),
        ("ours: rag.embed, fused ONNX", "fp32", lambda: onnx_loader(settings, "fp32")),
        ("ours: rag.embed, fused ONNX", "int8", lambda: onnx_loader(settings, "int8")),
        ("before: one batch of 32 at a time, ops on all threads", "fp32",
         lambda: onnx_loader(settings, "fp32", before=True)),
        ("before: one batch of 32 at a time, ops on all threads", "int8",
         lambda: onnx_loader(settings, "int8", before=True)),
        ("fastembed, same ONNX file", "fp32",
         lambda: fastembed_loader(settings.embedder_dir, "fp32", threads)),
        ("fastembed, same ONNX file", "int8",
         lambda: fastembed_loader(settings.embedder_dir, "int8", threads)),
    ]
    loaded: list[tuple[str, str, Embed]] = []
    failed: list[Row] = []
    for label, precision, load in paths:
        try:
            embed = load()
            embed(uniform[:2])
        except Exception as exc:  # a baseline that cannot run offline is a result, not a crash
            failed.append((label, precision, None, None, f"{type(exc).__name__}: {exc}"[:200]))
            continue
        loaded.append((label, precision, embed))

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    uniform_rows = measure(loaded, uniform, rounds)
    mixed_rows = measure(loaded, mixed, rounds)
    real = real_chunks(settings, copies=max(1, count // 100))
    real_rows = measure(loaded, real, rounds)
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()[0]

    def tokens(texts: list[str]) -> str:
        counts = [len(e.ids) for e in load_tokenizer(settings).encode_batch(texts)]
        return (
            f"median {int(np.median(counts))} tokens, {sum(n > MAX_TOKENS for n in counts)} "
            f"of {len(counts)} truncated at {MAX_TOKENS}"
        )

    flag = " --quick" if args.quick else f" --chunks {args.chunks} --rounds {args.rounds}"
    return "\n".join([
        "## Embeddings (bench_embed)",
        "",
        f"`python -m bench.bench_embed{flag}`, {seconds:.0f} s of measurement, 1-minute load "
        f"average {load_before:.1f} before and {load_after:.1f} after on {os.cpu_count()} cores. "
        f"Model {manifest['model']} from {manifest['source']['package']} "
        f"{manifest['source']['version']}; batch {BATCH} (ours: {settings.embed_batch}, "
        f"{threads} side by side), truncation at {MAX_TOKENS} tokens, "
        f"{threads} threads for every path. All paths run in one process on the same texts "
        f"(the standard library's docstrings) and take turns over {rounds} slices, so load "
        f"from other work on the machine spreads evenly over them; cosines compare each "
        f"path's vectors of the same texts with torch's.",
        "",
        f"**Chunks of {WORDS_PER_CHUNK} words** ({tokens(uniform)}), as ingest produces:",
        "",
        *table(uniform_rows, failed),
        "",
        f"**Mixed lengths** ({'/'.join(map(str, MIXED_WORDS))} words, {tokens(mixed)}): "
        "queries, headings and short last chunks among full ones.",
        "",
        *table(mixed_rows, failed),
        "",
        f"**Real chunks** (what ingest cuts from `docs/` and the test corpus of `tests/corpus.py`,"
        f" {len(real) // max(1, count // 100)} chunks repeated {max(1, count // 100)}x in input"
        f" order, {tokens(real)}).",
        "",
        *table(real_rows, failed),
        *([] if args.no_quality else ["", *quality_section(settings)]),
    ]) + "\n"


def answerable(path: Path) -> list[QA]:
    """The questions of a QA or answer set that name their file and stand alone."""
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("sources") and not record.get("refuse") and not record.get("history"):
            pages = tuple(record.get("pages") or ())
            items.append(QA(record["q"], tuple(record["sources"]), pages))
    return items


def quality_section(settings: Settings) -> list[str]:
    """Markdown rows of recall@1, recall@5 and MRR per store, precision and mode."""
    from ingest.pipeline import ingest
    from tests.corpus import build_corpus

    repo, work = Path(__file__).resolve().parents[1], Path(tempfile.mkdtemp(prefix="quality-"))
    qa = repo / "tests" / "qa"
    stores = {
        "docs/": (
            repo / "docs", answerable(qa / "sample_docs.jsonl") + answerable(qa / "answers.jsonl")
        ),
        "test corpus": (build_corpus(work / "corpus"),
                        answerable(qa / "corpus.jsonl") + answerable(qa / "answers_corpus.jsonl")),
    }
    lines = [
        (
            "**Retrieval quality** (not affected by load): `docs/` and the test corpus of "
            "`tests/corpus.py` ingested with the real pipeline per precision, then every "
            "question of `sample_docs.jsonl` + `answers.jsonl` and of `corpus.jsonl` + "
            "`answers_corpus.jsonl` that names its file and has no history, searched with "
            "`rag.eval.evaluate`."
        ),
        "",
        "| store (questions) | precision | mode | recall@1 | recall@5 | MRR@5 |",
        "|---|---|---|---|---|---|",
    ]
    scores: dict[tuple[str, str, str], tuple[float, float, float]] = {}
    for (name, (docs, items)), precision in itertools.product(stores.items(), ("fp32", "int8")):
        store = settings.with_overrides(
            docs_dir=docs,
            data_dir=work / f"{name.strip('/').replace(' ', '-')}-{precision}",
            embed_precision=precision,
        )
        ingest(store)
        retriever = Retriever(store)
        for mode in ("dense", "hybrid"):
            at1, at5 = evaluate(retriever, items, 1, mode), evaluate(retriever, items, 5, mode)
            scores[(name, precision, mode)] = (at1.recall, at5.recall, at5.mrr)
            lines.append(
                f"| {name} ({len(items)}) | {precision} | {mode} | {at1.recall:.3f} "
                f"| {at5.recall:.3f} | {at5.mrr:.3f} |"
            )
    holds = all(
        i8 >= f32
        for name in stores
        for i8, f32 in zip(scores[(name, "int8", "hybrid")], scores[(name, "fp32", "hybrid")],
                           strict=True)
    )
    verdict = (
        f"- int8 {'matches or beats' if holds else 'falls below'} fp32's hybrid recall@1, "
        "recall@5 and MRR on every store (hybrid is what the app searches with)."
    )
    return [*lines, "", verdict]


def _verdict(rate_of: dict[tuple[str, str], float | None]) -> list[str]:
    """Say plainly whether the issue's targets (>= 3x torch, >= 1.3x fastembed) were met."""
    torch_rate = rate_of.get(("sentence-transformers", "fp32"))
    out = []
    for precision in ("fp32", "int8"):
        ours = rate_of.get(("ours", precision))
        fast = rate_of.get(("fastembed", precision))
        if not ours or not torch_rate:
            continue
        vs_torch = ours / torch_rate
        text = (
            f"- {precision}: {vs_torch:.2f}x torch (target 3x: "
            f"{'met' if vs_torch >= 3 else 'not met'})"
        )
        if fast:
            text += (
                f", {ours / fast:.2f}x fastembed (target 1.3x: "
                f"{'met' if ours / fast >= 1.3 else 'not met'})"
            )
        else:
            text += ", fastembed could not run"
        out.append(text + ".")
    return out


if __name__ == "__main__":
    print(main())
