"""The vocabulary of routing and the pure rule that orders the routes for a question.

A :class:`Provider` is a model server the app knows (its endpoint, models,
context window, whether it stays on the premises); a :class:`Route` is one
provider and model to try, with a :class:`Reason` (a value, rendered for people
at the edges). :func:`plan_routes` orders the routes for a question; it does no
I/O, so it is tested on plain values. The one place that discovers the local
server, caches it and applies the ``local-only`` guard is :mod:`rag.catalog`;
the answer pipeline tries its routes in turn, skipping one whose server is down
before its first token.

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

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rag.errors import EndpointUnavailable, RagError
from rag.llm import Endpoint
from rag.settings import Settings

Mode = Literal["local-first", "cloud-first", "local-only"]
MODES: tuple[Mode, ...] = ("local-first", "cloud-first", "local-only")

LOCAL_NAME = "local"  # the qualifier that always means the discovered local server
FALLBACK_NAME = "fallback"  # the provider built from the LLM_FALLBACK_* settings
# Qualifiers that pin a model to the local server, whichever kind it turned out to be.
LOCAL_ALIASES = frozenset({LOCAL_NAME, "configured", "foundry", "embedded"})
# Cloud models have far larger windows than local ones; 16k is a floor that
# every current hosted chat model meets. The routing file can say more.
FALLBACK_CONTEXT_TOKENS = 16384

DEFAULT_START_HINT = (
    "start a model server (for example `foundry model run phi-4-mini` or `ollama serve`) "
    "or set LLM_BASE_URL to one that is running"
)
FALLBACK_HINT = (
    "check LLM_FALLBACK_BASE_URL / LLM_FALLBACK_API_KEY, or the endpoint in the routing file"
)


class RouteRefused(RagError):
    """The request would have to leave the machine, but routing is ``local-only``."""


class RoutingFileError(RagError):
    """The routing file cannot be read or says something impossible."""


class Kind(Enum):
    """Where the app learned of a provider."""

    CONFIGURED = "LLM_BASE_URL"
    FOUNDRY = "Foundry Local"
    EMBEDDED = "embedded engine"
    DECLARED = "routing file or LLM_FALLBACK_*"


@dataclass(frozen=True)
class Provider:
    """A model server the app knows: its endpoint and the facts routing and prompts need."""

    endpoint: Endpoint
    kind: Kind
    models: tuple[str, ...] = ()  # known model ids, the default first (may be unknown: empty)
    context_tokens: int = 2048  # prompt + answer must fit here
    on_premises: bool = True  # this machine or the private network: local-only allows it
    start_hint: str = DEFAULT_START_HINT  # what to start when it does not answer
    labels: frozenset[str] = field(default_factory=frozenset)  # "code", "fallback"
    parameters: int | None = None  # the model's size when known (the embedded engine)

    @property
    def name(self) -> str:
        """The endpoint's name: ``local``, ``foundry``, ``embedded``, ``fallback``, ..."""
        return self.endpoint.name

    @property
    def default_model(self) -> str:
        """The model to ask for when nobody picked one (empty when unknown)."""
        return self.models[0] if self.models else ""

    def explain(self, exc: EndpointUnavailable) -> EndpointUnavailable:
        """``exc`` with what to start appended: the sentence a person acts on."""
        return EndpointUnavailable(f"{str(exc).rstrip('.')}: {self.start_hint}.", exc.base_url)


class Reason(Enum):
    """Why a route was chosen; :mod:`rag.web.chat_text` words it for people."""

    PICKED = "picked"  # the model the user picked on the local server
    PINNED = "pinned"  # an ``endpoint:model`` id names exactly this route
    CODE = "code"  # a code question goes to LLM_CODE_MODEL
    TOO_LARGE = "too-large"  # the prompt does not fit the local window
    LOCAL_DOWN = "local-down"  # the local server failed; a fallback answers
    CLOUD_FIRST = "cloud-first"  # RAG_ROUTING=cloud-first
    CLOUD_DOWN = "cloud-down"  # cloud-first, and the cloud failed: the local server answers


@dataclass(frozen=True)
class Route:
    """One provider and model to try, and why."""

    provider: Provider
    model: str
    reason: Reason = Reason.PICKED
    detail: str = ""  # what made the reason apply: the code signal, the token counts

    @property
    def endpoint(self) -> Endpoint:
        """The server this route dials."""
        return self.provider.endpoint

    @property
    def answered_elsewhere(self) -> bool:
        """True when the answer does not come from the local model the user picked.

        That is, when it leaves the premises, or routing sent it elsewhere (code
        model, fallback, prompt too large): the one rule for when the chat and
        the API say who answered. A model the user pinned on a local server is theirs.
        """
        rerouted = self.reason not in (Reason.PICKED, Reason.PINNED)
        return rerouted or not self.provider.on_premises


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


