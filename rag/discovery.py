"""Finding the local model server: configured, Foundry Local, or the embedded engine.

The order is the one a user expects:

1. ``LLM_BASE_URL`` when it is set (Ollama, llama.cpp, vLLM, a Foundry Local port
   the user pinned, ...): taken as configured, without a network call. It is on
   the premises only when its host is this machine or the private network
   (:func:`rag.hosts.is_local_url`).
2. Foundry Local, whose OpenAI-compatible port is dynamic: the ``foundry`` CLI's
   ``foundry service status`` names it (or the ``foundry-local-sdk`` package, when
   installed, reports it). Foundry only accepts model *ids*, so the configured alias
   (``FOUNDRY_MODEL``, e.g. ``phi-4-mini``) is resolved against ``/v1/models``.
3. The embedded ONNX Runtime GenAI engine (:mod:`rag.embedded_llm`), when its model is built.

Otherwise :class:`~rag.errors.EndpointUnavailable` says what to start. Nothing
here caches: :class:`rag.catalog.Catalog` remembers what was found.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import Sequence
from urllib.parse import urlsplit

from rag.errors import EndpointError, EndpointUnavailable, RagError
from rag.hosts import is_local_url
from rag.llm import Endpoint, list_models
from rag.routing import Kind, Provider
from rag.settings import Settings

log = logging.getLogger(__name__)

# `foundry service status` answers in well under a second; a CLI that hangs
# (first run, update prompt) must not block the chat from starting.
FOUNDRY_STATUS_TIMEOUT_S = 10.0
EMBEDDED_START_HINT = (
    "the embedded engine did not start; see its log, rebuild it with "
    "`python -m rag.embedded_llm build --force`, or start Foundry Local "
    "(`foundry model run phi-4-mini`) or set LLM_BASE_URL"
)

_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")
# Words in Foundry model ids that name a build variant, not a different model:
# "Phi-4-mini-instruct-generic-cpu" is what the alias "phi-4-mini" means.
_VARIANT_WORDS = frozenset(
    "instruct chat generic cpu gpu cuda npu qnn openvino vitis trtrtx webgpu int4 int8 "
    "fp16 fp32 rtn awq block acc onnx".split()
)


async def discover_local(settings: Settings) -> Provider:
    """The local server: ``LLM_BASE_URL``, else Foundry Local, else the embedded engine.

    Raises :class:`EndpointUnavailable` with a sentence saying what to start when
    none of them is there.
    """
    if settings.llm_base_url:
        return configured_provider(settings)
    why_not: list[str] = []
    found = await foundry_provider(settings, why_not) or await embedded_provider(settings, why_not)
    if found is not None:
        return found
    raise EndpointUnavailable(
        f"No local model server was found ({'; '.join(why_not)}). Start Foundry Local "
        f"(`foundry model run {settings.foundry_model}`) or Ollama (`ollama serve`) and set "
        "LLM_BASE_URL (e.g. http://127.0.0.1:11434/v1), or run `make models` to build the "
        "embedded offline model."
    )


def configured_provider(settings: Settings) -> Provider:
    """The server ``LLM_BASE_URL`` names, with the configured key, model and context size."""
    assert settings.llm_base_url
    endpoint = Endpoint(name="configured", base_url=settings.llm_base_url, api_key=settings.llm_api_key)
    return Provider(
        endpoint=endpoint,
        kind=Kind.CONFIGURED,
        models=(settings.llm_model,) if settings.llm_model else (),
        context_tokens=settings.context_tokens,
        on_premises=is_local_url(endpoint.base_url),
    )


# --- Foundry Local ---------------------------------------------------------------


async def foundry_provider(settings: Settings, why_not: list[str]) -> Provider | None:
    """Foundry Local with the configured alias resolved to a model id, or ``None``.

    ``why_not`` collects a short reason when Foundry Local is not usable, for the
    final error message.
    """
    base_url = await foundry_base_url(why_not)
    if base_url is None:
        return None
    alias = settings.foundry_model
    endpoint = Endpoint(name="foundry", base_url=base_url, api_key=settings.llm_api_key)
    try:
        ids = await list_models(endpoint, settings)
    except (EndpointUnavailable, EndpointError) as exc:
        why_not.append(f"Foundry Local at {base_url} did not list its models: {exc}")
        return None
    if not ids:
        why_not.append(
            f"Foundry Local at {base_url} has no model loaded (run `foundry model run {alias}`)"
        )
        return None
    model = settings.llm_model if settings.llm_model in ids else resolve_alias(alias, ids)
    return Provider(
        endpoint=endpoint,
        kind=Kind.FOUNDRY,
        models=(model or ids[0],),
        context_tokens=settings.context_tokens,
        start_hint=f"start Foundry Local (`foundry model run {alias}`) or set LLM_BASE_URL",
    )


async def foundry_base_url(why_not: list[str]) -> str | None:
    """The ``.../v1`` URL of a running Foundry Local service, from its CLI or SDK."""
    exe = shutil.which("foundry")
    if exe is not None:
        status = await _run_status(exe, why_not)
        if status is None:
            return None
        url = parse_status_url(status)
        if url is None:
            why_not.append("Foundry Local is installed but its service is not running")
        return url
    sdk_url = await _sdk_endpoint(why_not)
    if sdk_url is None and not why_not:
        why_not.append("LLM_BASE_URL is not set and Foundry Local is not installed")
    return sdk_url


def parse_status_url(status: str) -> str | None:
    """The OpenAI base URL in ``foundry service status`` output, or ``None`` when not running.

    The CLI prints e.g. ``🟢 Model management service is running on
    http://127.0.0.1:56432/openai/status``; the OpenAI routes live under ``/v1`` on
    the same host and port.
    """
    for line in status.splitlines():
        if "not running" in line.lower():
            return None
        match = _URL.search(line)
        if match:
            parts = urlsplit(match.group(0))
            return f"{parts.scheme}://{parts.netloc}/v1"
    return None


async def _run_status(exe: str, why_not: list[str]) -> str | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            "service",
            "status",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        why_not.append(f"`foundry service status` could not run ({exc})")
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), FOUNDRY_STATUS_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        why_not.append(
            f"`foundry service status` did not answer within {FOUNDRY_STATUS_TIMEOUT_S:.0f} s"
        )
        return None
    return out.decode("utf-8", errors="replace")


async def _sdk_endpoint(why_not: list[str]) -> str | None:
    # Optional: the SDK is not a dependency, and its catalog needs the network, so
    # only ask it about a service that already runs (never bootstrap or download).
    try:
        from foundry_local import FoundryLocalManager  # type: ignore[import-not-found]
    except ImportError:
        return None

    def ask() -> str | None:
        manager = FoundryLocalManager(bootstrap=False)
        if not manager.is_service_running():
            return None
        return str(manager.endpoint).rstrip("/")

    try:
        url = await asyncio.wait_for(asyncio.to_thread(ask), FOUNDRY_STATUS_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any SDK failure just means "not discovered"
        why_not.append(f"foundry-local-sdk could not report the service ({type(exc).__name__})")
        return None
    if url is None:
        why_not.append("Foundry Local is installed but its service is not running")
    return url


def resolve_alias(alias: str, ids: Sequence[str]) -> str | None:
    """The model id in ``ids`` that a Foundry alias such as ``phi-4-mini`` stands for.

    Case-insensitive. An exact id wins; otherwise ids containing every word of the
    alias qualify, and the one with the fewest extra words that are not build
    variants (``instruct``, ``generic``, ``cpu``, ...) is chosen, so ``phi-4-mini``
    picks ``Phi-4-mini-instruct-generic-cpu`` over ``Phi-4-mini-reasoning-generic-cpu``.
    Ties keep the server's order. ``None`` when nothing matches.
    """
    wanted = alias.strip().lower()
    if not wanted:
        return None
    for model_id in ids:
        if model_id.lower() == wanted or model_id.lower().split(":")[0] == wanted:
            return model_id
    alias_words = _words(wanted)
    best: tuple[int, int, int] | None = None
    best_id: str | None = None
    for order, model_id in enumerate(ids):
        id_words = _words(model_id.lower())
        if not _contains_in_order(id_words, alias_words):
            continue
        extra = [w for w in id_words if w not in alias_words and w not in _VARIANT_WORDS]
        contiguous = 0 if wanted in model_id.lower() else 1
        rank = (len(extra), contiguous, order)
        if best is None or rank < best:
            best, best_id = rank, model_id
    return best_id


def _words(text: str) -> list[str]:
    # Ids carry a ":<version>" suffix in newer Foundry releases; it is not a word.
    return [w for w in re.split(r"[-_.\s/]+", text.split(":")[0]) if w]


def _contains_in_order(words: list[str], wanted: list[str]) -> bool:
    it = iter(words)
    return all(any(w == target for w in it) for target in wanted)


# --- embedded engine ---------------------------------------------------------------


async def embedded_provider(settings: Settings, why_not: list[str]) -> Provider | None:
    """Start (once per process) the embedded engine and return it as a provider, or ``None``."""
    if settings.engine == "off":
        why_not.append("the embedded engine is switched off (RAG_ENGINE=off)")
        return None
    try:
        from rag.embedded_llm.process import engine_available, shared_engine
    except ImportError as exc:
        why_not.append(f"the embedded engine cannot be loaded ({exc})")
        return None
    if not engine_available(settings):
        why_not.append(f"the embedded model is not built in {settings.engine_model_dir}")
        return None
    engine = shared_engine(settings)
    try:
        # start() blocks while the child process loads the model (about a second).
        endpoint = await asyncio.to_thread(engine.start)
    except RagError as exc:
        why_not.append(f"the embedded engine did not start: {exc}")
        return None
    assert engine.info is not None
    return Provider(
        endpoint=endpoint,
        kind=Kind.EMBEDDED,
        models=(engine.info.id,),
        context_tokens=engine.info.context_tokens,
        start_hint=EMBEDDED_START_HINT,
        parameters=engine.info.parameters,
    )
