"""A fake ``foundry`` CLI on PATH, for tests of Foundry Local discovery.

Discovery only ever runs ``foundry service status``; the script answers it the
way Foundry Local 0.x does, pointing at a :class:`tests.fake_openai.FakeOpenAI`
port, so the rest of discovery (listing models, resolving the alias) runs for real.

>>> install_fake_foundry(tmp_path / "bin", monkeypatch, running_status(fake.port))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

# What a Foundry Local with a few models loaded lists under /v1/models.
FOUNDRY_IDS = [
    "Phi-4-mini-reasoning-generic-cpu",
    "Phi-4-mini-instruct-generic-cpu",
    "qwen2.5-0.5b-instruct-generic-cpu",
]


def install_fake_foundry(bin_dir: Path, monkeypatch: pytest.MonkeyPatch, script_body: str) -> None:
    """Put an executable `foundry` first on PATH; only `foundry service status` is used."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "foundry"
    exe.write_text("#!/bin/sh\n" + script_body, encoding="utf-8")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")


def running_status(port: int) -> str:
    """A script body whose `service status` says the service runs on ``port``."""
    # What Foundry Local 0.x prints, emoji and all.
    return (
        'if [ "$1 $2" = "service status" ]; then\n'
        f"  echo '🟢 Model management service is running on http://127.0.0.1:{port}/openai/status'\n"
        "  echo 'EP autoregistration status: Successfully downloaded and registered the "
        "following EPs: .'\n"
        "  exit 0\n"
        "fi\n"
        "exit 2\n"
    )


def no_foundry(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH without any `foundry`: discovery finds Foundry Local not installed."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
