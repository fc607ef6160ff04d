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
import json
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from rag.answer import (
    AnswerDelta,
    AnswerDone,
    AnswerStart,
    answer,
    format_sources,
    on_this_machine,
)
from rag.catalog import model_catalog
from rag.errors import RagError
from rag.llm import Message
from rag.retrieve import Hit, retrieve
from rag.routing import LOCAL_NAME, Kind, Route, qualified_name
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


def pin_id(route: Route) -> str:
    """The ``endpoint:model`` id that names exactly ``route`` (``local:`` for the local server)."""
    owner = route.provider.name if route.provider.kind is Kind.DECLARED else LOCAL_NAME
    return qualified_name(owner, route.model)


async def compare_stream(
    question: str,
    models: Sequence[str],
    settings: Settings,
    *,
    history: Sequence[Message] = (),
    hits: list[Hit] | None = None,
) -> AsyncIterator[CompareEvent]:
    """Answer ``question`` with each of ``models`` on the same hits, yielding events as they come.

    Raises :class:`~rag.errors.NoDocuments` (before any event) on an empty store;
    failures of a single model are :class:`ModelFailed` events, the others go on.
    """
    if not models:
        raise ValueError("compare needs at least one model")
    if hits is None:
        hits = await asyncio.to_thread(retrieve, question, settings=settings)
    yield CompareContext(hits=list(hits))
    queue: asyncio.Queue[CompareEvent | None] = asyncio.Queue()
    lanes: dict[str, list[tuple[str, Route]]] = {}
    for model in models:
        try:
            route = await model_catalog(settings).pinned(model)
        except RagError as exc:
            queue.put_nowait(ModelFailed(model, str(exc)))
            continue
        lane = "this machine" if on_this_machine(route) else route.endpoint.base_url
        lanes.setdefault(lane, []).append((model, route))

    async def lane(runs: list[tuple[str, Route]]) -> None:
        for model, route in runs:
            async for event in _run_one(question, model, route, settings, history, list(hits)):
                await queue.put(event)

    tasks = [asyncio.create_task(lane(runs)) for runs in lanes.values()]
    for task in tasks:
        task.add_done_callback(lambda _t: queue.put_nowait(None))
    try:
        pending = len(tasks)
        while pending or not queue.empty():
            event = await queue.get()
            if event is None:
                pending -= 1
            else:
                yield event
        for task in tasks:
            task.result()  # re-raise anything that was not a RagError
    finally:
        for task in tasks:
            task.cancel()


async def _run_one(
    question: str,
    model: str,
    route: Route,
    settings: Settings,
    history: Sequence[Message],
    hits: list[Hit],
) -> AsyncIterator[CompareEvent]:
    """One model's events; a failure is a :class:`ModelFailed` with the text so far."""
    received: list[str] = []
    try:
        events = answer(question, settings, model=pin_id(route), history=history, hits=hits)
        async for event in events:
            if isinstance(event, AnswerStart):
                # The gate's refusal has no route: it stands for the model asked.
                yield ModelStarted(model, event.route or route)
            elif isinstance(event, AnswerDelta):
                received.append(event.text)
                yield ModelDelta(model, event.text)
            elif isinstance(event, AnswerDone):
                yield _done(model, event, route)
    except RagError as exc:
        yield ModelFailed(model, str(exc), getattr(exc, "partial", "") or "".join(received))


def _done(model: str, done: AnswerDone, asked: Route) -> ModelDone:
    return ModelDone(
        model=model,
        route=done.route or asked,
        text=done.text,
        ttft_s=round(done.ttft_s, 4),
        tokens_per_s=round(tokens_per_second(done.completion_tokens, done.ttft_s, done.total_s), 2),
        total_s=round(done.total_s, 4),
        completion_tokens=done.completion_tokens,
    )


async def compare(
    question: str,
    models: Sequence[str],
    settings: Settings,
    *,
    history: Sequence[Message] = (),
    hits: list[Hit] | None = None,
) -> Comparison:
    """Run :func:`compare_stream` to the end; results come back in the order of ``models``."""
    shared: list[Hit] = []
    results: dict[str, ModelResult] = {}
    async for event in compare_stream(question, models, settings, history=history, hits=hits):
        if isinstance(event, CompareContext):
            shared = event.hits
        elif isinstance(event, ModelDone | ModelFailed):
            results[event.model] = event
    return Comparison(hits=shared, results=[results[m] for m in models if m in results])


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
        comparison = asyncio.run(compare(args.question, args.models, settings))
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
