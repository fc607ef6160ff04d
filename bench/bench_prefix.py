"""Prompt reading in the embedded engine: what the cut passages and the kept prefix save.

On this CPU, reading the prompt is most of the time to the first token. Two things
shorten it, and this benchmark measures both on the app's own prompts (the answer
set's questions over the ingested ``docs/``, retrieved and built as the chat builds
them for an embedded tier):

- the passages of :data:`rag.prompt.ON_CPU` are cut to the sentences around the
  question's words: prompt tokens and TTFT with the cut, against the whole passages;
- the engine keeps the prompt a greedy request shares with the one before (the system
  turn), so it reads only the rest: an in-process engine with ``reuse_prefix=False``
  reads the whole and the cut prompt, one that keeps its prefix reads the cut one.

Each figure is the median over the questions; both engines run in this process, taking
turns on each question, so load from other work falls on all three alike.

    python -m bench.bench_prefix [--questions N] [--tier qwen2.5-1.5b]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import time
from pathlib import Path

from rag.answer_eval import load_answer_set
from rag.embedded_llm.generation import Delta, Engine, Sampling
from rag.prompt import ON_CPU, build_prompt
from rag.retrieve import retrieve
from rag.settings import Settings, get_settings

ANSWER_SET = Path(__file__).resolve().parent.parent / "tests" / "qa" / "answers.jsonl"
UNCUT = dataclasses.replace(ON_CPU, passage_tokens=None, focus=False)


def app_prompts(settings: Settings, count: int) -> list[tuple[list[dict[str, str]], list]]:
    """(messages with cut passages, messages with whole ones) for the first ``count``
    questions of the answer set that have no history."""
    prompts = []
    for qa in [q for q in load_answer_set(ANSWER_SET) if not q.history][:count]:
        hits = retrieve(qa.q, settings=settings)
        cut, whole = (
            build_prompt(qa.q, hits, settings=settings, style=style).messages
            for style in (ON_CPU, UNCUT)
        )
        prompts.append((cut, whole))
    return prompts


async def first_token_s(engine: Engine, messages: list[dict[str, str]]) -> tuple[float, int]:
    """Seconds to the first token of a greedy answer, and the prompt's token count."""
    ids = engine.encode(engine.render(messages))
    started = time.perf_counter()
    async for event in engine.generate(ids, Sampling(max_tokens=1, temperature=0.0)):
        if isinstance(event, Delta):
            return time.perf_counter() - started, len(ids)
    return time.perf_counter() - started, len(ids)


async def measure(settings: Settings, count: int) -> dict[str, float]:
    """Medians over the questions: prompt tokens cut and whole, and the TTFT of both engines."""
    model_dir = settings.engine_model_dir
    fresh = Engine(model_dir, settings.threads, reuse_prefix=False)
    kept = Engine(model_dir, settings.threads, reuse_prefix=True)
    prompts = app_prompts(settings, count)
    await first_token_s(kept, prompts[-1][0])  # warm both up, and give `kept` a prefix
    await first_token_s(fresh, prompts[-1][0])
    rows = []
    for cut, whole in prompts:
        whole_s, whole_tokens = await first_token_s(fresh, whole)
        fresh_s, cut_tokens = await first_token_s(fresh, cut)
        kept_s, _ = await first_token_s(kept, cut)
        rows.append((cut_tokens, whole_tokens, fresh_s, kept_s, whole_s))
    median = [statistics.median(r[i] for r in rows) for i in range(5)]
    return {
        "questions": len(rows),
        "cut_tokens": median[0],
        "whole_tokens": median[1],
        "fresh_ttft_s": median[2],
        "kept_ttft_s": median[3],
        "whole_ttft_s": median[4],
        "reused_per_request": kept.stats.prefix_tokens_reused / (len(rows) + 1),
    }


def main(argv: list[str] | None = None) -> str:
    """Measure, and return the section for bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_prefix")
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--tier", default=None, help="RAG_ENGINE_MODEL (default: settings)")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.tier:
        settings = settings.with_overrides(engine_model=args.tier)
    load_before = os.getloadavg()[0]
    r = asyncio.run(measure(settings, args.questions))
    return "\n".join([
        "## Prompt reading in the embedded engine (bench_prefix)",
        "",
        f"`python -m bench.bench_prefix --questions {args.questions}` with "
        f"`{settings.engine_model}`: the first {r['questions']} questions without history of "
        "`tests/qa/answers.jsonl`, retrieved from the ingested `docs/` and built as the chat "
        "builds them for an embedded tier; medians over the questions; TTFT is one greedy token, "
        "in process, the two engines taking turns on each prompt. 1-minute load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores.",
        "",
        "| measure | median |",
        "|---|---|",
        f"| prompt tokens, whole passages | {r['whole_tokens']:.0f} |",
        f"| prompt tokens, passages cut around the question's words | {r['cut_tokens']:.0f} "
        f"({r['cut_tokens'] / r['whole_tokens']:.2f}x) |",
        f"| TTFT, whole passages, every prompt read whole | {r['whole_ttft_s']:.2f} s |",
        f"| TTFT, cut passages, every prompt read whole | {r['fresh_ttft_s']:.2f} s "
        f"({r['fresh_ttft_s'] / r['whole_ttft_s']:.2f}x) |",
        f"| TTFT, cut passages and the shared prefix kept ({r['reused_per_request']:.0f} "
        f"tokens per request) | {r['kept_ttft_s']:.2f} s ({r['kept_ttft_s'] / r['whole_ttft_s']:.2f}x) |",
    ])  # fmt: skip


if __name__ == "__main__":
    print(main())
