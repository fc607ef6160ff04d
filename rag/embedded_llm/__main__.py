"""Command line of the embedded engine.

python -m rag.embedded_llm build [--model TIER] [--source GGUF_OR_FOLDER] [--out DIR] [--force]
python -m rag.embedded_llm serve [--model TIER] [--host 127.0.0.1] [--port N] [--model-dir DIR]
python -m rag.embedded_llm tiers

TIER is one of the model tiers (default: RAG_ENGINE_MODEL): qwen2.5-1.5b, qwen2.5-0.5b,
smollm2-135m; `tiers` lists them with what building each needs and whether it is built.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rag.model_tiers import TIERS
from rag.errors import RagError
from rag.settings import Settings, get_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rag.embedded_llm", description=__doc__.split("\n")[1]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build", help="convert the model (skipped when its checksums match)"
    )
    build.add_argument("--model", choices=TIERS, help="model tier (default: RAG_ENGINE_MODEL)")
    build.add_argument(
        "--source",
        help="a .gguf file, a Hugging Face folder or a GenAI model folder "
        "(default: RAG_ENGINE_SOURCE, else the tier's packaged model)",
    )
    build.add_argument("--out", type=Path, help="output folder (default: the engine model dir)")
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")

    serve = commands.add_parser("serve", help="serve the model over an OpenAI-compatible API")
    serve.add_argument("--model", choices=TIERS, help="model tier (default: RAG_ENGINE_MODEL)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8099, help="port (0 picks a free one)")
    serve.add_argument("--model-dir", type=Path, help="ONNX Runtime GenAI model folder")
    serve.add_argument(
        "--threads", type=int, help="onnxruntime threads (default: RAG_THREADS, 0 = one per core)"
    )
    # Used by EngineProcess: serve on an inherited listening socket, and exit when the parent's
    # end of stdin closes (the parent died), so the app never leaves an orphan behind.
    serve.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    commands.add_parser("tiers", help="list the model tiers, their build needs and if built")
    return parser


def list_tiers(settings: Settings) -> str:
    """One line per tier: name, model, size, build needs, built or not, the picked one marked."""
    from rag.embedded_llm.model import GENAI_CONFIG

    lines = []
    for name, t in TIERS.items():
        folder = settings.with_overrides(engine_model=name).engine_model_dir
        built = "built" if (folder / GENAI_CONFIG).is_file() else "not built"
        mark = "*" if name == settings.engine_model else " "
        lines.append(
            f"{mark} {name:<13} {t.title:<28} ~{t.parameters / 1e9:.2f}B params, {t.licence}; "
            f"build needs {t.build_memory_gb:g} GB memory, {t.build_disk_gb:g} GB disk; {built}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = get_settings().with_overrides(engine_model=getattr(args, "model", None))
        if args.command == "tiers":
            print(list_tiers(settings))
            return 0
        if args.command == "build":
            from rag.embedded_llm.build import build

            result = build(settings, source=args.source, out=args.out, force=args.force)
            if result.status == "up to date":
                print(f"engine model up to date ({result.model_dir})")
            elif result.status == "external":
                print(
                    f"engine model at {result.model_dir} is a ready ONNX Runtime GenAI folder: "
                    "nothing to build"
                )
            return 0
        from rag.embedded_llm.server import serve

        return serve(
            settings,
            host=args.host,
            port=args.port,
            model_dir=args.model_dir,
            fd=args.fd,
            exit_with_parent=args.exit_with_parent,
            threads=args.threads,
        )
    except RagError as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
