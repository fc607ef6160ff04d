"""Embedded engine vs transformers+torch: time to first token and decode speed on the same weights.

Both sides answer the same ~300-token RAG prompt (system rule, five numbered
context passages, a question) greedily, generating exactly ``--tokens`` tokens
(EOS ignored) so decode rates compare like for like:

- the embedded engine as the app uses it: ``rag.embedded_llm serve`` in a child process,
  streamed through the openai SDK (TTFT includes HTTP and the chat template);
- onnxruntime-genai in this process (the runtime alone, no HTTP);
- transformers+torch on the packaged GGUF, dequantized to float32 (what the build starts from).

TTFT is from request to the first token; decode tok/s counts the tokens after the first.
Each figure is the median of ``--reps`` runs, all measured in the same run.

    python -m bench.bench_engine [--quick] [--reps N] [--tokens N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import openai

from rag.embedded_llm import EngineProcess, engine_available
from rag.embedded_llm.build import packaged_gguf
from rag.settings import get_settings

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


def rag_messages() -> list[dict[str, str]]:
    """The benchmark prompt: about 300 tokens once templated."""
    context = "\n\n".join(f"[{i}] {text}" for i, text in enumerate(PASSAGES, 1))
    return [
        {
            "role": "system",
            "content": "Answer only from the numbered context. Cite passages like [1]. "
            "If the context does not say, answer that you do not know.",
        },
        {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {QUESTION}"},
    ]


def _median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def bench_server(tokens: int, reps: int, threads: int) -> tuple[float, float, int, float]:
    """(TTFT s, decode tok/s, prompt tokens, start-up s) of the served engine, over HTTP."""
    started = time.perf_counter()
    with EngineProcess(get_settings().with_overrides(threads=threads)) as process:
        startup = time.perf_counter() - started
        assert process.endpoint is not None
        client = openai.OpenAI(base_url=process.endpoint.base_url, api_key="x", max_retries=0)
        runs, prompt_tokens = [], 0
        for _ in range(reps + 1):  # the first run warms up and is dropped
            t0 = time.perf_counter()
            first = None
            stream = client.chat.completions.create(
                model=process.endpoint.model, messages=rag_messages(), stream=True, temperature=0,
                max_tokens=tokens, extra_body={"ignore_eos": True},
                stream_options={"include_usage": True},
            )  # fmt: skip
            usage = None
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
                usage = chunk.usage or usage
            end = time.perf_counter()
            assert first is not None and usage is not None
            prompt_tokens = usage.prompt_tokens
            runs.append((first - t0, (usage.completion_tokens - 1) / (end - first)))
    return (*_median(runs[1:]), prompt_tokens, startup)


def bench_genai(model_dir: Path, tokens: int, reps: int) -> tuple[float, float, float, int]:
    """(TTFT s, decode tok/s, load s, threads) of onnxruntime-genai in this process.

    Like torch below, it runs with the faster of 1 and all threads, picked by a short probe.
    """
    import onnxruntime_genai as og

    from rag.embedded_llm.generation import Engine

    def load_with(threads: int) -> tuple[Engine, float]:
        t0 = time.perf_counter()
        engine = Engine(model_dir, threads=threads)
        return engine, time.perf_counter() - t0

    def probe(threads: int) -> float:
        engine, _ = load_with(threads)
        ids = engine.encode(engine.render(rag_messages()))
        timings = []
        for _ in range(2):
            params = og.GeneratorParams(engine.model)
            params.set_search_options(max_length=len(ids) + 16, min_length=len(ids) + 16)
            generator = og.Generator(engine.model, params)
            start = time.perf_counter()
            generator.append_tokens(ids)
            while not generator.is_done():
                generator.generate_next_token()
            timings.append(time.perf_counter() - start)
        return min(timings)

    threads = min(sorted({1, os.cpu_count() or 1}), key=probe)
    engine, load = load_with(threads)
    model, tokenizer = engine.model, engine.tokenizer

    def once() -> tuple[float, float]:
        start = time.perf_counter()
        ids = tokenizer.encode(
            tokenizer.apply_chat_template(json.dumps(rag_messages()), add_generation_prompt=True)
        )
        params = og.GeneratorParams(model)
        n = len(ids) + tokens
        params.set_search_options(max_length=n, min_length=n, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        generator.generate_next_token()
        first = time.perf_counter()
        while not generator.is_done():
            generator.generate_next_token()
        end = time.perf_counter()
        return first - start, (tokens - 1) / (end - first)

    return (*_median(_repeat(once, reps)), load, threads)


def bench_transformers(tokens: int, reps: int) -> tuple[float, float, float, int]:
    """(TTFT s, decode tok/s, load s, threads) of transformers+torch on the packaged GGUF.

    Kernels on all threads collapse when the cores are shared (we saw 6x slower prefill
    than on 1 thread under load), so a short probe picks the faster of 1 and all threads.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = packaged_gguf()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.eval()
    load = time.perf_counter() - t0

    def generate(n: int) -> float:
        start = time.perf_counter()
        ids = tokenizer.apply_chat_template(
            rag_messages(), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            model.generate(
                **ids,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        return time.perf_counter() - start

    def once() -> tuple[float, float]:
        ttft = generate(1)  # prompt processing plus one token, as a client would wait for it
        total = generate(tokens)
        return ttft, (tokens - 1) / (total - ttft)

    def probe(threads: int) -> float:
        torch.set_num_threads(threads)
        generate(4)  # warm-up at this thread count
        return generate(4)

    threads = min(sorted({1, os.cpu_count() or 1}), key=probe)
    torch.set_num_threads(threads)
    return (*_median(_repeat(once, reps)), load, threads)


def _repeat(run: Callable[[], tuple[float, float]], reps: int) -> list[tuple[float, float]]:
    run()  # warm-up: first calls allocate and pick kernels
    return [run() for _ in range(reps)]


def main(argv: list[str] | None = None) -> str:
    """Run the comparison and return the markdown section for bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_engine")
    parser.add_argument("--quick", action="store_true", help="1 repetition, 32 tokens")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per answer")
    args = parser.parse_args(argv)
    reps, tokens = (1, 32) if args.quick else (args.reps, args.tokens)
    settings = get_settings()
    if not engine_available(settings):
        raise SystemExit("The embedded model is not built: run `make models` first.")

    g_ttft, g_rate, g_load, g_threads = bench_genai(settings.engine_model_dir, tokens, reps)
    s_ttft, s_rate, prompt_tokens, startup = bench_server(tokens, reps, g_threads)
    t_ttft, t_rate, t_load, t_threads = bench_transformers(tokens, reps)

    served = f"embedded engine, `rag.embedded_llm serve` over HTTP (int4, {g_threads} thread(s))"
    in_process = f"onnxruntime-genai in-process (int4, {g_threads} thread(s))"
    torch_path = f"transformers+torch on the GGUF (dequantized fp32, {t_threads} thread(s))"
    rows = [
        (served, s_ttft, s_rate, f"{startup:.1f} s (process start)"),
        (in_process, g_ttft, g_rate, f"{g_load:.1f} s"),
        (torch_path, t_ttft, t_rate, f"{t_load:.1f} s"),
    ]
    lines = [
        "## Embedded engine vs transformers (bench_engine)",
        "",
        "SmolLM2-135M-Instruct from the packaged Q4_1 GGUF; a RAG prompt of "
        f"{prompt_tokens} tokens (templated), {tokens} tokens generated greedily with EOS "
        f"ignored; median of {reps} runs after a warm-up, all in the same run. TTFT counts "
        "from the request to the first token.",
        "",
        "| path | TTFT | decode tok/s | load |",
        "|---|---|---|---|",
        *(f"| {name} | {ttft:.2f} s | {rate:.1f} | {load} |" for name, ttft, rate, load in rows),
        "",
        f"1-minute load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(other work shared the machine). Each runtime used the faster of 1 and "
        f"{os.cpu_count()} threads, picked by a short probe.",
        "",
        f"The served engine, HTTP included, decodes {s_rate / t_rate:.1f}x as fast as "
        f"transformers+torch; its time to first token is {s_ttft:.2f} s against {t_ttft:.2f} s "
        f"({t_ttft / s_ttft:.1f}x).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
