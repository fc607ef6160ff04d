"""Ask one question to several models with the same retrieved context, and time them.

Retrieval runs once; every model then answers through :func:`rag.answer.answer`
with those same hits, so the answers differ only by the model. Each run is
timed from the request to its first token (``ttft_s``), to its end
(``total_s``), and by decode speed (``tokens_per_s`` = completion tokens per
second after the first token).

:func:`compare_stream` yields events (:class:`CompareContext` once, then
:class:`ModelStarted`, :class:`ModelDelta`, :class:`ModelDone` or
:class:`ModelFailed` per model, each tagged with the model name) so a UI can
stream the answers side by side. :func:`compare` collects them.

Concurrency: models served from *this machine* (a loopback endpoint: the
embedded engine, Foundry Local, Ollama) run one after the other, because on a
small CPU two generations at once each run at about half speed, and the
figures would measure the contention instead of the models. Models on other
hosts (a cloud fallback, a GPU box on the LAN) run concurrently with the local
lane, since they do not share its cores.

Model names are plain ids on the local endpoint (``phi-4-mini``) or pinned to
an endpoint as ``endpoint:model`` (``fallback:gpt-4o-mini``), see
:mod:`rag.routing`. A comparison never re-routes: a model that is down fails
with its sentence instead of being answered by another one.

CLI::

    python -m rag.compare "How do I add files?" --models local:phi-4-mini fallback:gpt-4o-mini
    python -m rag.compare "How do I add files?" --models A B --json
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from rag.answer import AnswerDelta, AnswerDone, AnswerStart, answer, format_sources
from rag.discovery import local_endpoint
from rag.errors import EndpointUnavailable, RagError
from rag.llm import Endpoint, Message
from rag.retrieve import Hit, retrieve
from rag.routing import LOCAL_NAME, Route, load_routing, split_qualified
from rag.settings import Settings, get_settings


@dataclass(frozen=True)
class CompareContext:
    """The hits every model receives (sent once, before any model starts)."""

    hits: list[Hit]


@dataclass(frozen=True)
class ModelStarted:
    """``model``'s request was accepted by ``route``."""

    model: str
    route: Route


@dataclass(frozen=True)
class ModelDelta:
    """A piece of ``model``'s answer."""

    model: str
    text: str


@dataclass(frozen=True)
class ModelDone:
    """``model`` finished; its full answer and figures."""

    model: str
    route: Route
    text: str
    ttft_s: float
    tokens_per_s: float
    total_s: float
    completion_tokens: int


@dataclass(frozen=True)
class ModelFailed:
    """``model`` could not answer (or broke off); ``error`` is a sentence for the user."""

    model: str
    error: str
    partial: str = ""


CompareEvent = CompareContext | ModelStarted | ModelDelta | ModelDone | ModelFailed
ModelResult = ModelDone | ModelFailed


