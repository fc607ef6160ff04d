"""The real chat app as a `chainlit run` subprocess on a free loopback port.

>>> with running_chainlit(tmp_path, app_env(store, fake.base_url)) as app:   # doctest: +SKIP
...     httpx.get(f"{app.url}/v1/models")
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import MODELS_DIR, REPO, free_port, stop_process

CHAINLIT = Path(sys.executable).with_name("chainlit")
START_TIMEOUT_S = 90


def app_env(store: Path, llm_base_url: str, **extra: str) -> dict[str, str]:
    """The environment for an app over ``store`` (docs/ and data/) talking to ``llm_base_url``.

    The developer's own RAG_/LLM_/CHAINLIT_ variables are left out, and the
    embedded engine is off: the model server is the given (fake) one. The docs
    folder watch is off too (``RAG_WATCH=1`` in ``extra`` turns it on): a store
    copied to another path is re-ingested whole by the watcher's first ingest.
    """
    prefixes = ("RAG_", "LLM_", "CHAINLIT_", "FOUNDRY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(
        PYTHONPATH=str(REPO),
        RAG_DOCS_DIR=str(store / "docs"),
        RAG_DATA_DIR=str(store / "data"),
        RAG_MODELS_DIR=str(MODELS_DIR),
        RAG_ENGINE="off",
        RAG_WATCH="0",
        LLM_BASE_URL=llm_base_url,
    )
    env.update(extra)
    return env


@dataclass(frozen=True)
class RunningChainlit:
    url: str
    log: Path
    pid: int = 0  # the app's process, for tests that kill it


@contextmanager
def running_chainlit(workdir: Path, env: dict[str, str]) -> Iterator[RunningChainlit]:
    """Start ``chainlit run app.py`` with ``env``, wait for ``/health``, stop it at the end.

    Chainlit keeps session files in ``<cwd>/.files`` and deletes that folder on
    shutdown, so the app runs from its own folder under ``workdir`` (links to the
    repo's app files): an app a developer runs from the repo keeps its files.
    """
    root = workdir / "approot"
    root.mkdir(parents=True, exist_ok=True)
    for name in ("app.py", ".chainlit", "chainlit.md", "public"):
        if not (root / name).exists():
            (root / name).symlink_to(REPO / name)
    log = workdir / "chainlit.log"
    url = f"http://127.0.0.1:{free_port()}"
    port = url.rsplit(":", 1)[1]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(CHAINLIT), "run", "app.py", "--headless", "--host", "127.0.0.1", "--port", port],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_health(url, proc, log)
        yield RunningChainlit(url=url, log=log, pid=proc.pid)
    finally:
        stop_process(proc)


def _wait_for_health(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"the app did not answer /health in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
