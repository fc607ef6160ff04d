"""Int8 projections against the builder's 4-bit ones: first token, decoding and answers.

The build stores most of a model's projections as int8 weights
(:mod:`rag.embedded_llm.int8_projections`). This benchmark serves a tier twice in one
process, as built and as the builder left it (4-bit projections, the output layer on
the last position), on the app's own prompts (:func:`bench.bench_prefix.app_prompts`),
taking turns on each. It reports the median time to the first token, the decoding
speed, and on how many prompts the two greedy answers were the same text.

The 4-bit model cannot be made from the int8 one, so the benchmark builds it once per
tier into ``bench/_work/int4-<tier>`` (the tier's whole build, minutes and gigabytes for
the 1.5B), or takes one given with ``--int4``.

    python -m bench.bench_projections [--questions N] [--tiers qwen2.5-1.5b ...] [--int4 DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_logits import take_turns
from bench.bench_prefix import app_prompts
from rag.embedded_llm.build import build_tier
from rag.embedded_llm.generation import Delta, Engine, Finished, Sampling
from rag.embedded_llm.last_logits import keep_last_position
from rag.model_tiers import tier
from rag.settings import Settings, get_settings

ANSWER_TOKENS = 24
WORK = Path(__file__).resolve().parent / "_work"


def four_bit_model(name: str) -> Path:
    """The tier as the builder writes it, with the output layer on the last position only
    (what the app served before int8 projections); built once, then reused."""
    folder = WORK / f"int4-{name}"
    if (folder / "genai_config.json").is_file():
        return folder
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        staging = Path(tmp) / "model"
        build_tier(tier(name), staging, Path(tmp), lambda line: print(line, file=sys.stderr))
        keep_last_position(staging / "model.onnx")
        staging.rename(folder)
    return folder


async def answer(engine: Engine, messages: list[dict[str, str]]) -> tuple[float, float, str]:
    """Seconds to the first token, decoded tokens per second after it, and the answer."""
    ids = engine.encode(engine.render(messages))
    started, first, text, tokens = time.perf_counter(), None, "", 0
    async for event in engine.generate(ids, Sampling(max_tokens=ANSWER_TOKENS, temperature=0.0)):
        if isinstance(event, Delta):
            first = first or time.perf_counter() - started
            text += event.text
        elif isinstance(event, Finished):
            tokens = event.completion_tokens
    first = first or time.perf_counter() - started
    decoding = time.perf_counter() - started - first
    return first, (tokens - 1) / decoding if tokens > 1 and decoding > 0 else 0.0, text


async def measure(settings: Settings, four_bit: Path, count: int) -> dict[str, float]:
    """Medians over the questions for both models, and the answers that agree."""
    prompts = [cut for cut, _ in app_prompts(settings, count)]
    engines = {
        "int8": Engine(settings.engine_model_dir, settings.threads, reuse_prefix=False),
        "int4": Engine(four_bit, settings.threads, reuse_prefix=False),
    }
    runs = await take_turns(engines, prompts, answer)
    result: dict[str, float] = {"questions": len(prompts)}
    for name, rows in runs.items():
        result[f"{name}_ttft"] = statistics.median(r[0] for r in rows)
        result[f"{name}_decode"] = statistics.median(r[1] for r in rows)
    result["same"] = sum(a[2] == b[2] for a, b in zip(runs["int8"], runs["int4"]))
    return result


def _row(name: str, r: dict[str, float]) -> str:
    return (
        f"| `{name}` | {r['int4_ttft']:.2f} s | {r['int8_ttft']:.2f} s "
        f"({r['int8_ttft'] / r['int4_ttft']:.2f}x) | {r['int4_decode']:.1f} | "
        f"{r['int8_decode']:.1f} ({r['int8_decode'] / r['int4_decode']:.2f}x) | "
        f"{r['same']:.0f} of {r['questions']:.0f} |"
    )


def main(argv: list[str] | None = None) -> str:
    """Measure, and return the section for bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_projections")
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--tiers", nargs="+", default=None,
                        help="RAG_ENGINE_MODEL tiers, built already (default: settings)")  # fmt: skip
    parser.add_argument("--int4", type=Path, help="the 4-bit model of the one tier measured")
    parser.add_argument("--quick", action="store_true", help="4 questions")
    args = parser.parse_args(argv)
    settings = get_settings()
    tiers, count = args.tiers or [settings.engine_model], 4 if args.quick else args.questions
    if args.int4 and len(tiers) > 1:
        parser.error("--int4 is the 4-bit model of one tier: name one with --tiers")
    load_before, rows = os.getloadavg()[0], []
    for name in tiers:
        four_bit = args.int4 or four_bit_model(name)
        r = asyncio.run(measure(settings.with_overrides(engine_model=name), four_bit, count))
        rows.append(_row(name, r))
    return "\n".join([
        "## Int8 projections against the builder's 4-bit ones (bench_projections)",
        "",
        f"`python -m bench.bench_projections --tiers {' '.join(tiers)}`: the first {count} "
        "questions without history of `tests/qa/answers.jsonl`, retrieved from the ingested "
        "`docs/` and built as the chat builds them for an embedded tier, each prompt read "
        "whole; per tier, the model as built and as the builder left it take turns in one "
        "process; medians over the questions. *Same answers*: the first "
        f"{ANSWER_TOKENS} tokens of the greedy answers are the same text. 1-minute load "
        f"average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after, on "
        f"{os.cpu_count()} cores.",
        "",
        "| tier | TTFT, 4-bit | TTFT, int8 (as built) | decode tokens/s, 4-bit "
        "| decode tokens/s, int8 | same answers |",
        "|---|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip


if __name__ == "__main__":
    print(main())
