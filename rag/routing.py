"""Which endpoint and model answer a question, in the order to try them.

The answer pipeline asks :func:`plan_routes` for an ordered list of
:class:`Route` and tries them in turn: a route whose endpoint is down is
skipped for the next one (before the first token only).

Three things decide the order:

* the mode (``RAG_ROUTING``): ``local-first`` tries the local endpoint, then the
  cloud fallback; ``cloud-first`` the other way round; ``local-only`` never
  leaves the machine;
* the task: a code question (see :func:`code_signal`) goes to ``LLM_CODE_MODEL``;
* the size: a prompt larger than the local model's budget goes to the fallback
  first (``local-first``).

Endpoints come from the environment (``LLM_FALLBACK_BASE_URL`` and friends)
and, optionally, from a TOML routing file (``RAG_ROUTING_FILE``) that declares
more of them::

    mode = "local-first"                # optional; local-only here or in RAG_ROUTING wins

    [local]                             # optional facts about the discovered local endpoint
    context_tokens = 4096

    [[endpoints]]
    name = "cloud"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"      # or api_key = "..."
    models = ["gpt-4o-mini"]            # the first one is the default
    context_tokens = 128000
    local = false                       # the default: unknown endpoints count as remote
    labels = ["fallback"]

    [[endpoints]]
    name = "coder"
    base_url = "http://127.0.0.1:11434/v1"
    models = ["deepseek-coder:6.7b"]
    local = true
    labels = ["code"]

    [rules]
    code_model = "deepseek-coder:6.7b"  # default LLM_CODE_MODEL
    code_endpoint = "coder"  # default: the first endpoint labelled "code", else local
    fallback = ["cloud"]  # default: endpoints labelled "fallback", then LLM_FALLBACK_*

A model may be *pinned* to an endpoint by qualifying it as ``endpoint:model``
(``local:phi-4-mini``, ``fallback:gpt-4o-mini``, ``coder:deepseek-coder:6.7b``).
A pinned model gets exactly one route and no task or size routing; the
comparison tool and the API use this. A prefix that is not a known endpoint
name is part of the model id (Ollama ids such as ``llama3.2:1b``).

Privacy: every list that leaves this module goes through :func:`_guard`, which
in ``local-only`` mode drops every route whose endpoint is not local, and
raises :class:`RouteRefused` when nothing is left.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from rag.errors import RagError
from rag.llm import Endpoint
from rag.settings import Settings

Mode = Literal["local-first", "cloud-first", "local-only"]
MODES: tuple[Mode, ...] = ("local-first", "cloud-first", "local-only")

LOCAL_NAME = "local"  # the qualifier that always means the discovered local endpoint
FALLBACK_NAME = "fallback"  # the endpoint built from LLM_FALLBACK_* settings
LOCAL_REASON = "local endpoint"  # the reason of the route to the user's pick on the local endpoint
# Cloud models have far larger windows than local ones; 16k is a floor that
# every current hosted chat model meets. The routing file can say more.
FALLBACK_CONTEXT_TOKENS = 16384

FALLBACK_HINT = (
    "check LLM_FALLBACK_BASE_URL / LLM_FALLBACK_API_KEY, or the endpoint in the routing file"
)


class RouteRefused(RagError):
    """The request would have to leave the machine, but routing is ``local-only``."""


class RoutingFileError(RagError):
    """The routing file cannot be read or says something impossible."""


@dataclass(frozen=True)
class Route:
    """One endpoint and model to try, and why it was chosen (shown to the user)."""

    endpoint: Endpoint
    model: str
    reason: str = LOCAL_REASON


@dataclass(frozen=True)
class RoutingTable:
    """Everything routing knows besides the discovered local endpoint."""

    mode: Mode
    endpoints: tuple[Endpoint, ...]  # routing-file endpoints, then the LLM_FALLBACK_* one
    fallbacks: tuple[str, ...]  # endpoint names, in the order to fall back to
    code_model: str | None
    code_endpoint: str | None  # None: the local endpoint
    local_context_tokens: int | None  # overrides what discovery reported, if set

    def endpoint(self, name: str) -> Endpoint | None:
        """The endpoint called ``name`` (not the local one), or None."""
        return next((e for e in self.endpoints if e.name == name), None)


# --- code questions ----------------------------------------------------------

_LANGS = (
    r"python|javascript|typescript|java|kotlin|golang|rust|c\+\+|c#|csharp|ruby|php|perl|"
    r"swift|scala|haskell|bash|shell|powershell|sql|regex|html|css|react|node\.?js|pandas|numpy"
)
_CODE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("code fence", re.compile(r"```")),
    (
        "stack trace",
        re.compile(
            r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|"
            r"Exception in thread|^\s+at [\w.$]+\([\w.]+:\d+\)|\b\w+(Error|Exception): ",
            re.M,
        ),
    ),
    (
        "asks for code",
        re.compile(
            r"\b(write|implement|generate|create|give me|show me|fix|debug|refactor|optimi[sz]e)\b"
            r"(\s+\w+){0,4}?\s+(function|method|class|script|program|regex|regular expression|"
            r"sql|query|unit tests?|one-liner|snippet|code|api call|dockerfile|makefile)\b",
            re.I,
        ),
    ),
    (
        "source code",
        re.compile(
            r"^\s*(def |class \w+[:(]|import \w+|from [\w.]+ import |#include\b|"
            r"public (static )?\w+|function \w*\(|const \w+ = |let \w+ = |SELECT .+ FROM )|"
            r"console\.log\(|System\.out\.|=>\s*\{|\w+\([^()]*\)\s*\{",
            re.M | re.I,
        ),
    ),
    (
        "source file",
        re.compile(
            r"\b[\w-]+\.(py|ipynb|js|mjs|ts|tsx|jsx|java|kt|go|rs|cpp|cc|hpp|c|h|cs|rb|php|sh|"
            r"ps1|sql|swift|scala)\b"
        ),
    ),
    (
        "programming language",
        re.compile(
            rf"\b(in|with|using|for)\s+({_LANGS})\b.*\b(code|function|loop|error|compile|"
            rf"syntax|script|parse|regex|query|class|list|dict|array|exception)s?\b|"
            rf"\b(code|function|loop|error|compile|syntax|script|parse|class|array|exception)s?\b"
            rf".*\b(in|with|using)\s+({_LANGS})\b",
            re.I,
        ),
    ),
)


def code_signal(question: str) -> str | None:
    """What makes ``question`` a code question ("code fence", "stack trace", ...), or None.

    Cheap regular expressions, tuned to be conservative: a question that merely
    mentions a function of a department or a file called ``guide.pdf`` is not a
    code question.

    >>> code_signal("Write a function that parses dates")
    'asks for code'
    >>> code_signal("What is the refund policy?") is None
    True
    """
    for name, pattern in _CODE_PATTERNS:
        if pattern.search(question):
            return name
    return None


# --- the routing table ---------------------------------------------------------

_file_cache: dict[Path, tuple[float, dict[str, Any]]] = {}


def _read_routing_file(path: Path) -> dict[str, Any]:
    # Re-read when the file changes, so editing it needs no restart.
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise RoutingFileError(
            f"The routing file {path} (RAG_ROUTING_FILE) cannot be read: {exc.strerror}."
        ) from exc
    cached = _file_cache.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RoutingFileError(f"The routing file {path} is not valid TOML: {exc}.") from exc
    _file_cache[path] = (mtime, data)
    return data


def _file_endpoint(raw: dict[str, Any], path: Path) -> Endpoint:
    name = raw.get("name")
    base_url = raw.get("base_url")
    if not isinstance(name, str) or not isinstance(base_url, str) or not name or not base_url:
        raise RoutingFileError(f"Every [[endpoints]] entry in {path} needs a name and a base_url.")
    if name == LOCAL_NAME:
        raise RoutingFileError(
            f"The endpoint name '{LOCAL_NAME}' in {path} is reserved for the discovered local "
            "endpoint; describe it under [local] instead."
        )
    api_key = raw.get("api_key")
    if api_key is None and (env := raw.get("api_key_env")):
        # The file names the variable so the secret itself stays out of the file;
        # the settings object cannot know these names in advance.
        api_key = os.environ.get(str(env))
    models = [str(m) for m in raw.get("models", [])]
    return Endpoint(
        name=name,
        base_url=base_url.rstrip("/"),
        api_key=str(api_key or "not-needed"),
        model=models[0] if models else None,
        context_tokens=int(raw.get("context_tokens", FALLBACK_CONTEXT_TOKENS)),
        # Remote unless the file says otherwise: a forgotten flag must not leak.
        is_local=raw.get("local", False) is True,
        start_hint=f"start the server of endpoint '{name}' or fix its base_url in {path}",
        labels=tuple(str(label) for label in raw.get("labels", [])),
    )


def load_routing(settings: Settings) -> RoutingTable:
    """The routing table from the settings and, when set, the routing file."""
    data: dict[str, Any] = {}
    path = settings.routing_file
    if path is not None:
        data = _read_routing_file(Path(path))

    endpoints = (
        [_file_endpoint(raw, Path(path)) for raw in data.get("endpoints", [])] if path else []
    )
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise RoutingFileError(f"Endpoint names in {path} must be unique: {names}.")
    if settings.llm_fallback_base_url and FALLBACK_NAME not in names:
        endpoints.append(
            Endpoint(
                name=FALLBACK_NAME,
                base_url=settings.llm_fallback_base_url.rstrip("/"),
                api_key=settings.llm_fallback_api_key or "not-needed",
                model=settings.llm_fallback_model,
                context_tokens=FALLBACK_CONTEXT_TOKENS,
                is_local=False,
                start_hint=FALLBACK_HINT,
            )
        )

    file_mode = data.get("mode")
    if file_mode is not None and file_mode not in MODES:
        raise RoutingFileError(
            f"mode in {path} must be one of {', '.join(MODES)}, not {file_mode!r}."
        )
    # The stricter mode wins, so no file can quietly undo RAG_ROUTING=local-only.
    mode: Mode = settings.routing
    if file_mode == "local-only" or (file_mode and settings.routing != "local-only"):
        mode = file_mode

    rules = data.get("rules", {})
    known = {e.name for e in endpoints}
    fallbacks = rules.get("fallback")
    if fallbacks is None:
        fallbacks = [e.name for e in endpoints if "fallback" in e.labels]
        if FALLBACK_NAME in known and FALLBACK_NAME not in fallbacks:
            fallbacks.append(FALLBACK_NAME)
    code_endpoint = rules.get("code_endpoint")
    if code_endpoint is None:
        code_endpoint = next((e.name for e in endpoints if "code" in e.labels), None)
    for name in [*fallbacks, *([code_endpoint] if code_endpoint else [])]:
        if name != LOCAL_NAME and name not in known:
            raise RoutingFileError(
                f"The routing file {path} refers to an unknown endpoint '{name}'."
            )
    local_ctx = data.get("local", {}).get("context_tokens")
    return RoutingTable(
        mode=mode,
        endpoints=tuple(endpoints),
        fallbacks=tuple(n for n in fallbacks if n != LOCAL_NAME),
        code_model=rules.get("code_model") or settings.llm_code_model,
        code_endpoint=None if code_endpoint == LOCAL_NAME else code_endpoint,
        local_context_tokens=int(local_ctx) if local_ctx else None,
    )


# --- pinned models ---------------------------------------------------------------


def split_qualified(
    model: str, table: RoutingTable, local: Endpoint
) -> tuple[Endpoint, str] | None:
    """``(endpoint, model)`` when ``model`` is ``endpoint:model`` with a known endpoint name.

    ``local`` (and the local endpoint's own name, e.g. ``embedded``) mean the
    discovered local endpoint. Anything else is a plain model id.
    """
    prefix, sep, rest = model.partition(":")
    if not sep or not rest:
        return None
    if prefix in (LOCAL_NAME, local.name) and table.endpoint(prefix) is None:
        return local, rest
    endpoint = table.endpoint(prefix)
    return (endpoint, rest) if endpoint is not None else None


def qualified_name(endpoint: Endpoint, model: str, *, local: bool = False) -> str:
    """The ``endpoint:model`` id that pins ``model`` to ``endpoint``."""
    return f"{LOCAL_NAME if local else endpoint.name}:{model}"


def routed_models(settings: Settings, local: Endpoint | None = None) -> list[str]:
    """Pinned ids of the models routing knows besides the local endpoint's own.

    In ``local-only`` mode remote endpoints are left out, so nobody is offered
    a model they could not use. Ids are ``endpoint:model``.
    """
    table = load_routing(settings)
    ids: list[str] = []
    for endpoint in table.endpoints:
        if table.mode == "local-only" and not endpoint.is_local:
            continue
        models = list(_declared_models(endpoint, table))
        ids.extend(qualified_name(endpoint, m) for m in models)
    if table.code_model and table.code_endpoint is None and local is not None:
        ids.append(qualified_name(local, table.code_model, local=True))
    return list(dict.fromkeys(ids))


def _declared_models(endpoint: Endpoint, table: RoutingTable) -> list[str]:
    models = [endpoint.model] if endpoint.model else []
    if table.code_endpoint == endpoint.name and table.code_model:
        models.append(table.code_model)
    return models


# --- planning ----------------------------------------------------------------------


def plan_routes(
    question: str,
    settings: Settings,
    *,
    local: Endpoint,
    model: str,
    prompt_tokens: int = 0,
) -> list[Route]:
    """Routes to try for ``question``, best first.

    ``local`` is the discovered local endpoint and ``model`` the model the user
    picked on it (or an ``endpoint:model`` id that pins the answer to one
    endpoint); ``prompt_tokens`` is the size of the untrimmed prompt, so a
    prompt too large for the local model can go elsewhere.

    Raises :class:`RouteRefused` when ``local-only`` leaves nothing to try and
    :class:`RoutingFileError` for a broken routing file.
    """
    table = load_routing(settings)
    if table.local_context_tokens:
        local = replace(local, context_tokens=table.local_context_tokens)

    pinned = split_qualified(model, table, local)
    if pinned is not None:
        endpoint, pinned_model = pinned
        return _guard(
            [Route(endpoint, pinned_model, f"pinned to '{endpoint.name}'")], table.mode, model
        )

    routes: list[Route] = []
    local_route = Route(local, model, LOCAL_REASON)

    code_route: Route | None = None
    signal = code_signal(question) if table.code_model else None
    if signal and table.code_model:
        where = table.endpoint(table.code_endpoint) if table.code_endpoint else None
        code_route = Route(
            where or local,
            table.code_model,
            f"code question ({signal}) -> LLM_CODE_MODEL on '{(where or local).name}'",
        )

    fallbacks = [
        Route(
            ep,
            ep.model or model,  # without LLM_FALLBACK_MODEL, ask for the same model id
            f"{local.name} endpoint down -> cloud fallback '{ep.name}'"
            if not ep.is_local
            else f"{local.name} endpoint down -> '{ep.name}'",
        )
        for name in table.fallbacks
        if (ep := table.endpoint(name)) is not None
    ]
    budget = local.context_tokens - settings.answer_tokens
    too_big = prompt_tokens > budget

    if table.mode == "cloud-first":
        routes += [replace(r, reason=f"cloud-first: '{r.endpoint.name}'") for r in fallbacks]
        if code_route is not None:
            routes.insert(0, code_route)
        routes.append(
            replace(local_route, reason="cloud-first: cloud endpoint down -> local endpoint")
            if fallbacks
            else local_route
        )
    else:
        if too_big and fallbacks and table.mode == "local-first":
            routes += [
                replace(
                    r,
                    reason=f"prompt too large for the local model ({prompt_tokens} tokens > "
                    f"budget {budget}) -> cloud fallback '{r.endpoint.name}'",
                )
                for r in fallbacks
            ]
        if code_route is not None:
            routes.append(code_route)
        # A code model on the local endpoint replaces the picked model there.
        if code_route is None or code_route.endpoint.base_url != local.base_url:
            routes.append(local_route)
        routes += fallbacks
    return _guard(_dedupe(routes), table.mode, model)


def _dedupe(routes: Sequence[Route]) -> list[Route]:
    seen: set[tuple[str, str]] = set()
    kept: list[Route] = []
    for route in routes:
        key = (route.endpoint.base_url, route.model)
        if key not in seen:
            seen.add(key)
            kept.append(route)
    return kept


def _guard(routes: list[Route], mode: Mode, model: str) -> list[Route]:
    """The one exit of this module: in local-only mode, only local endpoints remain."""
    if mode == "local-only":
        dropped = [r for r in routes if not r.endpoint.is_local]
        routes = [r for r in routes if r.endpoint.is_local]
        if not routes:
            names = ", ".join(sorted({r.endpoint.name for r in dropped})) or "none"
            raise RouteRefused(
                f"RAG_ROUTING is local-only, so '{model}' cannot be answered: it would go to a "
                f"remote endpoint ({names}). Pick a model on the local endpoint, or change "
                "RAG_ROUTING."
            )
    if not routes:
        raise RouteRefused(f"No endpoint is configured to answer with '{model}'.")
    return routes
