"""The one settings object of Local RAG Chat.

Every tunable is read here, from the environment or a ``.env`` file in the
working directory, and nowhere else. Code takes a ``Settings`` argument (or
calls :func:`get_settings`) instead of reading ``os.environ``.

>>> from rag.settings import Settings
>>> s = Settings(RAG_DATA_DIR="/tmp/rag-data")
>>> s.models_dir.name
'models'
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rag.errors import RagError
from rag.model_tiers import TIERS


# The project's own data folder, found from this file rather than from RAG_DATA_DIR or the
# working directory: `make models` exports into it, and every data folder reads from it.
SHARED_MODELS_DIR = Path(__file__).resolve().parents[1] / ".data" / "models"


class SettingsInvalid(RagError):
    """A setting in the environment or ``.env`` has a value that cannot be used."""


def _env(name: str) -> AliasChoices:
    # The environment name; populate_by_name lets code pass the field name too.
    return AliasChoices(name)


class Settings(BaseSettings):
    """Paths, store, embedding, retrieval, LLM endpoint and routing settings."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        # Frozen, so hashable: per-settings caches are plain functools.cache.
        frozen=True,
    )

    # --- paths -----------------------------------------------------------
    docs_dir: Path = Field(Path("docs"), validation_alias=_env("RAG_DOCS_DIR"))
    data_dir: Path = Field(Path(".data"), validation_alias=_env("RAG_DATA_DIR"))
    # Models are big and built once, and every knowledge base (data dir) uses the same
    # ones, so they have a place of their own (default: see the models_dir property).
    models_dir_override: Path | None = Field(None, validation_alias=_env("RAG_MODELS_DIR"))

    # --- store -------------------------------------------------------------
    collection: str = Field("chunks", validation_alias=_env("RAG_COLLECTION"))
    chroma_host: str | None = Field(None, validation_alias=_env("CHROMA_HOST"))
    chroma_port: int = Field(8000, validation_alias=_env("CHROMA_PORT"))

    # --- ingest ------------------------------------------------------------
    chunk_tokens: int = Field(220, ge=32, le=256, validation_alias=_env("RAG_CHUNK_TOKENS"))
    chunk_overlap: int = Field(40, ge=0, validation_alias=_env("RAG_CHUNK_OVERLAP"))
    max_file_mb: float = Field(50.0, gt=0, validation_alias=_env("RAG_MAX_FILE_MB"))
    # What one file may cost once it is opened, whatever its size on disk: a few KB of
    # zip can inflate to GBs, and a 50 MB page to tens of thousands of chunks.
    max_inflated_mb: float = Field(100.0, gt=0, validation_alias=_env("RAG_MAX_INFLATED_MB"))
    max_text_mb: float = Field(10.0, gt=0, validation_alias=_env("RAG_MAX_TEXT_MB"))
    max_chunks_per_file: int = Field(10_000, ge=1, validation_alias=_env("RAG_MAX_CHUNKS_PER_FILE"))
    lock_timeout_s: float = Field(0.0, ge=0, validation_alias=_env("RAG_LOCK_TIMEOUT"))
    # The chat app ingests changes under the docs folder by itself (ingest/watch.py).
    watch: bool = Field(True, validation_alias=_env("RAG_WATCH"))
    # OCR of PDF pages without a text layer and of .png/.jpg files (ingest/ocr.py).
    ocr: bool = Field(True, validation_alias=_env("RAG_OCR"))
    # A scanned page costs seconds on a CPU; past this, a file's remaining pages are skipped.
    ocr_seconds_per_file: float = Field(
        300.0, gt=0, validation_alias=_env("RAG_OCR_SECONDS_PER_FILE")
    )

    # --- embeddings ----------------------------------------------------------
    # int8 matched fp32's hybrid recall and MRR on every QA set and embeds about 2x faster
    # (bench/RESULTS.md, "Embeddings"); changing it re-embeds the store on the next ingest.
    embed_precision: Literal["fp32", "int8"] = Field(
        "int8", validation_alias=_env("RAG_EMBED_PRECISION")
    )
    # Per batch; batches run side by side, one per core, and 16 beat 32 there.
    embed_batch: int = Field(16, ge=1, validation_alias=_env("RAG_EMBED_BATCH"))
    embed_max_tokens: int = Field(256, ge=16, le=512, validation_alias=_env("RAG_EMBED_MAX_TOKENS"))
    threads: int = Field(0, ge=0, validation_alias=_env("RAG_THREADS"))  # 0: one per core

    # --- retrieval -----------------------------------------------------------
    top_k: int = Field(5, ge=1, le=50, validation_alias=_env("RAG_TOP_K"))
    candidates: int = Field(30, ge=1, validation_alias=_env("RAG_CANDIDATES"))
    rrf_k: int = Field(60, ge=1, validation_alias=_env("RAG_RRF_K"))

    # --- grounding (rag.grounding) ------------------------------------------
    gate: bool = Field(True, validation_alias=_env("RAG_GATE"))  # off: always ask the model
    # Calibrated on tests/qa (see rag/grounding.py): below both, the documents do not cover it.
    gate_min_similarity: float = Field(0.26, ge=-1, le=1, validation_alias=_env("RAG_GATE_MIN_SIMILARITY"))
    gate_min_coverage: float = Field(0.5, ge=0, le=1, validation_alias=_env("RAG_GATE_MIN_COVERAGE"))
    # The embedded engine's own check past the gate: below this probability of "yes" to "do
    # the passages state the answer?", the model is not asked to answer. Midway between the
    # answer sets' uncovered questions below their lowest answerable one (up to 0.26) and that
    # one (0.34), as the int8 model answers on a CPU with VNNI; with AVX2 only, one answerable
    # question of 63 gets 0.26 and is declined (bench_check in bench/RESULTS.md).
    check_min_yes: float = Field(0.3, ge=0, le=1, validation_alias=_env("RAG_CHECK_MIN_YES"))
    # Passages this far below the best one's similarity (and not found by BM25) are left out.
    passage_margin: float = Field(0.25, ge=0, le=2, validation_alias=_env("RAG_PASSAGE_MARGIN"))
    # An answer sentence whose cited passages hold less than this share of its words is marked.
    support_min: float = Field(0.5, ge=0, le=1, validation_alias=_env("RAG_SUPPORT_MIN"))
    # A sentence's [n] moves to a passage that holds more than this share more of its words
    # (and at least support_min of them) than the passages it cites; 1 turns it off.
    citation_margin: float = Field(0.2, ge=0, le=1, validation_alias=_env("RAG_CITATION_MARGIN"))

    # --- local LLM endpoint --------------------------------------------------
    llm_base_url: str | None = Field(None, validation_alias=_env("LLM_BASE_URL"))
    llm_api_key: str = Field("not-needed", validation_alias=_env("LLM_API_KEY"))
    llm_model: str | None = Field(None, validation_alias=_env("LLM_MODEL"))
    foundry_model: str = Field("phi-4-mini", validation_alias=_env("FOUNDRY_MODEL"))
    # A total deadline for one answer, from the request to its last token (rag.llm).
    llm_timeout_s: float = Field(120.0, gt=0, validation_alias=_env("LLM_TIMEOUT"))
    # How long a server may think before its first token. CPU models on two cores need
    # 2-15 s for a RAG prompt, and a server that loads the model on its first request
    # (Foundry Local, Ollama) takes tens of seconds more; a minute covers both, while a
    # server that accepted and then hung is told apart well before LLM_TIMEOUT.
    llm_first_token_timeout_s: float = Field(
        60.0, gt=0, validation_alias=_env("LLM_FIRST_TOKEN_TIMEOUT")
    )
    llm_connect_timeout_s: float = Field(5.0, gt=0, validation_alias=_env("LLM_CONNECT_TIMEOUT"))
    # The whole prompt plus answer must fit here: Ollama's default is 2048.
    context_tokens: int = Field(2048, ge=256, validation_alias=_env("RAG_CONTEXT_TOKENS"))
    answer_tokens: int = Field(512, ge=16, validation_alias=_env("RAG_ANSWER_TOKENS"))
    history_turns: int = Field(6, ge=0, validation_alias=_env("RAG_HISTORY_TURNS"))
    temperature: float = Field(0.2, ge=0, le=2, validation_alias=_env("RAG_TEMPERATURE"))

    # --- embedded engine (ONNX Runtime GenAI) --------------------------------
    engine: Literal["auto", "off"] = Field("auto", validation_alias=_env("RAG_ENGINE"))
    # Which offline model the engine builds and serves (rag/model_tiers.py).
    engine_model: str = Field("qwen2.5-1.5b", validation_alias=_env("RAG_ENGINE_MODEL"))
    engine_model_dir_override: Path | None = Field(
        None, validation_alias=_env("RAG_ENGINE_MODEL_DIR")
    )
    engine_source: str | None = Field(None, validation_alias=_env("RAG_ENGINE_SOURCE"))

    # --- routing and cloud fallback ------------------------------------------
    llm_fallback_base_url: str | None = Field(None, validation_alias=_env("LLM_FALLBACK_BASE_URL"))
    llm_fallback_api_key: str | None = Field(None, validation_alias=_env("LLM_FALLBACK_API_KEY"))
    llm_fallback_model: str | None = Field(None, validation_alias=_env("LLM_FALLBACK_MODEL"))
    routing: Literal["local-first", "cloud-first", "local-only"] = Field(
        "local-first", validation_alias=_env("RAG_ROUTING")
    )
    llm_code_model: str | None = Field(None, validation_alias=_env("LLM_CODE_MODEL"))
    routing_file: Path | None = Field(None, validation_alias=_env("RAG_ROUTING_FILE"))

    # --- chat app and API ----------------------------------------------------
    upload_max_mb: float = Field(20.0, gt=0, validation_alias=_env("RAG_UPLOAD_MAX_MB"))
    api_key: str | None = Field(None, validation_alias=_env("RAG_API_KEY"))
    # Comma lists (NoDecode: not JSON). Tuples, so the settings stay hashable.
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=_env("RAG_ALLOWED_ORIGINS")
    )
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=_env("RAG_ALLOWED_HOSTS")
    )

    # --- sign-in and history -------------------------------------------------
    # The address `chainlit run --host` serves on (Chainlit puts it in CHAINLIT_HOST).
    bind_host: str = Field("127.0.0.1", validation_alias=_env("CHAINLIT_HOST"))
    # false: ask for a password on loopback too (behind a reverse proxy every peer is local).
    trust_loopback: bool = Field(True, validation_alias=_env("RAG_TRUST_LOOPBACK"))
    auth_secret: str | None = Field(None, repr=False, validation_alias=_env("CHAINLIT_AUTH_SECRET"))

    @field_validator(
        "api_key", "llm_fallback_api_key", "llm_base_url", "chroma_host", "auth_secret",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # RAG_API_KEY= in a .env must not look like "a key is required" while being
        # an empty string that is easy to overlook; blank means unset.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: object) -> tuple[str, ...]:
        origins = tuple(o.lower().rstrip("/") for o in _comma_list(value))
        for origin in origins:
            if not _is_origin(origin):
                raise ValueError(
                    "RAG_ALLOWED_ORIGINS lists origins like https://intranet.example:8443 "
                    f"(scheme, host, optional port; no path), and '{origin}' is not one"
                )
        return origins

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> tuple[str, ...]:
        hosts = tuple(h.lower().rstrip(".").strip("[]") for h in _comma_list(value))
        for host in hosts:
            if not _is_host_name(host):
                raise ValueError(
                    "RAG_ALLOWED_HOSTS lists host names or addresses without scheme or port "
                    f"(chat.lan, 192.168.1.20, fd00::5), and '{host}' is not one"
                )
        # One spelling per address, as the guard compares them (fd00:0::5 is fd00::5).
        return tuple(str(ipaddress.ip_address(h)) if _is_address(h) else h for h in hosts)

    @field_validator("engine_model")
    @classmethod
    def _known_tier(cls, value: str) -> str:
        if value not in TIERS:
            choices = ", ".join(TIERS)
            raise ValueError(f"'{value}' is not an engine model tier; use one of {choices}")
        return value

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> Settings:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"RAG_CHUNK_OVERLAP ({self.chunk_overlap}) must be smaller than "
                f"RAG_CHUNK_TOKENS ({self.chunk_tokens})"
            )
        return self

    @property
    def models_dir(self) -> Path:
        """Where exported models live, shared by every data folder.

        ``RAG_MODELS_DIR`` when set; else ``DATA_DIR/models`` when it holds models (an
        install from before models were shared keeps using them, no rebuild); else the
        project's own ``.data/models`` (:data:`SHARED_MODELS_DIR`), wherever the app runs
        from and whatever ``RAG_DATA_DIR`` says, so a second knowledge base works at once.
        """
        if self.models_dir_override is not None:
            return self.models_dir_override
        own = self.data_dir / "models"
        return own if _holds_models(own) else SHARED_MODELS_DIR

    @property
    def embedder_dir(self) -> Path:
        """The exported ONNX embedding model: model files, tokenizer.json, manifest.json."""
        return self.models_dir / "all-MiniLM-L6-v2-onnx"

    @property
    def engine_model_dir(self) -> Path:
        """The ONNX Runtime GenAI model the embedded engine serves.

        ``RAG_ENGINE_MODEL_DIR`` when set, else the folder of the ``RAG_ENGINE_MODEL`` tier.
        """
        return self.engine_model_dir_override or self.models_dir / TIERS[self.engine_model].folder

    @property
    def chroma_dir(self) -> Path:
        """The persistent Chroma store (unused when ``CHROMA_HOST`` is set)."""
        return self.data_dir / "chroma"

    def secret(self, variable: str) -> str | None:
        """The value of an environment variable a routing file names for an API key.

        The routing file names the variable, so the secret stays out of the file;
        this object cannot know those names in advance, so it reads them on demand.
        """
        return os.environ.get(variable) or None

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with the given fields replaced (``None`` leaves a field as it is).

        Used for CLI flags. A new ``data_dir`` does not move the models: they stay
        where they were, so ``--data-dir ~/other-store`` reuses the exported models.
        """
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        if changes.get("data_dir") is not None and not changes.get("models_dir_override"):
            data["models_dir_override"] = self.models_dir
        return _validated(lambda: Settings(**data))


def _holds_models(folder: Path) -> bool:
    """Whether ``folder`` holds an exported model: a visible subfolder (builds are hidden)."""
    try:
        return any(child.is_dir() and not child.name.startswith(".") for child in folder.iterdir())
    except OSError:  # missing, or not a folder: nothing there to use
        return False


def _comma_list(value: object) -> tuple[str, ...]:
    """The non-blank items of a comma-separated string (or of a list given in code)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"expected a comma-separated list, got {value!r}")
    return tuple(str(item).strip() for item in items if str(item).strip())


_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_host_name(host: str) -> bool:
    """True for a DNS name (``chat.lan``) or an IP address; False for anything with a port."""
    return _is_address(host) or _HOST_NAME.fullmatch(host) is not None


def _is_origin(origin: str) -> bool:
    """True for ``scheme://host[:port]`` (http or https) and nothing more."""
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and origin == f"{parts.scheme}://{parts.netloc}"
        and "@" not in parts.netloc
    )


def _validated(build: Callable[[], Settings]) -> Settings:
    try:
        return build()
    except ValidationError as exc:
        problems = "; ".join(
            ": ".join(
                filter(
                    None, (".".join(map(str, err["loc"])), err["msg"].removeprefix("Value error, "))
                )
            )
            for err in exc.errors()
        )
        raise SettingsInvalid(
            f"Invalid setting ({problems}). Fix it in the environment or in .env."
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment and ``.env``.

    Raises :class:`SettingsInvalid` (a sentence naming the setting) for a bad value.
    """
    return _validated(Settings)
