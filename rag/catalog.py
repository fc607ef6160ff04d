"""The model catalog: the one answer to "which server and model answer this question".

The chat, the HTTP API, ``/compare`` and the evals ask :func:`model_catalog`
for the catalog of their settings and never build endpoints themselves. It
knows

- the local server (discovered by :mod:`rag.discovery` and remembered for
  :data:`DISCOVERY_TTL_S`, the one cache; a route that finds it down makes the
  next look discover again, since Foundry Local comes back on a new port),
- the declared providers (routing file, ``LLM_FALLBACK_*``) and their models,
- the ``local-only`` guard: nothing it returns would leave the premises.

>>> catalog = model_catalog(Settings(_env_file=None, RAG_ENGINE="off", LLM_BASE_URL="http://127.0.0.1:9/v1"))
>>> import asyncio; [r.reason.value for r in asyncio.run(catalog.routes("hi", "phi", 10))]
['picked']
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from rag.discovery import discover_local
from rag.errors import EndpointError, EndpointSilent, EndpointUnavailable, RagError
from rag.llm import list_models
from rag.routing import (
    LOCAL_NAME,
    Provider,
    Reason,
    Route,
    RouteRefused,
    RoutingTable,
    declared_models,
    load_routing,
    plan_routes,
    split_qualified,
)
from rag.settings import Settings

# Long enough that an API client's burst of requests runs discovery once, short
# enough that a server started meanwhile is found without a restart.
DISCOVERY_TTL_S = 30.0


@dataclass(frozen=True)
class Offer:
    """The models a person may pick, and which one is preselected."""

    listed: tuple[str, ...]  # the local server's own ids
    declared: tuple[str, ...]  # ``endpoint:model`` ids of the declared providers
    default: str
    local: Provider | None  # None when no local server answers
    problem: RagError | None  # why not, as a sentence for people
    # While the local server is down: LLM_MODEL and the ids it listed when last seen.
    remembered: tuple[str, ...] = ()

    @property
    def models(self) -> list[str]:
        """Every model id that may be picked, the local server's first."""
        return list(dict.fromkeys([*self.listed, *self.declared]))

    @property
    def known(self) -> list[str]:
        """:attr:`models` plus the remembered ones: what an API client keeps in its list
        while the server is down, so asking for one gets the sentence on what to start."""
        return list(dict.fromkeys([*self.listed, *self.remembered, *self.declared]))

    def owner(self, model: str) -> str:
        """The name of the provider that answers ``model``."""
        prefix, sep, _ = model.partition(":")
        if model in self.listed or model in self.remembered or not sep:
            return self.local.name if self.local else LOCAL_NAME
        return prefix


