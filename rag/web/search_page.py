"""The search page that embeds questions in the browser (``/search``), and the files behind it.

The page (``browser_search/search.html`` and its two modules) runs our exported
all-MiniLM-L6-v2 with ONNX Runtime Web, on WebGPU when the browser offers an
adapter and on wasm otherwise, and ranks every passage of the knowledge base by
cosine in the browser. The app serves it under ``/search/``; ``rag.export_site``
writes the same files into a static folder. Both use one layout, relative to the page:

- ``app/search.js``, ``app/wordpiece.js``: the page's code;
- ``runtime/``: ONNX Runtime Web's wasm build and WebGPU build, copied by ``make web``
  from the npm package pinned in ``browser_search/package-lock.json``;
- ``model/model.onnx``, ``model/tokenizer.json``: the embedder the server uses;
- ``data/index.json`` (passages: id, file, page, heading, text) and ``data/vectors.bin``
  (their unit vectors, float16 little-endian, one row per passage).

The data routes hold the documents, so every ``/search`` route applies the chat
socket's rule (:func:`rag.web.socket_guard.refusal`): loopback pages and host names,
plus ``RAG_ALLOWED_ORIGINS`` and ``RAG_ALLOWED_HOSTS``; beyond loopback, where the
chat asks for a password, the data routes also want a signed-in user (:func:`signed_in`).

>>> mount_search_page(chainlit.server.app, settings)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import APIRouter, FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response

from rag.embed import TOKENIZER_NAME, read_manifest
from rag.errors import NoDocuments, RagError
from rag.settings import Settings
from rag.store import ChunkStore, read_generation
from rag.web.front_routes import put_first
from rag.web.sign_in import SignIn, sign_in_mode
from rag.web.socket_guard import Caller, refusal

PAGE_DIR = Path(__file__).with_name("browser_search")
RUNTIME_DIR = PAGE_DIR / "runtime"
# The two builds the page may load (wasm, WebGPU) and the wasm binaries they fetch.
RUNTIME_FILES = (
    "ort.wasm.min.mjs",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
    "ort.webgpu.min.mjs",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
)
APP_FILES = ("search.js", "wordpiece.js")
INDEX_PATH, VECTORS_PATH = "data/index.json", "data/vectors.bin"
VECTOR_DTYPE = "float16"  # half the bytes of float32; scores move by about 1e-4
ROUTE = "/search"
CHAT_URL = "/"  # where "ask about this" sends the question (Chainlit reads ?prompt=)


class SearchRuntimeMissing(RagError):
    """ONNX Runtime Web was not installed by set-up, so the page cannot run the model."""


def runtime_missing() -> str | None:
    """A sentence naming what to run when the runtime files are absent, or None."""
    absent = [name for name in RUNTIME_FILES if not (RUNTIME_DIR / name).is_file()]
    if not absent:
        return None
    return (
        f"The in-browser search runtime is not installed ({absent[0]} is missing from "
        f"{RUNTIME_DIR}): run `make web`, which needs npm."
    )


def page_html(base: str, chat_url: str = "") -> str:
    """The page, resolving its files under ``base``; ``chat_url`` empty hides "ask about this"."""
    template = (PAGE_DIR / "search.html").read_text(encoding="utf-8")
    return template.format(base=_attr(base), chat=_attr(chat_url))


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def static_files(settings: Settings) -> dict[str, Path]:
    """The page's files that do not change with the documents: relative path -> file on disk.

    Raises :class:`rag.errors.ModelMissing` when the embedder is not exported.
    """
    manifest = read_manifest(settings.embedder_dir)
    model = settings.embedder_dir / manifest["files"][settings.embed_precision]["path"]
    files = {f"app/{name}": PAGE_DIR / name for name in APP_FILES}
    files |= {f"runtime/{name}": RUNTIME_DIR / name for name in RUNTIME_FILES}
    files["model/model.onnx"] = model
    files["model/tokenizer.json"] = settings.embedder_dir / TOKENIZER_NAME
    return files


@dataclass(frozen=True)
class SearchIndex:
    """The knowledge base as the page reads it: ``index.json`` bytes and ``vectors.bin`` bytes."""

    meta: bytes
    vectors: bytes
    count: int

    @classmethod
    def build(cls, settings: Settings) -> SearchIndex:
        """Read every passage and its stored vector from the store (one pass, paged).

        Raises :class:`rag.errors.NoDocuments` when nothing is ingested yet.
        """
        manifest = read_manifest(settings.embedder_dir)
        passages, rows = [], []
        for chunk, vector in ChunkStore(settings, create=False).iter_vectors():
            passages.append(
                {
                    "id": chunk.id,
                    "source": chunk.source,
                    "page": chunk.page,
                    "heading": chunk.heading,
                    "text": chunk.text,
                }
            )
            rows.append(vector)
        if not passages:
            raise NoDocuments(str(settings.docs_dir))
        dim = int(manifest["dimension"])
        matrix = np.asarray(rows, dtype="<f2").reshape(len(rows), dim)
        meta = {
            "model": manifest["model"],
            "dimension": dim,
            "max_tokens": settings.embed_max_tokens,
            "count": len(passages),
            "vector_dtype": VECTOR_DTYPE,
            "passages": passages,
        }
        body = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return cls(meta=body, vectors=matrix.tobytes(), count=len(passages))


class IndexCache:
    """The :class:`SearchIndex` of the store's current generation, rebuilt after each ingest."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._generation: str | None = None
        self._index: SearchIndex | None = None

    def current(self) -> SearchIndex:
        """The index for what the store holds now (blocking: call it from a worker thread)."""
        with self._lock:
            generation = read_generation(self.settings)
            if self._index is None or generation != self._generation:
                self._index = SearchIndex.build(self.settings)
                self._generation = generation
            return self._index


