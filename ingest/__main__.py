"""``python -m ingest [DOCS_DIR] [--data-dir DIR] [--json] [--rebuild] [--take-over]``: ingest.

Exit status: 0 when every file was ingested, 2 when some failed (the rest are
ingested), 1 on a fatal error (lock held, server collection owned by another data
folder, docs folder missing, model missing, or anything unexpected), which is printed as one sentence on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rag.errors import RagError


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ingest",
        description="Ingest the docs folder into the local store. Unchanged files are skipped, "
        "changed files replaced, deleted files removed.",
    )
    parser.add_argument(
        "docs_dir", nargs="?", type=Path, help="folder to ingest (default: RAG_DOCS_DIR or docs/)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="where the store lives (default: RAG_DATA_DIR or .data/)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line of stdout"
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="reset the store and ingest every file again"
    )
    parser.add_argument(
        "--take-over",
        action="store_true",
        help="with CHROMA_HOST: make this data folder the owner of a collection another one "
        "writes, and rebuild it from this docs folder",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parse(argv)
    # Imported after parsing so --help answers without loading Chroma or ONNX Runtime.
    from ingest.pipeline import ingest
    from rag.settings import get_settings

    try:
        settings = get_settings().with_overrides(docs_dir=args.docs_dir, data_dir=args.data_dir)
        progress = not args.json and sys.stderr.isatty()
        report = ingest(settings, rebuild=args.rebuild, progress=progress, take_over=args.take_over)
    except RagError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The intent log makes the next run repair whatever was half-written.
        print("ingest: interrupted; the next run finishes the job.", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        print(f"ingest: unexpected error ({type(exc).__name__}: {exc}).", file=sys.stderr)
        return 1

    warn_stream = sys.stderr if args.json else sys.stdout
    for warning in report.warnings:
        print(f"  warning: {warning.path}: {warning.error}", file=warn_stream)
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        print(report.summary())
        for failure in report.failed:
            print(f"  failed: {failure.path}: {failure.error}")
    return 2 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
