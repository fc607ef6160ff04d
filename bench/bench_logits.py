"""The output layer on the last prompt position only: first token and answers, against the
builder's graph.

ONNX Runtime GenAI's builder runs a model's output layer over every prompt position;
the build edits it to run on the last one (:mod:`rag.embedded_llm.last_logits`). This
benchmark serves the built tier twice in this process, as built and with the edit
undone (a copy of the graph file beside the same weights), on the app's own prompts
(:func:`bench.bench_prefix.app_prompts`), taking turns on each. It reports the median
time to the first token of each, and on how many prompts the two greedy answers were
the same text.

    python -m bench.bench_logits [--questions N] [--tiers qwen2.5-1.5b qwen2.5-0.5b]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from bench.bench_prefix import app_prompts
from rag.embedded_llm.generation import Delta, Engine, Sampling
from rag.embedded_llm.last_logits import every_position
from rag.settings import Settings, get_settings

ANSWER_TOKENS = 24
T = TypeVar("T")


async def answer(engine: Engine, messages: list[dict[str, str]]) -> tuple[float, str, int]:
    """Seconds to the first token, the greedy answer's first tokens, and the prompt's length."""
    ids = engine.encode(engine.render(messages))
    started, first, text = time.perf_counter(), None, ""
    async for event in engine.generate(ids, Sampling(max_tokens=ANSWER_TOKENS, temperature=0.0)):
        if isinstance(event, Delta):
            first = first or time.perf_counter() - started
            text += event.text
    return first or time.perf_counter() - started, text, len(ids)


def builders_graph(model_dir: Path, into: Path) -> Path:
    """A copy of ``model_dir`` with the edit undone. Its weights are a hard link where the
    file system allows (onnxruntime refuses weights reached through a symbolic link)."""
    for path in model_dir.iterdir():
        if path.name != "model.onnx":
            try:
                (into / path.name).hardlink_to(path)
            except OSError:  # another file system
                shutil.copyfile(path, into / path.name)
    graph = into / "model.onnx"
    graph.write_bytes((model_dir / "model.onnx").read_bytes())
    if not every_position(graph):
        raise SystemExit(f"{model_dir} does not keep the last position only: build it again")
    return into


async def take_turns(
    engines: dict[str, Engine],
    prompts: list[list[dict[str, str]]],
    ask: Callable[[Engine, list[dict[str, str]]], Awaitable[T]],
) -> dict[str, list[T]]:
    """``ask`` each engine every prompt, after one warm-up each; the engines take turns,
    in reverse order every other prompt, so a change in the machine's load falls on all."""
    for engine in engines.values():
        await ask(engine, prompts[-1])
    runs: dict[str, list[T]] = {name: [] for name in engines}
    for turn, messages in enumerate(prompts):
        for name in list(engines)[:: 1 if turn % 2 else -1]:
            runs[name].append(await ask(engines[name], messages))
    return runs


async def measure(settings: Settings, count: int) -> dict[str, float]:
    """Medians over the questions: prompt tokens, both TTFTs; and answers that agree."""
    prompts = [cut for cut, _ in app_prompts(settings, count)]
    with tempfile.TemporaryDirectory() as tmp:
        engines = {
            "edited": Engine(settings.engine_model_dir, settings.threads, reuse_prefix=False),
            "builder": Engine(builders_graph(settings.engine_model_dir, Path(tmp)),
                              settings.threads, reuse_prefix=False),
        }  # fmt: skip
        runs = await take_turns(engines, prompts, answer)
    ttft = {name: statistics.median(r[0] for r in rows) for name, rows in runs.items()}
    return {
        "questions": len(prompts),
        "tokens": statistics.median(r[2] for r in runs["edited"]),
        "edited_s": ttft["edited"],
        "builder_s": ttft["builder"],
        "same": sum(a[1] == b[1] for a, b in zip(runs["edited"], runs["builder"])),
    }


def main(argv: list[str] | None = None) -> str:
    """Measure, and return the section for bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_logits")
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--tiers", nargs="+", default=None,
                        help="RAG_ENGINE_MODEL tiers, built already (default: settings)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="4 questions")
    args = parser.parse_args(argv)
    settings = get_settings()
    tiers, count = args.tiers or [settings.engine_model], 4 if args.quick else args.questions
    load_before, rows = os.getloadavg()[0], []
    for tier in tiers:
        r = asyncio.run(measure(settings.with_overrides(engine_model=tier), count))
        rows.append(
            f"| `{tier}` | {r['tokens']:.0f} | {r['builder_s']:.2f} s | {r['edited_s']:.2f} s "
            f"({r['edited_s'] / r['builder_s']:.2f}x) | {r['same']} of {r['questions']} |"
        )
    return "\n".join([
        "## The output layer on the last prompt position only (bench_logits)",
        "",
        f"`python -m bench.bench_logits --tiers {' '.join(tiers)}`: "
        f"the first {count} questions without history of "
        "`tests/qa/answers.jsonl`, retrieved from the ingested `docs/` and built as the chat "
        "builds them for an embedded tier, each prompt read whole; per tier, the model as built "
        "and the builder's graph take turns in one process; medians over the questions. "
        f"*Same answers*: the first {ANSWER_TOKENS} tokens of the greedy answers are the same "
        f"text. 1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} "
        f"after, on {os.cpu_count()} cores.",
        "",
        "| tier | prompt tokens | TTFT, output layer on every position (the builder's) "
        "| TTFT, on the last position (as built) | same answers |",
        "|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip


if __name__ == "__main__":
    print(main())