class Catalog:
    """Every model server these settings allow, the local-only guard and the discovery cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._found: tuple[float, Provider] | None = None
        self._seen: tuple[str, ...] = ()  # the local server's models when it last answered

    def table(self) -> RoutingTable:
        """The routing table (re-read when the routing file changes)."""
        return load_routing(self.settings)

    async def local(self) -> Provider:
        """The local server, discovered at most every :data:`DISCOVERY_TTL_S` seconds.

        Raises :class:`EndpointUnavailable` (what to start) when there is none and
        :class:`RouteRefused` when ``LLM_BASE_URL`` leaves the premises in local-only mode.
        """
        if self._found is not None and self._found[0] > time.monotonic():
            return self._found[1]
        table = self.table()
        provider = await discover_local(self.settings)
        if not provider.on_premises and table.mode == "local-only":
            raise RouteRefused(
                f"RAG_ROUTING is local-only, but LLM_BASE_URL ({provider.endpoint.base_url}) is "
                "not on this machine or the local network, so it is never called. Point "
                "LLM_BASE_URL at a local server (e.g. http://127.0.0.1:11434/v1), or change "
                "RAG_ROUTING."
            )
        if table.local_context_tokens:
            provider = replace(provider, context_tokens=table.local_context_tokens)
        self._found = (time.monotonic() + DISCOVERY_TTL_S, provider)
        return provider

    def report_down(self, provider: Provider) -> None:
        """``provider`` did not answer: if it is the remembered local server, look again next time."""
        if self._found is not None and self._found[1].endpoint == provider.endpoint:
            self._found = None

    async def offer(self) -> Offer:
        """What the model picker shows: the local server's models, then the declared ones."""
        table = self.table()
        local: Provider | None = None
        listed: list[str] = []
        problem: RagError | None = None
        try:
            local = await self.local()
            listed = await list_models(local.endpoint, self.settings)
        except (EndpointUnavailable, EndpointError, RouteRefused) as exc:
            if local is not None:
                self.report_down(local)
                # A silent server is running: "start one" would be wrong advice.
                down = isinstance(exc, EndpointUnavailable) and not isinstance(exc, EndpointSilent)
                exc = local.explain(exc) if down else exc
            local, problem = None, exc
        declared = declared_models(table, has_local=local is not None)
        preferred = self.settings.llm_model or (local.default_model if local else None)
        default = choose_model(listed, preferred) if listed else (declared[0] if declared else "")
        if local is not None:
            self._seen = tuple(listed)
        # A pinned LLM_MODEL (fallback:gpt-4o-mini) is the declared list's to show, or not.
        configured = (preferred,) if preferred and split_qualified(preferred, table) is None else ()
        remembered = () if local else (*configured, *self._seen)
        return Offer(tuple(listed), tuple(declared), default, local, problem, remembered)

    async def routes(self, question: str, model: str | None, prompt_tokens: int) -> list[Route]:
        """The routes to try for ``question``, best first, all allowed by the mode.

        ``model`` is the picked id (``endpoint:model`` pins one route; None: the
        local server's default). Raises :class:`RouteRefused` when local-only
        leaves nothing, and the local server's :class:`EndpointUnavailable` when
        nothing else is configured.
        """
        table = self.table()
        pinned_default = self.settings.llm_model
        if not model and pinned_default and split_qualified(pinned_default, table) is not None:
            model = pinned_default  # LLM_MODEL may itself pin a provider: fallback:gpt-4o-mini
        if model and split_qualified(model, table) is not None:
            return [await self.pinned(model)]
        try:
            local: Provider | None = await self.local()
        except EndpointUnavailable as exc:
            local, missing = None, exc
        else:
            missing = None
        if not model:
            model = await self._default_model(local)
        routes = plan_routes(
            question,
            table,
            local=local,
            model=model,
            prompt_tokens=prompt_tokens,
            answer_tokens=self.settings.answer_tokens,
        )
        allowed = [r for r in routes if r.provider.on_premises or table.mode != "local-only"]
        if not allowed and missing is not None:
            raise missing  # what to start says more than "the cloud is not allowed"
        return _guarded(routes, table, model)

    async def pinned(self, model: str) -> Route:
        """The one route ``model`` names, never re-routed (compare uses this).

        A plain id means that model on the local server; ``endpoint:model`` that
        provider. Raises as :meth:`routes` does.
        """
        table = self.table()
        name, bare = split_qualified(model, table) or (LOCAL_NAME, model)
        provider = table.provider(name) if name != LOCAL_NAME else await self.local()
        assert provider is not None  # split_qualified only returns known names
        return _guarded([Route(provider, bare, Reason.PINNED)], table, model)[0]

    async def _default_model(self, local: Provider | None) -> str:
        """The local server's model when none was picked: its own, else the first listed."""
        if local is None:
            return self.settings.llm_model or ""
        if local.default_model:
            return local.default_model
        try:
            return choose_model(await list_models(local.endpoint, self.settings), None)
        except (EndpointUnavailable, EndpointError):
            return ""  # the local route then fails with its sentence; a fallback may answer


@functools.cache
def model_catalog(settings: Settings) -> Catalog:
    """The one catalog for these settings: ask it, never rebuild it."""
    return Catalog(settings)


def choose_model(models: Sequence[str], preferred: str | None) -> str:
    """``preferred`` when ``models`` lists it, else the first listed one (else ``preferred``).

    >>> choose_model(["a", "b"], "b"), choose_model(["a", "b"], "c"), choose_model([], "c")
    ('b', 'a', 'c')
    """
    if preferred and preferred in models:
        return preferred
    return models[0] if models else (preferred or "")


def _guarded(routes: list[Route], table: RoutingTable, model: str) -> list[Route]:
    """The one exit for routes: in local-only mode, only providers on the premises remain."""
    if table.mode == "local-only":
        dropped = sorted({r.provider.name for r in routes if not r.provider.on_premises})
        routes = [r for r in routes if r.provider.on_premises]
        if not routes:
            raise RouteRefused(
                f"RAG_ROUTING is local-only, so '{model}' cannot be answered: it would go to a "
                f"remote endpoint ({', '.join(dropped) or 'none'}). Pick a model on the local "
                "endpoint, or change RAG_ROUTING."
            )
    if not routes:
        raise RouteRefused(f"No endpoint is configured to answer with '{model}'.")
    return routes
