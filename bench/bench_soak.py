"""Soak: chat sessions over the websocket and streamed API requests while ingests churn the docs.

Run as ``python -m bench soak`` or
``python bench/bench_soak.py [--sessions 20] [--streams 20] [--seconds 60] [--quick]``;
prints a markdown section for bench/RESULTS.md.

What runs, all on 127.0.0.1 and all stopped at the end:

- a fake OpenAI-compatible model server (tests/fake_openai.py) with small token delays;
- the real app, ``chainlit run app.py`` (tests/chainlit_server.py), over a copy of ``docs/``;
- ``--sessions`` chat sessions, each a real socket.io client (tests/chat_socket.py) asking
  one question after another over the chat websocket;
- ``--streams`` clients streaming ``POST /v1/chat/completions`` one after another;
- meanwhile, one ``python -m ingest`` subprocess after another over the served docs folder,
  each after adding, changing and removing a file in it.

A request is an error when it raises, times out, gets a non-200 status, ends without
``[DONE]``, or its text is neither the model's answer nor the relevance gate's "not covered"
sentence (for example "Something went wrong" or "[The answer stopped early ...]"). An ingest
is an error when it exits non-zero. The app's memory is the resident set of the chainlit
process, sampled twice a second, and the kernel's high-water mark at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench.bench_ttft import QUESTIONS, percentile  # noqa: E402
from rag.errors import RagError  # noqa: E402
from rag.grounding import NOT_COVERED  # noqa: E402
from tests.chainlit_server import app_env, running_chainlit  # noqa: E402
from tests.chat_socket import ChatSocket  # noqa: E402
from tests.fake_openai import FakeOpenAI  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "soak-model"
REPLY = "The guide says to put your files into the docs folder and run the ingest [1]."
ANSWER_MARK = "The guide says to put your files"
ANSWER_WAIT_S = 60.0  # one answer may take this long before it counts as an error
GRACE_S = 90.0  # after --seconds, requests in flight get this long to finish
CHURN_TEXT = "Churn note {n}, revision {r}: files in the docs folder are ingested by hash.\n"
CHURN_NAME = re.compile(r"churn-\d+\.md")


class SoakFailed(RagError):
    """The soak could not be set up (the app or the first ingest did not start)."""


@dataclass
class Churn:
    """Ingest runs over a folder that changes between them."""

    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    changes: int = 0
    # A removed file's name -> when the ingest after its removal finished: from then on
    # no answer may name it as a source.
    gone_at: dict[str, float] = field(default_factory=dict)

    def stale(self, text: str, sent: float) -> list[str]:
        """The removed files ``text`` names although they were gone before ``sent``."""
        return [
            name for name in CHURN_NAME.findall(text) if self.gone_at.get(name, sent) < sent
        ]


@dataclass
class Tally:
    """What one kind of traffic measured; appended to from several threads."""

    first_s: list[float] = field(default_factory=list)  # to the first token of the answer
    full_s: list[float] = field(default_factory=list)  # to the end of the answer
    first_byte_s: list[float] = field(default_factory=list)  # to the response headers (API)
    requests: int = 0
    not_covered: int = 0
    stale: list[str] = field(default_factory=list)  # sources naming a file ingested away
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(
        self, text: str, first: float | None, full: float, sent: float, churn: Churn
    ) -> None:
        """Count one finished request (sent at ``sent``) by what its text says."""
        with self.lock:
            self.requests += 1
            self.stale.extend(churn.stale(text, sent))
            if ANSWER_MARK in text and first is not None:
                self.first_s.append(first)
                self.full_s.append(full)
            elif NOT_COVERED in text:
                self.not_covered += 1
            else:
                self.errors.append(f"unexpected text: {text[:160]!r}")

    def failed(self, why: str) -> None:
        with self.lock:
            self.requests += 1
            self.errors.append(why[:200])


class TimedChat(ChatSocket):
    """A chat socket that also notes when each event arrived."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.times: list[float] = []
        super().__init__(*args, **kwargs)

    def _record(self, event: str, *args: Any) -> None:
        self.times.append(time.perf_counter())  # before the event, so indexes line up
        super()._record(event, *args)

    def first_token_at(self, start: int) -> float | None:
        """When the first streamed token after event ``start`` arrived."""
        for n in range(start, len(self.events)):
            if self.events[n][0] == "stream_token":
                return self.times[n]
        return None


def chat_session(
    url: str, until: float, think_s: float, tally: Tally, churn: Churn, n: int
) -> None:
    """One chat: connect, then ask question after question until ``until``."""
    try:
        chat = TimedChat(url, origin=url, timeout_s=ANSWER_WAIT_S).connect()
    except Exception as exc:  # noqa: BLE001 - every failure is a counted error
        tally.failed(f"chat connect: {type(exc).__name__}: {exc}")
        return
    try:
        while time.perf_counter() < until:
            question = QUESTIONS[n % len(QUESTIONS)]
            n += 1
            start, sent = len(chat.events), time.perf_counter()
            try:
                reply = chat.ask(question)
            except Exception as exc:  # noqa: BLE001
                tally.failed(f"chat: {type(exc).__name__}: {exc}")
                return  # the socket's state is unknown now: this session ends
            done = time.perf_counter() - sent
            first = chat.first_token_at(start)
            sources = " ".join(str(e.get("name", "")) for e in reply.elements)
            text = f"{reply.text}\n{sources}"
            tally.answered(text, None if first is None else first - sent, done, sent, churn)
            time.sleep(think_s)
    finally:
        chat.close()


