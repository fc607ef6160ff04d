"""Finding the local model server: LLM_BASE_URL, Foundry Local (fake CLI on PATH), or a sentence."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from rag import discovery
from rag.answer import answer
from rag.discovery import (
    configured_endpoint,
    forget_endpoint,
    local_endpoint,
    parse_status_url,
    resolve_alias,
)
from rag.errors import EndpointUnavailable
from rag.hosts import is_local_url
from rag.llm import stream_chat
from rag.routing import RouteRefused
from tests.conftest import make_settings
from tests.fake_openai import FakeOpenAI

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


async def test_llm_base_url_is_used_as_configured_even_when_foundry_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake_foundry(tmp_path / "bin", monkeypatch, "echo 'must not be asked'; exit 1\n")
    settings = make_settings(
        tmp_path,
        llm_base_url="http://127.0.0.1:11434/v1/",
        llm_model="llama3.2",
        context_tokens=4096,
    )

    endpoint = await local_endpoint(settings)

    assert endpoint.name == "local"
    assert endpoint.base_url == "http://127.0.0.1:11434/v1"
    assert endpoint.model == "llama3.2"
    assert endpoint.context_tokens == 4096


async def test_foundry_status_gives_the_dynamic_port_and_the_alias_resolves_to_the_model_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI(models=FOUNDRY_IDS, reply="Grounded answer [1].") as fake:
        install_fake_foundry(tmp_path / "bin", monkeypatch, running_status(fake.port))
        settings = make_settings(tmp_path, foundry_model="phi-4-mini")

        endpoint = await local_endpoint(settings)
        assert endpoint.name == "foundry"
        assert endpoint.base_url == fake.base_url
        assert endpoint.model == "Phi-4-mini-instruct-generic-cpu"

        # The discovered endpoint really answers, and Foundry sees the id, not the alias.
        text = "".join(
            [
                t
                async for t in stream_chat(
                    endpoint,
                    [{"role": "user", "content": "hi"}],
                    model=endpoint.model,
                    settings=settings,
                )
            ]
        )
    assert text == "Grounded answer [1]."
    assert fake.models_called == ["Phi-4-mini-instruct-generic-cpu"]


async def test_foundry_installed_but_stopped_and_no_engine_says_what_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake_foundry(
        tmp_path / "bin",
        monkeypatch,
        "echo '🔴 Model management service is not running!'\n"
        "echo 'To start the service, run the following command: foundry service start'\n",
    )
    settings = make_settings(tmp_path, engine="off")

    with pytest.raises(EndpointUnavailable) as err:
        await local_endpoint(settings)

    message = str(err.value)
    assert "service is not running" in message
    assert "foundry model run phi-4-mini" in message
    assert "LLM_BASE_URL" in message


async def test_a_hanging_foundry_cli_is_given_up_on_quickly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake_foundry(tmp_path / "bin", monkeypatch, "exec sleep 30\n")
    monkeypatch.setattr(discovery, "FOUNDRY_STATUS_TIMEOUT_S", 0.5)
    settings = make_settings(tmp_path, engine="off")

    with pytest.raises(EndpointUnavailable, match="did not answer within"):
        await local_endpoint(settings)


async def test_without_foundry_or_engine_the_error_says_how_to_get_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", f"{empty_bin}{os.pathsep}/usr/bin{os.pathsep}/bin")
    settings = make_settings(tmp_path, engine="off")

    with pytest.raises(EndpointUnavailable) as err:
        await local_endpoint(settings)

    message = str(err.value)
    assert "Foundry Local is not installed" in message
    assert "ollama serve" in message and "make models" in message


async def test_foundry_with_no_model_loaded_is_skipped_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI(models=[]) as fake:
        install_fake_foundry(tmp_path / "bin", monkeypatch, running_status(fake.port))
        settings = make_settings(tmp_path, engine="off")
        with pytest.raises(EndpointUnavailable, match="has no model loaded"):
            await local_endpoint(settings)


def test_status_parsing_takes_host_and_port_and_ignores_the_status_path() -> None:
    running = "🟢 Model management service is running on http://127.0.0.1:56432/openai/status\n"
    assert parse_status_url(running) == "http://127.0.0.1:56432/v1"
    assert parse_status_url("Service is running on http://localhost:5273/openai/status") == (
        "http://localhost:5273/v1"
    )
    assert parse_status_url("🔴 Model management service is not running!\n") is None
    assert parse_status_url("") is None


@pytest.mark.parametrize(
    ("alias", "ids", "expected"),
    [
        ("phi-4-mini", FOUNDRY_IDS, "Phi-4-mini-instruct-generic-cpu"),
        ("PHI-4-MINI", FOUNDRY_IDS, "Phi-4-mini-instruct-generic-cpu"),
        ("phi-4-mini-reasoning", FOUNDRY_IDS, "Phi-4-mini-reasoning-generic-cpu"),
        ("qwen2.5-0.5b", FOUNDRY_IDS, "qwen2.5-0.5b-instruct-generic-cpu"),
        ("Phi-4-mini-instruct-generic-cpu", FOUNDRY_IDS, "Phi-4-mini-instruct-generic-cpu"),
        ("phi-4-mini", ["Phi-4-mini-instruct-generic-cpu:1"], "Phi-4-mini-instruct-generic-cpu:1"),
        ("phi-4", ["Phi-4-mini-instruct-generic-cpu", "Phi-4-generic-gpu"], "Phi-4-generic-gpu"),
        ("mistral-7b", FOUNDRY_IDS, None),
    ],
)
def test_alias_resolves_to_the_listed_id_it_stands_for(
    alias: str, ids: list[str], expected: str | None
) -> None:
    assert resolve_alias(alias, ids) == expected


# --- where LLM_BASE_URL points ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:11434/v1", True),
        ("http://localhost:8080/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://10.0.0.5:11434/v1", True),
        ("http://172.16.3.4/v1", True),
        ("http://192.168.1.20:11434/v1", True),
        ("http://[fd12::5]:11434/v1", True),
        ("http://gpu-box.local:11434/v1", True),
        (f"http://{socket.gethostname()}:11434/v1", True),
        ("http://172.32.0.1/v1", False),
        ("https://api.example.com/v1", False),
        ("http://8.8.8.8/v1", False),
        ("http://localhost.example.com/v1", False),
    ],
)
def test_llm_base_url_is_local_only_on_this_machine_or_the_private_network(
    tmp_path: Path, url: str, local: bool
) -> None:
    assert is_local_url(url) is local
    assert configured_endpoint(make_settings(tmp_path, llm_base_url=url)).is_local is local


async def test_local_only_refuses_a_remote_llm_base_url_without_calling_it(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, llm_base_url="http://api.example.com/v1", routing="local-only"
    )
    with pytest.raises(RouteRefused, match="local-only.*api.example.com.*never called"):
        async for _ in answer("Refund policy?", model="gpt", hits=[], settings=settings):
            pass


async def test_a_discovered_foundry_is_remembered_until_it_is_found_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    with FakeOpenAI(models=FOUNDRY_IDS) as fake:
        install_fake_foundry(
            tmp_path / "bin", monkeypatch, f"echo x >> {calls}\n" + running_status(fake.port)
        )
        settings = make_settings(tmp_path, engine="off")
        first = await local_endpoint(settings)
        assert await local_endpoint(settings) == first
        assert calls.read_text().count("x") == 1  # one `foundry service status` for both
        forget_endpoint(first)
        assert await local_endpoint(settings) == first
        assert calls.read_text().count("x") == 2
