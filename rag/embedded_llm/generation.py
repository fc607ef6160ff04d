"""Text generation with ONNX Runtime GenAI, one request at a time on a worker thread.

``onnxruntime_genai`` generation is blocking, so it never runs on the event
loop: :class:`Engine` owns one worker thread that takes jobs from a FIFO queue
(concurrent requests wait their turn, and all complete) and sends each token's
text back to asyncio through a queue. Cancelling the consumer (a client that
went away) sets the job's cancel flag, which the worker checks between tokens.

>>> engine = Engine(Path(".data/models/smollm2-135m-instruct-int4"))   # doctest: +SKIP
>>> ids = engine.encode(engine.render([{"role": "user", "content": "Hi"}]))   # doctest: +SKIP
>>> async for event in engine.generate(ids, Sampling(max_tokens=20)):   # doctest: +SKIP
...     print(event)
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime_genai as og

from rag.embedded_llm.model import ModelInfo

log = logging.getLogger("rag.embedded_llm")


@dataclass(frozen=True)
class Sampling:
    """How to generate: OpenAI's knobs plus ``min_tokens`` (EOS is ignored until then)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    min_tokens: int = 0
    # OpenAI's logprobs: None, none reported; else each token's, with this many alternatives.
    top_logprobs: int | None = None


# Tiny models (SmolLM2-135M) fall into loops ("* 11434 * 11434 ..."). A generation
# whose last tokens are one sequence of LOOP_MIN_PERIOD+ tokens repeated LOOP_REPEATS
# times is stopped: no real answer repeats itself verbatim like that.
LOOP_REPEATS = 3
LOOP_MIN_PERIOD = 3
LOOP_MAX_PERIOD = 64