async def api_stream(
    client: httpx.AsyncClient, question: str, tally: Tally, churn: Churn
) -> None:
    """One streamed chat completion, timed to its headers, first token and end."""
    sent = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    finished = False
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": question}]}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            headers_at = time.perf_counter() - sent
            if response.status_code != 200:
                await response.aread()
                tally.failed(f"api HTTP {response.status_code}: {response.text[:160]}")
                return
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    finished = True
                elif line.startswith("data: "):
                    delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                    if delta:
                        first = first if first is not None else time.perf_counter() - sent
                        parts.append(delta)
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        tally.failed(f"api: {type(exc).__name__}: {exc}")
        return
    text = "".join(parts)
    if not finished:
        tally.failed(f"api stream ended without [DONE]: {text[-120:]!r}")
        return
    with tally.lock:
        tally.first_byte_s.append(headers_at)
    tally.answered(text, first, time.perf_counter() - sent, sent, churn)


async def api_streams(
    url: str, streams: int, until: float, tally: Tally, churn: Churn
) -> None:
    """``streams`` clients, each streaming one answer after another until ``until``."""

    async def client_loop(n: int) -> None:
        while time.perf_counter() < until:
            await api_stream(client, QUESTIONS[n % len(QUESTIONS)], tally, churn)
            n += 1

    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(base_url=url, timeout=ANSWER_WAIT_S, limits=limits) as client:
        await asyncio.gather(*(client_loop(n) for n in range(streams)))


def churn_ingests(env: dict[str, str], docs: Path, until: float, churn: Churn) -> None:
    """Until ``until``: add a file, change one, remove one, then run ``python -m ingest``."""
    alive: list[Path] = []
    removed: list[str] = []
    n = 0
    while time.perf_counter() < until:
        n += 1
        added = docs / f"churn-{n}.md"
        added.write_text(f"# Churn note {n}\n\n" + CHURN_TEXT.format(n=n, r=0) * 20)
        alive.append(added)
        if len(alive) > 1:
            alive[-2].write_text(alive[-2].read_text() + CHURN_TEXT.format(n=n - 1, r=n))
        if len(alive) > 3:
            gone = alive.pop(0)
            gone.unlink()
            removed.append(gone.name)
        churn.changes += 1
        started = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "ingest", "--json"],
            cwd=docs.parent,  # a .env in the repository must not change the run
            env=env,
            capture_output=True,
            text=True,
            timeout=GRACE_S,
        )
        churn.seconds.append(time.perf_counter() - started)
        if run.returncode != 0:
            churn.errors.append(f"ingest exit {run.returncode}: {run.stderr.strip()[-200:]}")
            continue
        while removed:
            churn.gone_at[removed.pop()] = time.perf_counter()


