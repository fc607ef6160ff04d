"""Search the ingested documents from the command line.

    python -m rag.search QUESTION [QUESTION ...] [--k 5] [--file NAME ...] [--json]
                         [--data-dir DIR] [--docs-dir DIR]

Prints the best chunks for each question with source, page, score and a
snippet. ``--file NAME`` (repeatable) searches only that ingested file, named by
its path, file name or file name without extension, as ``@NAME`` in the chat;
an unknown name exits with status 1 and the close names. With ``--json`` it prints
one line per question:
``{"question": "...", "hits": [{"source": "guide.pdf", "page": 6, "score": 0.03, "text": "..."}]}``
(``page`` is null for formats without pages). Exit status 0 on success, 1 when
nothing is ingested yet or the search fails, with a sentence and no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from rag.errors import RagError
from rag.mentions import matching, unknown_sentence
from rag.retrieve import MODES, Hit, Retriever
from rag.settings import get_settings

_SNIPPET_CHARS = 240


def hit_record(hit: Hit) -> dict[str, object]:
    """The JSON shape of one hit in ``--json`` output."""
    return {"source": hit.source, "page": hit.page, "score": hit.score, "text": hit.text}


def format_hits(question: str, hits: list[Hit]) -> str:
    """Human-readable ranked hits: source, page, score and a one-paragraph snippet."""
    lines = [f"Q: {question}"]
    if not hits:
        lines.append("  (no matching passages)")
    for rank, hit in enumerate(hits, start=1):
        where = hit.label
        if hit.heading:
            where += f" - {hit.heading}"
        lines.append(f"{rank:>3}. {where}  (score {hit.score:.4f})")
        snippet = " ".join(hit.text.split())
        if len(snippet) > _SNIPPET_CHARS:
            snippet = snippet[: _SNIPPET_CHARS - 3].rstrip() + "..."
        indent = " " * 5
        lines.extend(
            textwrap.wrap(snippet, width=96, initial_indent=indent, subsequent_indent=indent)
        )
    return "\n".join(lines)


class UnknownFile(RagError):
    """A ``--file`` name matches no ingested file."""


def files_named(names: list[str], retriever: Retriever) -> tuple[str, ...]:
    """The ingested sources ``names`` denote; raises :class:`UnknownFile` for one that
    matches none, with the close names."""
    if not names:
        return ()
    ingested = retriever.sources()
    found: list[str] = []
    unknown = []
    for name in names:
        matched = matching(name, ingested)
        found.extend(matched)
        if not matched:
            unknown.append(name)
    if unknown:
        listing = f"Ingested: {', '.join(ingested[:20])}{' …' if len(ingested) > 20 else ''}."
        raise UnknownFile(unknown_sentence(unknown, ingested, prefix="--file ", listing=listing))
    return tuple(dict.fromkeys(found))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rag.search",
        description="Hybrid (dense + BM25) search over the ingested documents.",
    )
    parser.add_argument("questions", nargs="+", metavar="QUESTION")
    parser.add_argument("--k", type=int, default=None, help="hits per question (default RAG_TOP_K)")
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="NAME",
        help="search only this ingested file (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per question")
    parser.add_argument("--mode", choices=MODES, default="hybrid", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, default=None, help="store location (RAG_DATA_DIR)")
    parser.add_argument("--docs-dir", type=Path, default=None, help="docs folder (RAG_DOCS_DIR)")
    args = parser.parse_args(argv)
    if args.k is not None and args.k < 1:
        parser.error("--k must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parse(argv)
    try:
        settings = get_settings().with_overrides(data_dir=args.data_dir, docs_dir=args.docs_dir)
        retriever = Retriever(settings)
        sources = files_named(args.file, retriever)
        for question in args.questions:
            hits = retriever.search(question, args.k, mode=args.mode, sources=sources)
            if args.json:
                record = {"question": question, "hits": [hit_record(h) for h in hits]}
                print(json.dumps(record, ensure_ascii=False), flush=True)
            else:
                print(format_hits(question, hits), end="\n\n", flush=True)
    except RagError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        print(f"search: unexpected error ({type(exc).__name__}: {exc}).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
