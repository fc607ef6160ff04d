"""Embedded engine per model tier vs transformers+torch on the same weights.

For every built tier, both sides answer the same ~300-token RAG prompt (system
rule, five numbered context passages, a question) greedily, generating exactly
``--tokens`` tokens (EOS ignored) so decode rates compare like for like:

- the embedded engine as the app uses it: ``rag.embedded_llm serve`` in a child
  process, streamed through the openai SDK (TTFT includes HTTP and the chat
  template); load is the time from starting the process to its first answer
  to ``/v1/models``; peak memory is the server's high-water mark (``VmHWM``);
- transformers+torch on the tier's GGUF, dequantized to float32 (what the build
  starts from), in a child process of its own so its peak memory is its own.

TTFT is from request to the first token; decode tok/s counts the tokens after
the first; "answer" is the whole ``--tokens``-token reply. Each figure is the
median of ``--reps`` runs after a warm-up, all tiers measured in the same run.
The app's targets for the default tier are a median TTFT of at most 5 s and a
median full answer of at most 20 s for about 80 tokens.

    python -m bench.bench_engine [--quick] [--reps N] [--tokens N] [--tiers NAME ...]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai

from rag.embedded_llm import EngineProcess, engine_available
from rag.model_tiers import TIERS, Tier, join_parts, packaged_file
from rag.settings import Settings, get_settings

PASSAGES = [
    "The vault in building C opens with the code word TANGERINE; the code changes every "
    "quarter and is announced by the facilities team in the first week of January, April, July "
    "and October.",
    "Visitors must sign in at the front desk, wear a badge at all times, and be escorted in the "
    "lab areas. Badges are returned at the end of the visit; a lost badge is reported to security.",
    "The cafeteria serves breakfast from 7:30 to 9:30 and lunch from 11:30 to 14:00. On Fridays "
    "a vegetarian menu is offered, and the coffee machines on each floor are free for staff and "
    "guests.",
    "Laptops leave the building only when they are encrypted and registered with IT. A laptop that "
    "is lost must be reported within 24 hours so that its keys can be revoked remotely.",
    "Fire drills happen twice a year. Everybody leaves by the nearest stairs, never the lifts, and "
    "gathers in the car park north of building A until the wardens give the all-clear.",
]
QUESTION = "What is the code word of the vault in building C, and when does it change?"
TTFT_TARGET_S, ANSWER_TARGET_S = 5.0, 20.0


@dataclass(frozen=True)
class Run:
    """One path's medians: seconds to load, to the first token and to the whole answer."""

    load_s: float
    ttft_s: float
    decode_tps: float
    answer_s: float
    peak_gb: float
    prompt_tokens: int = 0
    answer: str = ""


