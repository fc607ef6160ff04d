"""Measure retrieval quality on questions with known answers: recall@k and MRR.

    python -m rag.eval QA.jsonl [--k 5] [--mode hybrid|dense|bm25] [--json] [--data-dir DIR]

Each line of QA.jsonl is ``{"q": "...", "sources": ["file.md"], "pages": [3]}``.
A retrieved hit is *relevant* when its source is one of ``sources`` and, if
``pages`` is given and not empty, its page is one of ``pages``. A question
counts for recall@k when a relevant hit is among the first ``k``; its
reciprocal rank is ``1 / rank`` of the first relevant hit (0 when none).

>>> item = QA("When must I raise the skeg?", sources=("manual.pdf",), pages=(3,))
>>> on_page_3 = Hit("manual.pdf#4", "manual.pdf", 3, None, "Raise the skeg.", score=0.03)
>>> on_page_4 = Hit("manual.pdf#5", "manual.pdf", 4, None, "Store it dry.", score=0.02)
>>> item.is_relevant(on_page_3), item.is_relevant(on_page_4)
(True, False)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import RagError
from rag.retrieve import MODES, Hit, Mode, Retriever
from rag.settings import get_settings


@dataclass(frozen=True)
class QA:
    """One question and where its answer is (sources, optionally pages)."""

    q: str
    sources: tuple[str, ...]
    pages: tuple[int, ...] = ()

    def is_relevant(self, hit: Hit) -> bool:
        """True when ``hit`` comes from an expected source (and page, if pages are given)."""
        if hit.source not in self.sources:
            return False
        return not self.pages or hit.page in self.pages


@dataclass(frozen=True)
class QuestionResult:
    """How one question fared: rank of the first relevant hit (None when missed)."""

    q: str
    rank: int | None
    top_source: str | None
    top_page: int | None


@dataclass(frozen=True)
class EvalReport:
    """recall@k and MRR over a QA set, with the per-question ranks."""

    k: int
    mode: str
    recall: float
    mrr: float
    results: list[QuestionResult] = field(default_factory=list)

    @property
    def misses(self) -> list[QuestionResult]:
        """Questions with no relevant hit in the top ``k``."""
        return [r for r in self.results if r.rank is None]

    def as_dict(self) -> dict[str, object]:
        """The ``--json`` object: k, mode, questions, rounded recall and MRR, missed questions."""
        return {
            "k": self.k,
            "mode": self.mode,
            "questions": len(self.results),
            "recall": round(self.recall, 4),
            "mrr": round(self.mrr, 4),
            "misses": [r.q for r in self.misses],
        }


def load_qa(path: Path) -> list[QA]:
    """Read a QA.jsonl file; blank lines are skipped, a malformed line is a RagError naming it."""
    items: list[QA] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RagError(f"Cannot read the QA file {path}: {exc.strerror or exc}.") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            sources = record["sources"]
            if isinstance(sources, str):
                sources = [sources]
            items.append(
                QA(
                    q=str(record["q"]),
                    sources=tuple(str(s) for s in sources),
                    pages=tuple(int(p) for p in record.get("pages") or ()),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise RagError(
                f"{path}, line {number}: expected "
                '{"q": "...", "sources": ["file"], "pages": [...]} '
                f"({exc.__class__.__name__}: {exc})."
            ) from exc
    if not items:
        raise RagError(f"The QA file {path} holds no questions.")
    return items


def evaluate(
    retriever: Retriever, qa: Sequence[QA], k: int = 5, mode: Mode = "hybrid"
) -> EvalReport:
    """Search every question and compute recall@k and mean reciprocal rank."""
    results: list[QuestionResult] = []
    for item in qa:
        hits = retriever.search(item.q, k, mode=mode)
        rank = next((r for r, h in enumerate(hits[:k], start=1) if item.is_relevant(h)), None)
        top = hits[0] if hits else None
        results.append(
            QuestionResult(item.q, rank, top.source if top else None, top.page if top else None)
        )
    n = len(results)
    recall = sum(r.rank is not None for r in results) / n
    mrr = sum(1.0 / r.rank for r in results if r.rank is not None) / n
    return EvalReport(k=k, mode=mode, recall=recall, mrr=mrr, results=results)


def format_report(path: Path, report: EvalReport) -> str:
    """The human summary: one line of numbers, then the missed questions."""
    lines = [
        f"{path}: {len(report.results)} questions, mode {report.mode}: "
        f"recall@{report.k} {report.recall:.3f}, MRR {report.mrr:.3f}"
    ]
    for miss in report.misses:
        top = f"{miss.top_source}" + (f" p.{miss.top_page}" if miss.top_page else "")
        lines.append(f"  missed: {miss.q}  (top hit: {top})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (1 on a readable error)."""
    parser = argparse.ArgumentParser(
        prog="python -m rag.eval", description="recall@k and MRR of the search on a QA set."
    )
    parser.add_argument("qa", type=Path, metavar="QA.jsonl")
    parser.add_argument("--k", type=int, default=5, help="cut-off rank (default 5)")
    parser.add_argument("--mode", choices=MODES, default="hybrid")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--data-dir", type=Path, default=None, help="store location (RAG_DATA_DIR)")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("--k must be at least 1")
    try:
        settings = get_settings().with_overrides(data_dir=args.data_dir)
        report = evaluate(Retriever(settings), load_qa(args.qa), args.k, args.mode)
    except RagError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        print(f"eval: unexpected error ({type(exc).__name__}: {exc}).", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
    else:
        print(format_report(args.qa, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