def create_search_router(settings: Settings) -> APIRouter:
    """The ``/search`` page and its files as a router (mount it with :func:`mount_search_page`)."""
    router = APIRouter()
    cache = IndexCache(settings)

    @router.get(ROUTE)
    @router.get(f"{ROUTE}/")
    async def page(request: Request) -> Response:
        if (refused := refusal(Caller.from_scope(request.scope), settings)) is not None:
            return PlainTextResponse(refused.sentence(), status_code=403)
        # Cross-origin isolation lets ONNX Runtime Web use threads; every file is same-origin.
        return HTMLResponse(page_html(f"{ROUTE}/", CHAT_URL), headers=_ISOLATED)

    @router.get(ROUTE + "/{path:path}")
    async def asset(request: Request, path: str) -> Response:
        if (refused := refusal(Caller.from_scope(request.scope), settings)) is not None:
            return PlainTextResponse(refused.sentence(), status_code=403)
        try:
            if path in (INDEX_PATH, VECTORS_PATH):
                if not await signed_in(request, settings):
                    return PlainTextResponse(SIGN_IN_FIRST, status_code=401)
                index = await run_in_threadpool(cache.current)
                if path == INDEX_PATH:
                    return Response(index.meta, media_type="application/json", headers=_ISOLATED)
                return Response(
                    index.vectors, media_type="application/octet-stream", headers=_ISOLATED
                )
            file = static_files(settings).get(path)
        except RagError as exc:
            return PlainTextResponse(str(exc), status_code=503)
        if file is None or not file.is_file():
            missing = runtime_missing() if path.startswith("runtime/") else None
            return PlainTextResponse(missing or f"No such file: {path}", status_code=404)
        return FileResponse(file, headers=_ISOLATED)

    return router


SIGN_IN_FIRST = "Sign in to the chat first: the passages are for its users only."


async def signed_in(request: Request, settings: Settings) -> bool:
    """Whether ``request`` may read the passages: always for the person at this machine
    (loopback sign-in); beyond loopback only with the signed-in chat's cookie or token,
    as the chat itself asks for a password there."""
    if sign_in_mode(settings) is not SignIn.PASSWORD:
        return True
    # Here, not at the top: importing this module (rag.export_site) must not load Chainlit.
    from chainlit.auth import get_current_user, reuseable_oauth

    try:
        return await get_current_user(await reuseable_oauth(request)) is not None
    except HTTPException:  # no token, or one that does not verify
        return False


_ISOLATED = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def mount_search_page(app: FastAPI, settings: Settings) -> None:
    """Add the ``/search`` routes to the *front* of ``app``'s routes (Chainlit's server app).

    Chainlit answers every other GET with its web app, so the routes go ahead of
    that catch-all; a reload replaces them instead of adding a second copy.
    """
    put_first(app, create_search_router(settings), "rag_search_routes")
