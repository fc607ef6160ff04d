"""Run the embedded engine as a child process of the app, and never leave it behind.

:class:`EngineProcess` starts ``python -m rag.embedded_llm serve`` on a loopback
socket it opened itself (so the port is known before the child starts and no
other program can take it), waits until ``GET /v1/models`` answers, and returns
a :class:`rag.llm.Endpoint` for it (:attr:`EngineProcess.info` describes the model). The child cannot outlive the app:

- :meth:`EngineProcess.stop` (also ``with`` and an ``atexit`` hook) terminates and reaps it;
- the child watches its stdin, a pipe only the parent holds, and exits at EOF,
  which the kernel delivers when the parent dies, even by SIGKILL;
- on Linux, ``PR_SET_PDEATHSIG`` also sends it SIGTERM when the starting thread dies,
  set only when starting from the main thread, which lives as long as the process.

Used like this (the model must be built)::

    with EngineProcess(get_settings()) as engine:
        engine.start().base_url             # 'http://127.0.0.1:40123/v1'
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path

from rag.embedded_llm.model import BUILD_HINT, GENAI_CONFIG, ModelInfo
from rag.errors import EndpointUnavailable, ModelMissing
from rag.llm import Endpoint
from rag.settings import Settings

START_HINT = (
    "the embedded engine did not start; see its log, rebuild it with `python -m rag.embedded_llm build "
    "--force`, or start Foundry Local (`foundry model run phi-4-mini`) or set LLM_BASE_URL"
)
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>

_running: weakref.WeakSet[EngineProcess] = weakref.WeakSet()


def engine_available(settings: Settings) -> bool:
    """True when the engine's model folder holds a model (``genai_config.json``)."""
    return (settings.engine_model_dir / GENAI_CONFIG).is_file()


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM this child when the thread that forked it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not glibc: the stdin watch still covers us
        pass


def _pythonpath() -> str:
    # The child runs `-m rag.embedded_llm` and must find this very package, whatever the app's cwd.
    root = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{rest}" if rest else root


class EngineProcess:
    """One ``rag.embedded_llm serve`` child process; :meth:`start` is idempotent and thread-safe."""

    def __init__(self, settings: Settings, *, start_timeout_s: float = 60.0) -> None:
        self.settings = settings
        self.model_dir = settings.engine_model_dir
        self.start_timeout_s = start_timeout_s
        self.log_path = settings.data_dir / "logs" / "engine.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint: Endpoint | None = None
        self.info: ModelInfo | None = None  # the served model, once started
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self.process.pid if self.process and self.process.poll() is None else None

    def start(self) -> Endpoint:
        """Start the server (if it is not running) and return its endpoint once it answers.

        Raises :class:`ModelMissing` when the model is not built and
        :class:`EndpointUnavailable` when the server does not come up in time.
        """
        with self._lock:
            if self.endpoint and self.process and self.process.poll() is None:
                return self.endpoint
            self._stop_locked()
            info = self._model_info()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sock.listen(64)
            port = sock.getsockname()[1]
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable, "-m", "rag.embedded_llm", "serve", "--model-dir", str(self.model_dir),
                "--fd", str(sock.fileno()), "--exit-with-parent",
                "--threads", str(self.settings.threads),
            ]  # fmt: skip
            main_thread = threading.current_thread() is threading.main_thread()
            with sock, self.log_path.open("ab") as log:
                # Leaving the block closes our copy of the socket: the child has its own.
                self.process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,  # never written: its EOF tells the child we are gone
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(sock.fileno(),),
                    preexec_fn=_die_with_parent
                    if sys.platform == "linux" and main_thread
                    else None,
                    env={**os.environ, "PYTHONPATH": _pythonpath()},
                )
            _running.add(self)
            base_url = f"http://127.0.0.1:{port}/v1"
            try:
                self._wait_ready(base_url, info.id)
            except BaseException:
                self._stop_locked()
                raise
            self.info = info
            self.endpoint = Endpoint(name="embedded", base_url=base_url)
            return self.endpoint

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the child and wait for it (SIGKILL after ``timeout_s``); safe to repeat."""
        with self._lock:
            self._stop_locked(timeout_s)

    def __enter__(self) -> EngineProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals ------------------------------------------------------------
    def _model_info(self) -> ModelInfo:
        if not engine_available(self.settings):
            raise ModelMissing(
                f"The embedded model is not built ({self.model_dir} has no {GENAI_CONFIG}): "
                f"{BUILD_HINT}."
            )
        return ModelInfo.read(self.model_dir)

    def _wait_ready(self, base_url: str, model_id: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EndpointUnavailable(
                    f"The embedded engine exited at start (code {self.process.returncode}): "
                    f"{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as reply:
                    ids = [m["id"] for m in json.load(reply)["data"]]
                if model_id in ids:
                    return
            except (OSError, ValueError, KeyError):
                pass  # not listening yet, or still loading the model
            time.sleep(0.1)
        raise EndpointUnavailable(
            f"The embedded engine did not answer at {base_url} within {self.start_timeout_s:.0f}s "
            f"(log: {self.log_path})."
        )

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"no log at {self.log_path}"
        return " | ".join(text.strip().splitlines()[-lines:])

    def _stop_locked(self, timeout_s: float = 5.0) -> None:
        process, self.process, self.endpoint = self.process, None, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdin:
            process.stdin.close()
        _running.discard(self)


@functools.cache
def shared_engine(settings: Settings) -> EngineProcess:
    """The one :class:`EngineProcess` of this app process for these settings."""
    return EngineProcess(settings)


@atexit.register
def _stop_all() -> None:
    for engine in list(_running):
        engine.stop(timeout_s=2.0)
