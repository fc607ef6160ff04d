"""The relevance gate and follow-up retrieval, measured without a model (bench_gate).

    python -m bench.bench_gate

Ingests ``docs/`` and the Brightwater Kayaks test corpus (``tests/corpus.py``) with
the real pipeline under ``bench/_work/gate-*``, then, for every question of the
answer sets (``tests/qa/answers.jsonl``, ``answers_corpus.jsonl``), the retrieval
sets (``sample_docs.jsonl``, ``corpus.jsonl``) and the held-out uncovered questions
(``uncovered_docs.jsonl``, ``uncovered_corpus.jsonl``), searches what the answer pipeline
searches (:func:`rag.answer.search_query`) and asks the gate
(:func:`rag.grounding.judge`). Reports how many uncovered questions it stops and
how many answerable ones it wrongly stops, and, for follow-ups, the rank of the
expected file when retrieval sees the bare follow-up against the previous question
joined on.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ingest.pipeline import ingest
from rag.answer import search_query
from rag.answer_eval import AnswerQA, load_answer_set
from rag.grounding import judge
from rag.retrieve import Retriever
from rag.settings import Settings
from tests.corpus import build_corpus

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "_work"
QA_DIR = REPO / "tests" / "qa"


def _retriever(name: str, docs: Path) -> Retriever:
    data = WORK / f"gate-{name}"
    shutil.rmtree(data, ignore_errors=True)  # always measure a clean ingest of today's files
    settings = Settings(
        _env_file=None, docs_dir=docs, data_dir=data, models_dir_override=REPO / ".data" / "models"
    )
    ingest(settings)
    return Retriever(settings)


def _rank(retriever: Retriever, query: str, sources: tuple[str, ...]) -> int | None:
    hits = retriever.search(query, 5)
    return next((i for i, h in enumerate(hits, start=1) if h.source in sources), None)


def _gate_row(retriever: Retriever, name: str, questions: list[AnswerQA]) -> str:
    stopped = {True: 0, False: 0}
    for qa in questions:
        query = search_query(qa.q, qa.history)
        hits = retriever.search(query, retriever.settings.top_k)
        stopped[qa.refuse] += not judge(query, hits, retriever.settings, latest=qa.q).covered
    uncovered = sum(qa.refuse for qa in questions)
    answerable = len(questions) - uncovered
    gated = f"{stopped[True]}/{uncovered}" if uncovered else "-"
    wrongly = f"{stopped[False]}/{answerable}" if answerable else "-"
    return f"| `{name}` | {gated} | {wrongly} |"


def _follow_up_rows(retriever: Retriever, questions: list[AnswerQA]) -> list[str]:
    rows = []
    for qa in questions:
        if qa.history and not qa.refuse:
            bare = _rank(retriever, qa.q, qa.sources)
            joined = _rank(retriever, search_query(qa.q, qa.history), qa.sources)
            rows.append(f"| {qa.q} | {bare or '>5'} | {joined or '>5'} |")
    return rows


def main(argv: list[str] | None = None) -> str:
    """Run the measurement and return the markdown section."""
    corpus = build_corpus(WORK / "gate-corpus-docs")
    stores = {"docs": _retriever("docs", REPO / "docs"), "corpus": _retriever("corpus", corpus)}
    sets = [
        ("docs", "answers.jsonl"), ("docs", "sample_docs.jsonl"),
        ("corpus", "answers_corpus.jsonl"), ("corpus", "corpus.jsonl"),
        ("docs", "uncovered_docs.jsonl"), ("corpus", "uncovered_corpus.jsonl"),
    ]  # fmt: skip
    gate, follow = [], []
    for store, file in sets:
        questions = load_answer_set(QA_DIR / file)
        gate.append(_gate_row(stores[store], file, questions))
        follow += _follow_up_rows(stores[store], questions)
    return "\n".join([
        "## The relevance gate and follow-up retrieval (bench_gate)",
        "",
        "`python -m bench.bench_gate`: every question searched as the answer pipeline searches "
        "it, then judged by the gate (`RAG_GATE_MIN_SIMILARITY`, `RAG_GATE_MIN_COVERAGE`); no "
        "model is asked.",
        "",
        "| set | uncovered stopped | answerable stopped (false refusals) |",
        "|---|---|---|",
        *gate,
        "",
        "Follow-ups: rank of the expected file in the top 5 when retrieval sees the bare "
        "follow-up, and the previous question joined on (what the pipeline does).",
        "",
        "| follow-up | bare | joined |",
        "|---|---|---|",
        *follow,
    ]) + "\n"  # fmt: skip


if __name__ == "__main__":
    print(main(sys.argv[1:]))