@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare`: the shared hits and one result per model, in input order."""

    hits: list[Hit]
    results: list[ModelResult]


def tokens_per_second(completion_tokens: int, ttft_s: float, total_s: float) -> float:
    """Decode speed: tokens after the first one, over the time after the first one.

    The first token's latency is in ``ttft_s`` already; counting it here again
    would make a slow-to-start fast model look slow twice.
    """
    decode_s = total_s - ttft_s
    if completion_tokens <= 1 or decode_s <= 0:
        return 0.0
    return (completion_tokens - 1) / decode_s


def on_this_machine(endpoint: Endpoint) -> bool:
    """True for a loopback endpoint: it shares this machine's CPU with every other local one."""
    host = urlsplit(endpoint.base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _pinned(model: str, settings: Settings, local: Endpoint | None) -> tuple[str, Endpoint | None]:
    """The ``endpoint:model`` id for ``model`` and its endpoint (None: local, not yet found)."""
    table = load_routing(settings)
    probe = local or Endpoint(name=LOCAL_NAME, base_url="http://127.0.0.1/v1")
    pinned = split_qualified(model, table, probe)
    if pinned is None:
        return f"{LOCAL_NAME}:{model}", local
    endpoint, name = pinned
    if endpoint is probe:
        return f"{LOCAL_NAME}:{name}", local
    return f"{endpoint.name}:{name}", endpoint


async def compare_stream(
    question: str,
    models: Sequence[str],
    *,
    history: Sequence[Message] = (),
    hits: list[Hit] | None = None,
    local: Endpoint | None = None,
    settings: Settings | None = None,
) -> AsyncIterator[CompareEvent]:
    """Answer ``question`` with each of ``models`` on the same hits, yielding events as they come.

    Raises :class:`~rag.errors.NoDocuments` (before any event) on an empty store;
    failures of a single model are :class:`ModelFailed` events, the others go on.
    """
    settings = settings or get_settings()
    if not models:
        raise ValueError("compare needs at least one model")
    if hits is None:
        hits = await asyncio.to_thread(retrieve, question, settings=settings)
    yield CompareContext(hits=list(hits))

    plans = [(model, *_pinned(model, settings, local)) for model in models]
    local_error: str | None = None
    if local is None and any(endpoint is None for _, _, endpoint in plans):
        try:
            local = await local_endpoint(settings)
        except EndpointUnavailable as exc:
            local_error = str(exc)

    queue: asyncio.Queue[CompareEvent | None] = asyncio.Queue()

    async def run_one(model: str, pinned: str, endpoint: Endpoint | None) -> None:
        if endpoint is None and local is None:
            await queue.put(ModelFailed(model, local_error or "No local endpoint."))
            return
        received: list[str] = []
        started = time.perf_counter()
        first: float | None = None
        try:
            async for event in answer(
                question,
                history=history,
                model=pinned,
                # A pinned model ignores `local` in routing; it is only a required
                # argument then, and must not trigger discovery again.
                local=local or endpoint,
                hits=list(hits),
                settings=settings,
            ):
                if isinstance(event, AnswerStart):
                    await queue.put(ModelStarted(model, event.route))
                elif isinstance(event, AnswerDelta):
                    if first is None:
                        first = time.perf_counter()
                    received.append(event.text)
                    await queue.put(ModelDelta(model, event.text))
                elif isinstance(event, AnswerDone):
                    end = time.perf_counter()
                    ttft = (first or end) - started
                    total = end - started
                    tokens = event.completion_tokens or len(received)
                    await queue.put(
                        ModelDone(
                            model=model,
                            route=event.route,
                            text=event.text or "".join(received),
                            ttft_s=round(ttft, 4),
                            tokens_per_s=round(tokens_per_second(tokens, ttft, total), 2),
                            total_s=round(total, 4),
                            completion_tokens=tokens,
                        )
                    )
        except RagError as exc:
            partial = getattr(exc, "partial", "") or "".join(received)
            await queue.put(ModelFailed(model, str(exc), partial))

    async def lane(runs: list[tuple[str, str, Endpoint | None]]) -> None:
        for run in runs:
            await run_one(*run)

    lanes: dict[str, list[tuple[str, str, Endpoint | None]]] = {}
    for model, pinned, endpoint in plans:
        shared_cpu = endpoint is None or on_this_machine(endpoint)
        key = "this machine" if shared_cpu else endpoint.base_url  # type: ignore[union-attr]
        lanes.setdefault(key, []).append((model, pinned, endpoint))

    tasks = [asyncio.create_task(lane(runs)) for runs in lanes.values()]
    pending = len(tasks)
    for task in tasks:
        task.add_done_callback(lambda _t: queue.put_nowait(None))
    try:
        while pending:
            event = await queue.get()
            if event is None:
                pending -= 1
                continue
            yield event
        for task in tasks:
            task.result()  # re-raise anything that was not a RagError
    finally:
        for task in tasks:
            task.cancel()


async def compare(
    question: str,
    models: Sequence[str],
    *,
    history: Sequence[Message] = (),
    hits: list[Hit] | None = None,
    local: Endpoint | None = None,
    settings: Settings | None = None,
) -> Comparison:
    """Run :func:`compare_stream` to the end; results come back in the order of ``models``."""
    shared: list[Hit] = []
    results: dict[str, ModelResult] = {}
    async for event in compare_stream(
        question, models, history=history, hits=hits, local=local, settings=settings
    ):
        if isinstance(event, CompareContext):
            shared = event.hits
        elif isinstance(event, ModelDone | ModelFailed):
            results[event.model] = event
    return Comparison(hits=shared, results=[results[m] for m in models if m in results])


# --- what a chat UI needs ---------------------------------------------------------------

COMPARE_USAGE = (
    "Usage: `/compare MODEL_A MODEL_B your question` (or `/compare A,B,C your question`). "
    "Models are ids on the local endpoint or `endpoint:model`, e.g. `fallback:gpt-4o-mini`."
)


class CompareUsage(RagError):
    """A ``/compare`` command that does not name models and a question."""


def parse_compare_command(text: str) -> tuple[list[str], str] | None:
    """``(models, question)`` from ``/compare A B question`` or ``/compare A,B,C question``.

    None when ``text`` is not a ``/compare`` command; :class:`CompareUsage` (with
    the usage sentence) when it is one without two models and a question.

    >>> parse_compare_command("/compare phi-4-mini fallback:gpt-4o-mini How do I add files?")
    (['phi-4-mini', 'fallback:gpt-4o-mini'], 'How do I add files?')
    """
    words = text.strip().split(maxsplit=1)
    if not words or words[0].lower() != "/compare":
        return None
    rest = words[1] if len(words) > 1 else ""
    first, _, tail = rest.partition(" ")
    if "," in first:
        models, question = [m for m in first.split(",") if m], tail.strip()
    else:
        second, _, question = tail.strip().partition(" ")
        models, question = [m for m in (first, second) if m], question.strip()
    if len(models) < 2 or not question:
        raise CompareUsage(COMPARE_USAGE)
    if len(set(models)) < len(models):
        # Columns are keyed by model name: the same model twice would merge into one.
        raise CompareUsage(f"Name each model only once. {COMPARE_USAGE}")
    return models, question


@dataclass
class Column:
    """One model's side of a comparison as a UI shows it."""

    model: str
    endpoint: str = ""
    text: str = ""
    figures: str = ""  # "TTFT 0.42 s · 31.5 tokens/s · total 3.10 s" once done
    error: str = ""


class CompareBoard:
    """Folds :func:`compare_stream` events into one :class:`Column` per model, for a UI.

    >>> board = CompareBoard(["a", "b"])
    >>> async for event in compare_stream(question, ["a", "b"]):   # doctest: +SKIP
    ...     if board.apply(event) is not None:
    ...         render(board.props())   # {"columns": [{"model", "text", "figures", ...}]}
    """

    def __init__(self, models: Sequence[str]) -> None:
        self.columns = {m: Column(model=m) for m in models}
        self.hits: list[Hit] = []

    def apply(self, event: CompareEvent) -> Column | None:
        """Take one event; returns the column it changed (None for the shared context)."""
        if isinstance(event, CompareContext):
            self.hits = event.hits
            return None
        column = self.columns[event.model]
        if isinstance(event, ModelStarted):
            column.endpoint = f"{event.route.endpoint.name} ({event.route.model})"
        elif isinstance(event, ModelDelta):
            column.text += event.text
        elif isinstance(event, ModelDone):
            column.text, column.figures = event.text, figures(event)
        else:
            column.error = event.error
            column.text = event.partial or column.text
        return column

    def props(self) -> dict[str, list[dict[str, str]]]:
        """Every column as plain data, for a UI element that shows them side by side."""
        return {
            "columns": [
                {
                    "model": c.model,
                    "endpoint": c.endpoint,
                    "text": c.text,
                    "figures": c.figures,
                    "error": c.error,
                    "status": "done"
                    if c.figures or c.error
                    else "answering"
                    if c.endpoint
                    else "waiting",
                }
                for c in self.columns.values()
            ]
        }



def result_json(result: ModelResult) -> dict[str, object]:
    """The CLI's ``--json`` line for one model."""
    if isinstance(result, ModelDone):
        return {
            "model": result.model,
            "answer": result.text,
            "ttft_s": result.ttft_s,
            "tokens_per_s": result.tokens_per_s,
            "total_s": result.total_s,
            "endpoint": result.route.endpoint.name,
        }
    return {
        "model": result.model,
        "answer": result.partial,
        "ttft_s": None,
        "tokens_per_s": None,
        "total_s": None,
        "error": result.error,
    }


def figures(result: ModelDone) -> str:
    """``TTFT 0.42 s · 31.5 tokens/s · total 3.10 s`` for a finished model."""
    return (
        f"TTFT {result.ttft_s:.2f} s · {result.tokens_per_s:.1f} tokens/s · "
        f"total {result.total_s:.2f} s"
    )


def _human(comparison: Comparison) -> str:
    blocks: list[str] = []
    for result in comparison.results:
        if isinstance(result, ModelDone):
            where = f"{result.route.endpoint.name} ({result.route.endpoint.base_url})"
            blocks.append(
                f"=== {result.model} — {where}\n{result.text.strip()}\n--- {figures(result)}"
            )
        else:
            partial = f"\n{result.partial.strip()}" if result.partial else ""
            blocks.append(f"=== {result.model}{partial}\n--- failed: {result.error}")
    sources = format_sources(comparison.hits) if comparison.hits else ""
    return "\n\n".join(blocks) + (
        f"\n\nSources (same for every model):\n{sources}" if sources else ""
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m rag.compare QUESTION --models A B [--json]``."""
    parser = argparse.ArgumentParser(
        prog="python -m rag.compare",
        description="Answer one question with several models on the same retrieved context.",
    )
    parser.add_argument("question")
    parser.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="MODEL",
        help="model ids on the local endpoint, or endpoint:model (e.g. fallback:gpt-4o-mini)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per model")
    args = parser.parse_args(argv)
    settings = get_settings()
    try:
        comparison = asyncio.run(compare(args.question, args.models, settings=settings))
    except RagError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if args.json:
        for result in comparison.results:
            print(json.dumps(result_json(result), ensure_ascii=False))
    else:
        print(_human(comparison))
    return 0 if all(isinstance(r, ModelDone) for r in comparison.results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