class _FileEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    base_url: str = Field(min_length=1)
    api_key: str | None = None
    api_key_env: str | None = None
    models: list[str] = []
    context_tokens: int = Field(FALLBACK_CONTEXT_TOKENS, ge=256)
    local: bool = False  # remote unless the file says otherwise: a forgotten flag must not leak
    labels: list[str] = []


class _FileLocal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    context_tokens: int | None = Field(None, ge=256)


class _FileRules(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code_model: str | None = None
    code_endpoint: str | None = None
    fallback: list[str] | None = None


class RoutingFile(BaseModel):
    """The TOML routing file (format in the module docstring), validated."""

    model_config = ConfigDict(extra="forbid")
    mode: Mode | None = None
    local: _FileLocal = _FileLocal()
    endpoints: list[_FileEndpoint] = []
    rules: _FileRules = _FileRules()


@dataclass(frozen=True)
class RoutingTable:
    """Everything routing knows besides the discovered local server."""

    mode: Mode
    providers: tuple[Provider, ...]  # routing-file endpoints, then the LLM_FALLBACK_* one
    fallbacks: tuple[str, ...]  # provider names, in the order to fall back to
    code_model: str | None
    code_provider: str | None  # None: the local server
    local_context_tokens: int | None  # overrides what discovery reported, if set

    def provider(self, name: str) -> Provider | None:
        """The declared provider called ``name`` (not the local one), or None."""
        return next((p for p in self.providers if p.name == name), None)


def load_routing(settings: Settings) -> RoutingTable:
    """The routing table from the settings and, when set, the routing file.

    The file is re-read when it changes, so editing it needs no restart.
    """
    path = settings.routing_file
    if path is None:
        return _table(settings, RoutingFile(), None)
    try:
        mtime = Path(path).stat().st_mtime
    except OSError as exc:
        raise RoutingFileError(
            f"The routing file {path} (RAG_ROUTING_FILE) cannot be read: {exc.strerror}."
        ) from exc
    return _table(settings, _read_routing_file(Path(path), mtime), Path(path))


@lru_cache(maxsize=8)
def _read_routing_file(path: Path, mtime: float) -> RoutingFile:
    # mtime is part of the key: a changed file is parsed again.
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RoutingFileError(f"The routing file {path} is not valid TOML: {exc}.") from exc
    try:
        return RoutingFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise RoutingFileError(f"The routing file {path} is not valid: {problems}.") from None


def _table(settings: Settings, file: RoutingFile, path: Path | None) -> RoutingTable:
    providers = [_declared(raw, settings, path) for raw in file.endpoints]
    names = [p.name for p in providers]
    if len(set(names)) != len(names):
        raise RoutingFileError(f"Endpoint names in {path} must be unique: {names}.")
    if LOCAL_NAME in names:
        raise RoutingFileError(
            f"The endpoint name '{LOCAL_NAME}' in {path} is reserved for the discovered local "
            "endpoint; describe it under [local] instead."
        )
    if settings.llm_fallback_base_url and FALLBACK_NAME not in names:
        providers.append(_fallback_provider(settings))
    known = {p.name for p in providers}
    fallbacks = file.rules.fallback
    if fallbacks is None:
        fallbacks = [p.name for p in providers if "fallback" in p.labels]
        if FALLBACK_NAME in known and FALLBACK_NAME not in fallbacks:
            fallbacks.append(FALLBACK_NAME)
    code_provider = file.rules.code_endpoint or next(
        (p.name for p in providers if "code" in p.labels), None
    )
    for name in [*fallbacks, *([code_provider] if code_provider else [])]:
        if name != LOCAL_NAME and name not in known:
            raise RoutingFileError(f"The routing file {path} refers to an unknown endpoint '{name}'.")
    return RoutingTable(
        mode=_stricter_mode(settings.routing, file.mode),
        providers=tuple(providers),
        fallbacks=tuple(n for n in fallbacks if n != LOCAL_NAME),
        code_model=file.rules.code_model or settings.llm_code_model,
        code_provider=None if code_provider == LOCAL_NAME else code_provider,
        local_context_tokens=file.local.context_tokens,
    )


def _stricter_mode(setting: Mode, file_mode: Mode | None) -> Mode:
    # No file can quietly undo RAG_ROUTING=local-only.
    if file_mode is None or setting == "local-only":
        return setting
    return file_mode


def _declared(raw: _FileEndpoint, settings: Settings, path: Path | None) -> Provider:
    # The file names the variable so the secret itself stays out of the file.
    api_key = raw.api_key or (settings.secret(raw.api_key_env) if raw.api_key_env else None)
    return Provider(
        endpoint=Endpoint(name=raw.name, base_url=raw.base_url, api_key=api_key or ""),
        kind=Kind.DECLARED,
        models=tuple(raw.models),
        context_tokens=raw.context_tokens,
        on_premises=raw.local,
        start_hint=f"start the server of endpoint '{raw.name}' or fix its base_url in {path}",
        labels=frozenset(raw.labels),
    )


def _fallback_provider(settings: Settings) -> Provider:
    assert settings.llm_fallback_base_url
    return Provider(
        endpoint=Endpoint(
            name=FALLBACK_NAME,
            base_url=settings.llm_fallback_base_url,
            api_key=settings.llm_fallback_api_key or "",
        ),
        kind=Kind.DECLARED,
        models=(settings.llm_fallback_model,) if settings.llm_fallback_model else (),
        context_tokens=FALLBACK_CONTEXT_TOKENS,
        on_premises=False,
        start_hint=FALLBACK_HINT,
    )


# --- pinned models ---------------------------------------------------------------


def split_qualified(model: str, table: RoutingTable) -> tuple[str, str] | None:
    """``(provider name, model)`` when ``model`` is ``endpoint:model`` with a known endpoint.

    ``local`` and the local server's kinds (``configured``, ``foundry``,
    ``embedded``) come back as :data:`LOCAL_NAME`. Anything else is a plain model
    id (Ollama's ``llama3.2:1b``).

    >>> table = load_routing(Settings(_env_file=None))
    >>> split_qualified("embedded:smollm2", table), split_qualified("llama3.2:1b", table)
    (('local', 'smollm2'), None)
    """
    prefix, sep, rest = model.partition(":")
    if not sep or not rest:
        return None
    if table.provider(prefix) is not None:
        return prefix, rest
    if prefix in LOCAL_ALIASES:
        return LOCAL_NAME, rest
    return None


def qualified_name(provider_name: str, model: str) -> str:
    """The ``endpoint:model`` id that pins ``model`` to a provider."""
    return f"{provider_name}:{model}"


def declared_models(table: RoutingTable, *, has_local: bool) -> list[str]:
    """Pinned ids of the models routing knows besides the local server's own.

    In ``local-only`` mode remote providers are left out, so nobody is offered
    a model they could not use.
    """
    ids: list[str] = []
    for provider in table.providers:
        if table.mode == "local-only" and not provider.on_premises:
            continue
        models = list(provider.models[:1])
        if table.code_provider == provider.name and table.code_model:
            models.append(table.code_model)
        ids.extend(qualified_name(provider.name, m) for m in models)
    if table.code_model and table.code_provider is None and has_local:
        ids.append(qualified_name(LOCAL_NAME, table.code_model))
    return list(dict.fromkeys(ids))


# --- planning ----------------------------------------------------------------------


def plan_routes(
    question: str,
    table: RoutingTable,
    *,
    local: Provider | None,
    model: str,
    prompt_tokens: int,
    answer_tokens: int,
) -> list[Route]:
    """Routes to try for ``question`` with the user's ``model`` on ``local``, best first.

    ``local`` is None when no local server was found: then only declared
    providers remain. ``prompt_tokens`` is the size of the untrimmed prompt, so
    a prompt too large for the local window can go elsewhere (``local-first``).
    Pinned ids and the local-only guard are the catalog's business.
    """
    fallbacks = [
        Route(p, p.default_model or model, Reason.LOCAL_DOWN)
        for name in table.fallbacks
        if (p := table.provider(name)) is not None
    ]
    code = _code_route(question, table, local)
    picked = [Route(local, model, Reason.PICKED)] if local is not None else []
    if table.mode == "cloud-first":
        local_last = [replace(r, reason=Reason.CLOUD_DOWN) for r in picked] if fallbacks else picked
        routes = [replace(r, reason=Reason.CLOUD_FIRST) for r in fallbacks]
        return _dedupe([*([code] if code else []), *routes, *local_last])
    budget = (local.context_tokens if local else 0) - answer_tokens
    too_big: list[Route] = []
    if local is not None and prompt_tokens > budget and table.mode == "local-first":
        detail = f"{prompt_tokens} tokens > budget {budget}"
        too_big = [replace(r, reason=Reason.TOO_LARGE, detail=detail) for r in fallbacks]
    if code is not None and local is not None and code.endpoint == local.endpoint:
        picked = []  # a code model on the local server replaces the picked model there
    return _dedupe([*too_big, *([code] if code else []), *picked, *fallbacks])


def _code_route(question: str, table: RoutingTable, local: Provider | None) -> Route | None:
    if not table.code_model or (signal := code_signal(question)) is None:
        return None
    where = table.provider(table.code_provider) if table.code_provider else local
    return Route(where, table.code_model, Reason.CODE, signal) if where is not None else None


def _dedupe(routes: Sequence[Route]) -> list[Route]:
    seen: set[tuple[str, str]] = set()
    kept: list[Route] = []
    for route in routes:
        key = (route.endpoint.base_url, route.model)
        if key not in seen:
            seen.add(key)
            kept.append(route)
    return kept