def rag_messages(turn: int = 0) -> list[dict[str, str]]:
    """The benchmark prompt: about 300 tokens once templated. Each ``turn`` puts the passages
    in another order, as retrieval gives every question its own: the engine keeps the prompt
    a request shares with the one before (the system rule), and no more must be shared."""
    shown = PASSAGES[turn % len(PASSAGES) :] + PASSAGES[: turn % len(PASSAGES)]
    context = "\n\n".join(f"[{i}] {text}" for i, text in enumerate(shown, 1))
    return [
        {
            "role": "system",
            "content": "Answer only from the numbered context. Cite passages like [1]. "
            "If the context does not say, answer that you do not know.",
        },
        {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {QUESTION}"},
    ]


def _median(runs: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    first, second, third = (statistics.median(r[i] for r in runs) for i in range(3))
    return first, second, third


def _peak_gb(pid: int) -> float:
    """The high-water mark of a process's resident memory (``VmHWM``), in GiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / (1 << 20)
    return 0.0


def _stream_once(
    client: openai.OpenAI, model: str, tokens: int, turn: int
) -> tuple[float, float, float, int]:
    """(TTFT s, decode tok/s, answer s, prompt tokens) of one streamed answer."""
    t0 = time.perf_counter()
    first, usage = None, None
    stream = client.chat.completions.create(
        model=model, messages=rag_messages(turn), stream=True, temperature=0, max_tokens=tokens,
        extra_body={"ignore_eos": True}, stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        usage = chunk.usage or usage
    end = time.perf_counter()
    assert first is not None and usage is not None
    rate = (usage.completion_tokens - 1) / (end - first)
    return first - t0, rate, end - t0, usage.prompt_tokens


def bench_server(settings: Settings, tokens: int, reps: int) -> Run:
    """The served engine over HTTP, as the app talks to it."""
    started = time.perf_counter()
    with EngineProcess(settings, start_timeout_s=300) as process:
        load = time.perf_counter() - started
        assert process.endpoint is not None and process.info is not None and process.pid
        model = process.info.id
        client = openai.OpenAI(base_url=process.endpoint.base_url, api_key="x", max_retries=0,
                               timeout=600)  # fmt: skip
        runs = [_stream_once(client, model, tokens, n) for n in range(reps + 1)][1:]  # warm-up dropped
        # A natural answer (EOS allowed), to show what the tier says to the question.
        reply = client.chat.completions.create(
            model=model, messages=rag_messages(), temperature=0, max_tokens=80
        )
        peak = _peak_gb(process.pid)
    ttft, rate, answer = _median([r[:3] for r in runs])
    return Run(load, ttft, rate, answer, peak, runs[0][3], reply.choices[0].message.content or "")


def bench_transformers(t: Tier, tokens: int, reps: int) -> Run:
    """transformers+torch on the tier's GGUF, in a fresh process so its peak memory is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_transformers_in_child, t, tokens, reps).result()


def _transformers_in_child(t: Tier, tokens: int, reps: int) -> Run:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as tmp:
        gguf = join_parts(t, Path(tmp)) if t.is_split else packaged_file(t)
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.eval()
        load = time.perf_counter() - t0

    def generate(n: int) -> float:
        start = time.perf_counter()
        ids = tokenizer.apply_chat_template(
            rag_messages(), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        return time.perf_counter() - start

    def once() -> tuple[float, float, float]:
        ttft = generate(1)  # prompt processing plus one token, as a client would wait for it
        total = generate(tokens)
        return ttft, (tokens - 1) / (total - ttft), total

    # Same thread count as the engine: all cores (RAG_THREADS=0).
    torch.set_num_threads(os.cpu_count() or 1)
    ttft, rate, answer = _median(_repeat(once, reps))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    return Run(load, ttft, rate, answer, peak)


def _repeat(run: Callable[[], tuple[float, float, float]], reps: int) -> list:
    run()  # warm-up: first calls allocate and pick kernels
    return [run() for _ in range(reps)]


def _rows(name: str, engine: Run, torch_run: Run | None) -> list[str]:
    rows = [
        f"| {name} | engine over HTTP (int4) | {engine.load_s:.1f} s | {engine.ttft_s:.2f} s | "
        f"{engine.decode_tps:.1f} | {engine.answer_s:.1f} s | {engine.peak_gb:.2f} GB |"
    ]
    if torch_run:
        rows.append(
            f"| {name} | transformers+torch (GGUF dequantized to fp32) | "
            f"{torch_run.load_s:.1f} s | {torch_run.ttft_s:.2f} s | {torch_run.decode_tps:.1f} | "
            f"{torch_run.answer_s:.1f} s | {torch_run.peak_gb:.2f} GB |"
        )
    return rows


def _verdict(name: str, engine: Run, torch_run: Run | None) -> str:
    meets = engine.ttft_s <= TTFT_TARGET_S and engine.answer_s <= ANSWER_TARGET_S
    line = (
        f"- **{name}** ({engine.prompt_tokens}-token prompt): TTFT {engine.ttft_s:.2f} s, "
        f"answer {engine.answer_s:.1f} s: {'meets' if meets else 'misses'} the targets"
    )
    if torch_run:
        line += (
            f"; decodes {engine.decode_tps / torch_run.decode_tps:.1f}x and reaches its first "
            f"token {torch_run.ttft_s / engine.ttft_s:.1f}x as fast as transformers+torch, in "
            f"{engine.peak_gb / torch_run.peak_gb:.2f}x the memory"
        )
    return line + f". Its own answer: \"{' '.join(engine.answer.split())[:160]}\""


def main(argv: list[str] | None = None) -> str:
    """Run the comparison over the built tiers and return the section for bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_engine")
    parser.add_argument("--quick", action="store_true", help="1 repetition, no torch baseline")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=80, help="tokens generated per answer")
    parser.add_argument("--tiers", nargs="*", choices=TIERS, help="default: every built tier")
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    base = get_settings()
    built = [n for n in TIERS if engine_available(base.with_overrides(engine_model=n))]
    names = args.tiers or built
    if not names:
        raise SystemExit("No engine model tier is built: run `make models` first.")
    rows, verdicts = [], []
    for name in names:
        engine = bench_server(base.with_overrides(engine_model=name), args.tokens, reps)
        torch_run = None if args.quick else bench_transformers(TIERS[name], args.tokens, reps)
        rows += _rows(name, engine, torch_run)
        verdicts.append(_verdict(name, engine, torch_run))
    return "\n".join([
        "## Embedded engine per tier vs transformers (bench_engine)",
        "",
        f"The same RAG prompt (five passages and a question), {args.tokens} tokens generated "
        f"greedily with EOS ignored; median of {reps} runs after a warm-up, all tiers in the "
        "same run, both runtimes on all cores. Load: process start to ready (engine), GGUF "
        "load and dequantization (torch). Peak: the process's resident high-water mark.",
        "",
        "| tier | path | load | TTFT | decode tok/s | answer | peak memory |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        *verdicts,
        "",
        f"Targets: median TTFT <= {TTFT_TARGET_S:g} s and median answer <= {ANSWER_TARGET_S:g} s. "
        f"1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(other work shared the machine).",
    ])  # fmt: skip


if __name__ == "__main__":
    print(main())
