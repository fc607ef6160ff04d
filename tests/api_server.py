"""The OpenAI-compatible RAG API on a real uvicorn server on loopback, for the API's tests.

Mounted into a FastAPI app that, like Chainlit's, ends with a catch-all GET route
serving HTML, so a route the API forgets falls through to the page as in the app.
"""

from __future__ import annotations

import socket
import threading
import time

import openai
import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from rag.settings import Settings
from rag.web.http_api import mount_openai_api


class ApiServer:
    """A FastAPI app with a Chainlit-like SPA catch-all, the API mounted, served by uvicorn."""

    def __init__(self, settings: Settings) -> None:
        app = FastAPI()

        @app.get("/{full_path:path}")
        async def spa(full_path: str) -> HTMLResponse:  # what Chainlit's catch-all does
            return HTMLResponse("<html>chainlit</html>")

        mount_openai_api(app, settings)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> ApiServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "API server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def client(self, api_key: str = "anything") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60)
