"""Publish the knowledge base as a static site with semantic search that runs in the browser.

``python -m rag.export_site OUT/ [--chat-url URL] [--json]`` writes a self-contained folder:
``index.html`` (the search page), ``app/`` (its code), ``runtime/`` (ONNX Runtime Web),
``model/`` (the embedder and its tokenizer) and ``data/`` (the passages and their vectors
in float16). Any static file server hosts it, for example
``python -m http.server -d OUT 8080``; nothing is fetched from elsewhere. ``--chat-url``
adds an "ask about this" link to a running chat.

>>> report = export_site(Path("site"), settings)   # doctest: +SKIP
>>> report.passages, round(report.bytes / 1e6)   # doctest: +SKIP
(49, 132)

(the sample docs: 49 passages, 132 MB, mostly the model and the runtime)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from rag.errors import RagError
from rag.settings import Settings, get_settings
from rag.web.search_page import (
    INDEX_PATH,
    VECTORS_PATH,
    SearchIndex,
    SearchRuntimeMissing,
    page_html,
    runtime_missing,
    static_files,
)


@dataclass(frozen=True)
class ExportReport:
    """What was written: where, how many passages, and bytes in all and per part."""

    out: str
    passages: int
    bytes: int
    parts: dict[str, int]


def export_site(out: Path, settings: Settings, *, chat_url: str = "") -> ExportReport:
    """Write the static search site for the store ``settings`` name into ``out``.

    ``out`` may exist; the files of an earlier export are replaced. Raises
    :class:`SearchRuntimeMissing` when ``make web`` has not installed the runtime,
    :class:`rag.errors.ModelMissing` when the embedder is not exported and
    :class:`rag.errors.NoDocuments` when nothing is ingested; then nothing is written.
    """
    if (problem := runtime_missing()) is not None:
        raise SearchRuntimeMissing(problem)
    files = static_files(settings)
    index = SearchIndex.build(settings)
    out.mkdir(parents=True, exist_ok=True)
    for relative, source in files.items():
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (out / "data").mkdir(exist_ok=True)
    (out / INDEX_PATH).write_bytes(index.meta)
    (out / VECTORS_PATH).write_bytes(index.vectors)
    (out / "index.html").write_text(page_html("./", chat_url), encoding="utf-8")
    parts = {
        part: sum(f.stat().st_size for f in (out / part).rglob("*") if f.is_file())
        for part in ("app", "runtime", "model", "data")
    }
    parts["index.html"] = (out / "index.html").stat().st_size
    return ExportReport(str(out), index.count, sum(parts.values()), parts)


def main(argv: list[str] | None = None) -> int:
    """The command line: export, then print a summary (or one JSON line with ``--json``)."""
    parser = argparse.ArgumentParser(
        prog="python -m rag.export_site", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out", type=Path, help="folder to write the site into")
    parser.add_argument(
        "--chat-url", default="", help="a chat to link answers to, e.g. http://127.0.0.1:8000/"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = export_site(args.out, get_settings(), chat_url=args.chat_url)
    except RagError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        mb = report.bytes / 1e6
        print(
            f"Wrote {report.passages} passages to {report.out} ({mb:.1f} MB); "
            f"serve it with: python -m http.server -d {report.out} 8080"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
