"""Run the benchmarks and write their sections into bench/RESULTS.md.

    python -m bench                 # every benchmark
    python -m bench embed search    # only bench_embed and bench_search
    python -m bench --quick         # smaller sizes, for a smoke run
    python -m bench soak            # the soak: chat sessions, API streams, ingests at once

Each ``bench/bench_NAME.py`` has ``main(argv) -> str`` returning a markdown
section; the section under the heading that names ``(bench_NAME)`` is
replaced, so results measured together stay together.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
ALL = [
    "embed", "ingest", "ocr", "scale", "search", "recall", "gate", "engine", "ttft", "soak",
    "browser", "summarize", "scope", "prefix", "check", "logits", "projections",
]  # fmt: skip


def replace_section(document: str, name: str, section: str) -> str:
    """``document`` with the section headed ``## ... (bench_NAME)`` replaced by ``section``."""
    pattern = re.compile(rf"^## [^\n]*\(bench_{name}\)\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    body = section.strip() + "\n\n"
    if not body.startswith("## "):
        heading = pattern.search(document)
        title = heading.group(0).splitlines()[0] if heading else f"## bench_{name} (bench_{name})"
        body = f"{title}\n\n{body}"
    if pattern.search(document):
        return pattern.sub(lambda _: body, document, count=1)
    return document.rstrip() + "\n\n" + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"any of {', '.join(ALL)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.names) - set(ALL)):
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ALL)}")
    for name in args.names or ALL:
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"== bench_{name}", flush=True)
        section = module.main(["--quick"] if args.quick else [])
        print(section, flush=True)
        RESULTS.write_text(replace_section(RESULTS.read_text(), name, section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