def _pid_serving(port: str) -> int:
    """The process id of the ``chainlit run ... --port PORT`` this benchmark started."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"chainlit") for a in argv) and port.encode() in argv:
            return int(entry.name)
    raise SoakFailed(f"No chainlit process serves port {port}; see the app's log.")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def sample_rss(pid: int, stop: threading.Event, samples: list[int]) -> None:
    """RSS of ``pid`` in KiB twice a second until ``stop`` is set."""
    while not stop.wait(0.5):
        try:
            samples.append(_status_kib(pid, "VmRSS"))
        except OSError:
            return


@dataclass
class Soak:
    """Everything one run measured."""

    args: argparse.Namespace
    chat: Tally
    api: Tally
    churn: Churn
    rss_kib: list[int]
    peak_kib: int
    wall_s: float
    load: tuple[float, float]


def run_soak(url: str, env: dict[str, str], docs: Path, args: argparse.Namespace) -> Soak:
    """Drive the running app at ``url`` for ``args.seconds`` and collect what happened."""
    pid = _pid_serving(url.rsplit(":", 1)[1])
    chat, api, churn, rss = Tally(), Tally(), Churn(), [_status_kib(pid, "VmRSS")]
    stop = threading.Event()
    began, load_before = time.perf_counter(), os.getloadavg()[0]
    until = began + args.seconds
    threads = [
        threading.Thread(
            target=chat_session, args=(url, until, args.think_ms / 1000, chat, churn, n)
        )
        for n in range(args.sessions)
    ]
    threads.append(threading.Thread(target=churn_ingests, args=(env, docs, until, churn)))
    sampler = threading.Thread(target=sample_rss, args=(pid, stop, rss), daemon=True)
    for thread in [*threads, sampler]:
        thread.start()
    streams = api_streams(url, args.streams, until, api, churn)
    asyncio.run(asyncio.wait_for(streams, args.seconds + GRACE_S))
    for thread in threads:
        thread.join(timeout=max(1.0, until + GRACE_S - time.perf_counter()))
    stuck = sum(t.is_alive() for t in threads)
    if stuck:
        chat.failed(f"{stuck} chat session(s) or ingests still running {GRACE_S:.0f} s later")
    peak = _status_kib(pid, "VmHWM")
    stop.set()
    return Soak(
        args, chat, api, churn, rss, peak, time.perf_counter() - began,
        (load_before, os.getloadavg()[0]),
    )


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.0f}" if values else "-"


def _pair(values: list[float]) -> str:
    return f"{_ms(values, 50)} / {_ms(values, 95)}" if values else "-"


def _row(label: str, tally: Tally) -> str:
    counts = [tally.requests, len(tally.full_s), tally.not_covered, len(tally.stale)]
    times = [_pair(tally.first_byte_s), _pair(tally.first_s), _pair(tally.full_s)]
    cells = [label, *map(str, counts), str(len(tally.errors)), *times]
    return "| " + " | ".join(cells) + " |"


def report(soak: Soak) -> str:
    """The markdown section for bench/RESULTS.md."""
    args, churn = soak.args, soak.churn
    errors = len(soak.chat.errors) + len(soak.api.errors) + len(churn.errors)
    stale = len(soak.chat.stale) + len(soak.api.stale)
    verdict = "meets" if errors == 0 else "misses"
    lines = [
        "## Soak: chat sessions, API streams and ingests at once (bench_soak)",
        "",
        f"`python -m bench.bench_soak --sessions {args.sessions} --streams {args.streams} "
        f"--seconds {args.seconds:g}`: the real app (`chainlit run app.py`) over a copy of "
        f"`docs/`, a fake model server on loopback ({args.first_ms:g} ms to the first token, "
        f"{args.token_ms:g} ms between tokens, {len(REPLY.split())} tokens per answer); "
        f"{args.sessions} socket.io chat sessions asking one question after another "
        f"({args.think_ms:g} ms pause), {args.streams} clients streaming `/v1/chat/completions` "
        "back to back, and `python -m ingest` run after run over the served folder, each after "
        "adding, changing and removing a file. Times are from the client's send, in ms. "
        "A stale source is an answer naming a removed file after the ingest that removed it.",
        "",
        "| traffic | requests | answered | not covered | stale sources | errors | "
        "headers p50 / p95 | first token p50 / p95 | full answer p50 / p95 |",
        "|---|---|---|---|---|---|---|---|---|",
        _row("chat websocket", soak.chat),
        _row("API stream", soak.api),
        "",
        f"Ingests during the run: {len(churn.seconds)} ({churn.changes} folder changes), "
        f"{len(churn.errors)} failed, p50 {_ms(churn.seconds, 50)} ms each. "
        f"App memory (chainlit process RSS): {soak.rss_kib[0] / 1024:.0f} MiB at the start, "
        f"{max(soak.rss_kib) / 1024:.0f} MiB sampled peak, {soak.peak_kib / 1024:.0f} MiB "
        f"high-water mark. Wall time {soak.wall_s:.0f} s; load average (1 min) "
        f"{soak.load[0]:.1f} before, {soak.load[1]:.1f} after, on {os.cpu_count()} cores.",
        "",
        f"Errors: **{errors}** (bar: 0): {verdict} it. Stale sources: {stale}.",
    ]
    for why in (soak.chat.errors + soak.api.errors + churn.errors)[:5]:
        lines.append(f"- {why}")
    return "\n".join(lines)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sessions", type=int, default=20, help="chat sessions (default 20)")
    parser.add_argument("--streams", type=int, default=20, help="API stream clients (default 20)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long (default 60)")
    parser.add_argument("--think-ms", type=float, default=250.0, help="pause between questions")
    parser.add_argument("--first-ms", type=float, default=50.0, help="model's first-token delay")
    parser.add_argument("--token-ms", type=float, default=20.0, help="model's delay per token")
    parser.add_argument("--quick", action="store_true", help="3 sessions, 3 streams, 10 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.streams, args.seconds = 3, 3, 10.0
    if min(args.sessions, args.streams) < 0 or args.sessions + args.streams > 200:
        parser.error("--sessions and --streams are counts from 0, at most 200 together")
    if not 1 <= args.seconds <= 3600:
        parser.error("--seconds must be between 1 and 3600")
    return args


def main(argv: list[str] | None = None) -> str:
    args = _arguments(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    try:
        store = work / "store"
        shutil.copytree(REPO / "docs", store / "docs")
        with FakeOpenAI(
            models=[MODEL],
            reply=REPLY,
            first_token_delay_s=args.first_ms / 1000,
            token_delay_s=args.token_ms / 1000,
        ) as fake:
            env = app_env(store, fake.base_url, LLM_MODEL=MODEL)
            first = subprocess.run(
                [sys.executable, "-m", "ingest"], cwd=store, env=env, capture_output=True, text=True
            )
            if first.returncode != 0:
                raise SoakFailed(f"The first ingest failed: {first.stderr.strip()[-300:]}")
            with running_chainlit(work, env) as app:
                soak = run_soak(app.url, env, store / "docs", args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(soak)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