def ends_in_loop(
    tokens: Sequence[int],
    repeats: int = LOOP_REPEATS,
    min_period: int = LOOP_MIN_PERIOD,
    max_period: int = LOOP_MAX_PERIOD,
) -> bool:
    """True when ``tokens`` ends with the same run of ``min_period``..``max_period``
    tokens ``repeats`` times in a row."""
    for period in range(min_period, min(max_period, len(tokens) // repeats) + 1):
        tail = tokens[len(tokens) - period :]
        if all(
            tokens[len(tokens) - (k + 1) * period : len(tokens) - k * period] == tail
            for k in range(1, repeats)
        ):
            return True
    return False


@dataclass(frozen=True)
class Delta:
    """A piece of answer text (one or more tokens, never part of a stop sequence)."""

    text: str


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's text and log-probability, and the likeliest tokens at its place."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Finished:
    """The end of a generation: ``reason`` is "stop", "length" or "cancelled"."""

    reason: str
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token, when Sampling.top_logprobs asks


@dataclass(frozen=True)
class Failed:
    """The runtime raised while generating; ``message`` says what happened."""

    message: str


Event = Delta | Finished | Failed


@dataclass
class EngineStats:
    """Counters a test or an operator can read from ``GET /engine/stats``."""

    started: int = 0  # generations the worker began
    finished: int = 0  # ended by EOS, stop sequence or max_tokens
    cancelled: int = 0  # abandoned because the client went away
    tokens: int = 0  # tokens generated in total
    last_cancelled_tokens: int | None = None  # tokens made by the latest cancelled job
    prefix_tokens_reused: int = 0  # prompt tokens not read again, thanks to the kept prefix

    def as_dict(self) -> dict[str, int | None]:
        return dict(self.__dict__)


@dataclass
class _Job:
    prompt_ids: np.ndarray
    sampling: Sampling
    emit: Callable[[Event], None]
    cancel: threading.Event = field(default_factory=threading.Event)


class StopMatcher:
    """Cuts the text at the first stop sequence, holding back text that could start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return (text safe to emit now, whether a stop sequence was hit)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        """Text still held back when generation ended without a stop sequence."""
        out, self.pending = self.pending, ""
        return out


class Engine:
    """A loaded model, its tokenizer and the one worker thread that generates."""

    def __init__(self, model_dir: Path, threads: int = 0, reuse_prefix: bool = True) -> None:
        """Load the model in ``model_dir``; ``threads`` > 0 caps onnxruntime's intra-op threads,
        and ``reuse_prefix`` lets a greedy request reuse the prompt the last one shared with it."""
        self.info = ModelInfo.read(model_dir)
        config = og.Config(str(model_dir))
        if threads > 0:
            # On shared cores one thread decodes ~2x faster than two that wait on each other.
            options = {"session_options": {"intra_op_num_threads": threads}}
            config.overlay(json.dumps({"model": {"decoder": options}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.eos_ids = {int(t) for t in self.tokenizer.eos_token_ids}
        self.stats = EngineStats()
        self.reuse_prefix = reuse_prefix
        self._prefix: _Prefix | None = None  # owned by the worker thread
        self._jobs: queue.Queue[_Job] = queue.Queue()
        # Daemon: a pending generation must never keep a stopping server alive.
        self._worker = threading.Thread(target=self._run, name="generation", daemon=True)
        self._worker.start()

    # --- prompt -------------------------------------------------------------
    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt text: ``messages`` through the model's own chat template."""
        return self.tokenizer.apply_chat_template(
            json.dumps(list(messages)), add_generation_prompt=True
        )

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` (int32)."""
        return np.asarray(self.tokenizer.encode(text), dtype=np.int32)

    # --- generation -----------------------------------------------------------
    async def generate(self, prompt_ids: np.ndarray, sampling: Sampling) -> AsyncIterator[Event]:
        """Queue a generation and yield its events; closing or cancelling this iterator stops it."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                job.cancel.set()

        job = _Job(prompt_ids, sampling, emit)
        self._jobs.put(job)
        try:
            while True:
                event = await events.get()
                yield event
                if not isinstance(event, Delta):
                    return
        finally:
            # Reached on normal end too, where it is harmless; on a disconnect it stops the worker.
            job.cancel.set()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job.cancel.is_set():
                job.emit(Finished("cancelled", 0))
                continue
            try:
                self._generate(job)
            except Exception as exc:  # report it to the request; the worker must live on
                log.exception("generation failed")
                self._drop_prefix()
                job.emit(Failed(f"generation failed: {exc}"))

    def _generate(self, job: _Job) -> None:
        s = job.sampling
        prompt_len = len(job.prompt_ids)
        self.stats.started += 1
        started = time.perf_counter()
        reused_before = self.stats.prefix_tokens_reused
        generator, limit = self._generator_for(job)  # reading the prompt is in the TTFT
        decoder = self.tokenizer.create_stream()
        stops = StopMatcher(s.stop)
        first_token_at: float | None = None
        generated = 0
        produced: list[int] = []
        logprobs: list[TokenLogprob] = []
        reason = "length"
        while not generator.is_done():
            if job.cancel.is_set():
                reason = "cancelled"
                break
            if generated == limit:
                break
            # Read before generate_next_token: they are the distribution the token comes from.
            logits = None if s.top_logprobs is None else np.asarray(generator.get_logits())
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            generated += 1
            if logits is not None:
                logprobs.append(self._logprob(logits, token, s.top_logprobs or 0))
            first_token_at = first_token_at or time.perf_counter()
            if token in self.eos_ids:
                reason = "stop"
                break
            text, stopped = stops.feed(decoder.decode(token))
            if text:
                job.emit(Delta(text))
            if stopped:
                reason = "stop"
                break
            produced.append(token)
            if ends_in_loop(produced):
                reason = "stop"
                break
        if reason != "cancelled":
            rest = stops.flush()
            if rest:
                job.emit(Delta(rest))
        # A fresh generator's KV cache is freed before the next job allocates its own (a
        # kept prefix holds its generator itself).
        del generator
        self._count(reason, generated)
        elapsed = time.perf_counter() - started
        ttft = (first_token_at - started) if first_token_at else elapsed
        log.info(
            "generation %s: prompt %d tokens (%d reused), %d generated, ttft %.2fs, %.1f tok/s",
            reason, prompt_len, self.stats.prefix_tokens_reused - reused_before, generated, ttft,
            (generated - 1) / (elapsed - ttft) if generated > 1 and elapsed > ttft else 0.0,
        )  # fmt: skip
        job.emit(Finished(reason, generated, tuple(logprobs)))

    def _count(self, reason: str, generated: int) -> None:
        """Add one ended generation to the stats."""
        self.stats.tokens += generated
        if reason == "cancelled":
            self.stats.cancelled += 1
            self.stats.last_cancelled_tokens = generated
        else:
            self.stats.finished += 1

    def _logprob(self, logits: np.ndarray, token: int, top: int) -> TokenLogprob:
        """``token``'s log-probability under ``logits`` and the ``top`` likeliest tokens'."""
        scores = logits.reshape(-1).astype(np.float64)
        scores -= scores.max()
        logp = scores - np.log(np.exp(scores).sum())
        best = np.argpartition(-logp, top)[:top] if top else np.empty(0, dtype=np.int64)
        best = best[np.argsort(-logp[best])]
        text = self.tokenizer.decode
        return TokenLogprob(
            text([token]), float(logp[token]), tuple((text([int(i)]), float(logp[i])) for i in best)
        )

    def _generator_for(self, job: _Job) -> tuple[og.Generator, int | None]:
        """A generator that has read ``job``'s prompt, and the tokens it may still make
        (None: up to its own max_length).

        A greedy request reuses the previous greedy request's generator: it is rewound to
        the tokens both prompts start with (the system prompt and the context's heading,
        the same every time) and reads only the rest, which saves that much prompt
        reading on a CPU where reading the prompt is most of the wait. Its KV cache then
        stays allocated between requests. A sampled request, or one with ``min_tokens``,
        gets a fresh generator sized to it, as these search options belong to the
        generator.
        """
        s, ids = job.sampling, job.prompt_ids
        if s.temperature > 0 or s.min_tokens > 0 or not self.reuse_prefix:
            self._drop_prefix()
            # The KV cache is sized by max_length: ask for what this request needs, not 8192.
            length = len(ids) + s.max_tokens
            generator = og.Generator(self.model, self._params(length, len(ids), s))
            generator.append_tokens(ids)
            return generator, None
        if self._prefix is not None and len(ids) + s.max_tokens <= self._prefix.max_length:
            kept = _common_prefix(self._prefix.tokens, ids)
            self._prefix.generator.rewind_to(kept)
            self.stats.prefix_tokens_reused += kept
        else:
            self._drop_prefix()
            # Sized for the longest request the window allows, so that later ones fit.
            length = max(self.info.context_tokens, len(ids) + s.max_tokens)
            generator = og.Generator(self.model, self._params(length, 0, s))
            self._prefix = _Prefix(generator, np.empty(0, dtype=np.int32), length)
            kept = 0
        generator = self._prefix.generator
        try:
            generator.append_tokens(ids[kept:])
        except Exception:
            self._drop_prefix()  # a half-read prompt must not be the next request's prefix
            raise
        self._prefix.tokens = ids
        return generator, s.max_tokens

    def _params(self, max_length: int, prompt_len: int, s: Sampling) -> og.GeneratorParams:
        params = og.GeneratorParams(self.model)
        options: dict[str, object] = {
            "max_length": max_length,
            "min_length": prompt_len + min(s.min_tokens, s.max_tokens),
            "do_sample": s.temperature > 0,
        }
        if s.temperature > 0:
            options.update(temperature=s.temperature, top_p=s.top_p)
        if s.seed is not None:
            options["random_seed"] = s.seed
        params.set_search_options(**options)
        return params

    def _drop_prefix(self) -> None:
        self._prefix = None


@dataclass
class _Prefix:
    """The generator kept from the last greedy request, and the prompt its cache holds."""

    generator: og.Generator
    tokens: np.ndarray
    max_length: int


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens ``a`` and ``b`` share, leaving at least one of ``b`` to read
    (the generator needs new input before it can produce the next token)."""
    n = min(len(a), len(b) - 1)
    if n <= 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n
