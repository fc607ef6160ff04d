"""Retrieval quality: dense-only vs BM25-only vs hybrid, and fp32 vs int8 embeddings.

    python -m bench.bench_recall [--k 5] [--quick]

Ingests the shipped sample documents (``docs/``, QA set ``tests/qa/sample_docs.jsonl``)
and the Brightwater Kayaks test corpus (``tests/corpus.py``, QA set
``tests/qa/corpus.jsonl``) with the real ingest pipeline, once per embedding
precision, under ``bench/_work/recall-*``, then reports recall@1, recall@k and
MRR for every mode with :func:`rag.eval.evaluate`. ``--quick`` skips int8.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ingest.pipeline import ingest
from rag.eval import EvalReport, evaluate, load_qa
from rag.retrieve import MODES, Retriever
from rag.settings import Settings
from tests.corpus import build_corpus

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "_work"
QA_DIR = REPO / "tests" / "qa"


def _store(name: str, docs: Path, precision: str) -> Settings:
    data = WORK / f"recall-{name}-{precision}"
    shutil.rmtree(data, ignore_errors=True)  # always measure a clean ingest of today's files
    settings = Settings(
        _env_file=None,
        docs_dir=docs,
        data_dir=data,
        models_dir_override=REPO / ".data" / "models",
        embed_precision=precision,
    )
    report = ingest(settings)
    if report.failed:
        raise SystemExit(f"ingest of {docs} failed for {report.failed}")
    return settings


Results = dict[tuple[str, str, str], tuple[EvalReport, EvalReport]]


def measure(k: int, precisions: list[str]) -> Results:
    """(set, precision, mode) -> (report at k=1, report at k)."""
    corpus_docs = build_corpus(WORK / "recall-corpus-docs")
    sets = {
        "sample docs": (REPO / "docs", "sample_docs.jsonl"),
        "test corpus": (corpus_docs, "corpus.jsonl"),
    }
    results = {}
    for precision in precisions:
        for name, (docs, qa_file) in sets.items():
            retriever = Retriever(_store(name.replace(" ", "-"), docs, precision))
            qa = load_qa(QA_DIR / qa_file)
            for mode in MODES:
                results[(name, precision, mode)] = (
                    evaluate(retriever, qa, 1, mode),
                    evaluate(retriever, qa, k, mode),
                )
    return results


def main(argv: list[str] | None = None) -> str:
    """Run the measurement and return the markdown section."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_recall", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fp32 only")
    args = parser.parse_args(argv)
    precisions = ["fp32"] if args.quick else ["fp32", "int8"]
    results = measure(args.k, precisions)
    k = args.k
    sizes = {name: len(r[0].results) for (name, _, _), r in results.items()}
    lines = [
        "## Retrieval quality: dense vs BM25 vs hybrid (bench_recall)",
        "",
        f"`python -m bench.bench_recall`: each document set ingested with the real pipeline "
        f"(`ingest()`), then every QA question searched with `Retriever.search(q, k, mode)`. "
        f"Sample docs: the {sizes['sample docs']} questions of `tests/qa/sample_docs.jsonl` over "
        f"`docs/`; test corpus: the {sizes['test corpus']} questions of `tests/qa/corpus.jsonl` "
        "over the Brightwater Kayaks corpus of `tests/corpus.py` (Markdown, text, HTML, DOCX, a "
        "6-page PDF; page-level questions need the right page). Hybrid = RRF "
        "(`RAG_RRF_K=60`) over 30 candidates per method.",
        "",
        f"| set | embeddings | mode | recall@1 | recall@{k} | MRR@{k} |",
        "|---|---|---|---|---|---|",
    ]
    for (name, precision, mode), (at1, atk) in results.items():
        emb = "-" if mode == "bm25" else precision
        if mode == "bm25" and precision != precisions[0]:
            continue  # BM25 does not use the embeddings
        lines.append(
            f"| {name} | {emb} | {mode} | {at1.recall:.3f} | {atk.recall:.3f} | {atk.mrr:.3f} |"
        )
    lines.append("")
    for name in ("sample docs", "test corpus"):
        h = results[(name, "fp32", "hybrid")][1]
        d = results[(name, "fp32", "dense")][1]
        b = results[(name, "fp32", "bm25")][1]
        lines.append(
            f"- {name}: hybrid recall@{k} {h.recall:.3f} vs dense {d.recall:.3f} vs BM25 "
            f"{b.recall:.3f}; MRR {h.mrr:.3f} vs {d.mrr:.3f} vs {b.mrr:.3f}."
            + (f" Hybrid misses: {', '.join(repr(m.q) for m in h.misses)}." if h.misses else "")
        )
    if "int8" in precisions:
        for name in ("sample docs", "test corpus"):
            f32, i8 = results[(name, "fp32", "hybrid")], results[(name, "int8", "hybrid")]
            lines.append(
                f"- int8 vs fp32 ({name}, hybrid): "
                f"recall@1 {i8[0].recall:.3f} vs {f32[0].recall:.3f}, "
                f"recall@{k} {i8[1].recall:.3f} vs {f32[1].recall:.3f}, MRR {i8[1].mrr:.3f} vs "
                f"{f32[1].mrr:.3f}."
            )
        keys = [(n, m) for n in ("sample docs", "test corpus") for m in ("dense", "hybrid")]
        matches = all(
            results[(n, "int8", m)][1].recall >= results[(n, "fp32", m)][1].recall
            and results[(n, "int8", m)][1].mrr >= results[(n, "fp32", m)][1].mrr
            for n, m in keys
        )
        lines.append(
            "- Verdict: int8 "
            + (
                "matches fp32 on every set and mode, so it may become the default."
                if matches
                else "does not match fp32 on every set and mode (lower MRR somewhere above), "
                "so fp32 stays the default (`RAG_EMBED_PRECISION=fp32`)."
            )
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(sys.argv[1:]))
