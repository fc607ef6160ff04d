"""What the tests share: paths, settings for throwaway stores, the models check, CLI runs.

A plain module, imported by test modules (``from tests.support import ...``);
``conftest.py`` holds only fixtures and hooks.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rag.settings import Settings

REPO = Path(__file__).resolve().parents[1]
# Models are exported once by `make models`; every test reuses them read-only.
MODELS_DIR = Path(os.environ.get("RAG_MODELS_DIR", REPO / ".data" / "models")).resolve()
# What each kind of model leaves behind when it is ready.
MODEL_FILES = {
    "embedder": MODELS_DIR / "all-MiniLM-L6-v2-onnx" / "manifest.json",
    "engine": MODELS_DIR / "smollm2-135m-instruct-int4" / "genai_config.json",
}
# Settings of the developer's shell that must not reach the code under test.
SETTING_PREFIXES = ("RAG_", "LLM_", "CHROMA_", "FOUNDRY_")


def missing_model(kind: str) -> str | None:
    """The sentence to fail a test with when the ``kind`` model is not built, else None."""
    path = MODEL_FILES[kind]
    if path.is_file():
        return None
    return (
        f"The {kind} model is not prepared ({path} missing): "
        "run `make models` first (`make test` does it)."
    )


# The suite answers with the smallest model tier; the tests of the default tier say so.
SMALLEST_TIER = "smollm2-135m"


def int8_kernels_saturate() -> bool:
    """True on an x86 CPU without VNNI (AVX2 alone): there onnxruntime's u8s8 int8 kernels add
    pairs of products in 16 bits and saturate, so the int8 embedder strays further from fp32
    than elsewhere. Measured on an AVX2 EPYC: mean cosine 0.989 (min 0.963) over the test
    samples, and 0.987-0.996 on single questions, where the browser's wasm kernels give
    0.993-0.996."""
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine().lower() not in ("x86_64", "amd64") or not cpuinfo.is_file():
        return False
    return not re.search(r"\b(avx512_vnni|avx_vnni)\b", cpuinfo.read_text())


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a test: docs and data under ``tmp_path``, the shared models dir."""
    docs = tmp_path / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    values: dict[str, object] = {
        "docs_dir": docs,
        "data_dir": tmp_path / "data",
        "models_dir_override": MODELS_DIR,
        "engine_model": SMALLEST_TIER,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def offline_settings(tmp_path: Path, **overrides: object) -> Settings:
    """:func:`make_settings` with the embedded engine off: the model servers are fakes."""
    return make_settings(tmp_path, **{"engine": "off", **overrides})


def with_fallback(
    root: Path, local_url: str, fallback_url: str, fallback_model: str, **overrides: object
) -> Settings:
    """:func:`offline_settings` with a local endpoint and a cloud fallback (both fakes)."""
    return offline_settings(
        root,
        llm_base_url=local_url,
        llm_fallback_base_url=fallback_url,
        llm_fallback_model=fallback_model,
        **overrides,
    )


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    """Ask a server the test started to stop; kill it if it has not within ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cli_env(**settings: str) -> dict[str, str]:
    """The environment of a CLI run as a user's: no developer settings, the shared models."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
    env.update(PYTHONPATH=str(REPO), RAG_MODELS_DIR=str(MODELS_DIR))
    env.update(settings)
    return env


def run_module(
    module: str,
    *args: str | Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module ARGS`` the way a user does (see :func:`cli_env`)."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        env=cli_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass(frozen=True)
class MeasuredRun:
    """A finished process: exit status, output, its peak resident memory and wall time."""

    returncode: int
    stdout: str
    stderr: str
    peak_mb: float
    seconds: float


def run_measured(
    module: str, *args: str | Path, cwd: Path, env: dict[str, str], timeout: float = 600
) -> MeasuredRun:
    """Run ``python -m module ARGS`` and measure its peak resident memory by sampling.

    Every 20 ms it reads the kernel's high-water mark of the process's resident
    memory (``VmHWM`` in ``/proc/PID/status``), which also holds the peaks between
    two samples; where there is no ``/proc``, psutil's current RSS. (``ru_maxrss``
    from ``wait4`` would be simpler but counts the parent's memory the child had
    before ``exec``: a 700 MB test process makes every child look 700 MB.)
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        argv = [sys.executable, "-m", module, *map(str, args)]
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)
        peak_kb = 0
        while proc.poll() is None:
            if time.monotonic() - started > timeout:
                proc.kill()
            peak_kb = max(peak_kb, _peak_resident_kb(proc.pid))
            time.sleep(0.02)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return MeasuredRun(proc.returncode, out.read(), err.read(), peak_kb / 1024, seconds)


def _peak_resident_kb(pid: int) -> int:
    """The peak resident memory of ``pid`` so far, in KiB (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return _psutil_rss_kb(pid) if not Path("/proc/self/status").exists() else 0
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _psutil_rss_kb(pid: int) -> int:
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss // 1024)
    except Exception:  # noqa: BLE001 - no psutil, or the process ended between two samples
        return 0
