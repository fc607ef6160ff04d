"""Finding the local model server: LLM_BASE_URL, Foundry Local (fake CLI on PATH), or a sentence.

Discovery itself (:mod:`rag.discovery`) caches nothing; the catalog remembers what it
found for a while and forgets it when a route finds it down.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rag import catalog as catalog_module
from rag import discovery
from rag.answer import AnswerDone, answer
from rag.catalog import model_catalog
from rag.discovery import configured_provider, discover_local, parse_status_url, resolve_alias
from rag.errors import EndpointUnavailable
from rag.hosts import is_local_url
from rag.llm import Endpoint, stream_chat, unavailable
from rag.retrieve import Hit
from rag.routing import DEFAULT_START_HINT, Kind, Provider, RouteRefused
from tests.support import make_settings
from tests.fake_openai import FakeOpenAI
from tests.foundry_fake import FOUNDRY_IDS, install_fake_foundry, no_foundry, running_status

# A question and a passage that covers it, for answers that need no retrieval.
QUESTION = "What is the refund policy?"
REFUNDS = Hit("policy.md#0", "policy.md", None, None, "The refund policy: 30 days.", 1.0)


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

    provider = await discover_local(settings)

    assert provider.name == "configured" and provider.kind is Kind.CONFIGURED
    assert provider.endpoint.base_url == "http://127.0.0.1:11434/v1"
    assert provider.models == ("llama3.2",) and provider.default_model == "llama3.2"
    assert provider.context_tokens == 4096
    assert provider.on_premises


def test_llm_base_url_without_llm_model_leaves_the_model_to_the_server(tmp_path: Path) -> None:
    provider = configured_provider(make_settings(tmp_path, llm_base_url="http://127.0.0.1:9/v1"))
    assert provider.models == () and provider.default_model == ""


async def test_foundry_status_gives_the_dynamic_port_and_the_alias_resolves_to_the_model_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI(models=FOUNDRY_IDS, reply="Grounded answer [1].") as fake:
        install_fake_foundry(tmp_path / "bin", monkeypatch, running_status(fake.port))
        settings = make_settings(tmp_path, foundry_model="phi-4-mini")

        provider = await discover_local(settings)
        assert provider.name == "foundry" and provider.kind is Kind.FOUNDRY
        assert provider.endpoint.base_url == fake.base_url
        assert provider.default_model == "Phi-4-mini-instruct-generic-cpu"
        assert provider.on_premises

        # The discovered endpoint really answers, and Foundry sees the id, not the alias.
        text = "".join(
            [
                t
                async for t in stream_chat(
                    provider.endpoint,
                    [{"role": "user", "content": "hi"}],
                    model=provider.default_model,
                    settings=settings,
                )
            ]
        )
    assert text == "Grounded answer [1]."
    assert fake.models_called == ["Phi-4-mini-instruct-generic-cpu"]


async def test_llm_model_listed_by_foundry_wins_over_the_alias(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeOpenAI(models=FOUNDRY_IDS) as fake:
        install_fake_foundry(tmp_path / "bin", monkeypatch, running_status(fake.port))
        settings = make_settings(tmp_path, llm_model="qwen2.5-0.5b-instruct-generic-cpu")
        provider = await discover_local(settings)
    assert provider.default_model == "qwen2.5-0.5b-instruct-generic-cpu"


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
        await discover_local(settings)

    message = str(err.value)
    assert "service is not running" in message
    assert "foundry model run phi-4-mini" in message
    assert "LLM_BASE_URL" in message
    assert "RAG_ENGINE=off" in message


async def test_a_hanging_foundry_cli_is_given_up_on_quickly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake_foundry(tmp_path / "bin", monkeypatch, "exec sleep 30\n")
    monkeypatch.setattr(discovery, "FOUNDRY_STATUS_TIMEOUT_S", 0.5)
    settings = make_settings(tmp_path, engine="off")

    with pytest.raises(EndpointUnavailable, match="did not answer within"):
        await discover_local(settings)


async def test_without_foundry_or_engine_the_error_says_how_to_get_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_foundry(tmp_path / "bin", monkeypatch)
    settings = make_settings(tmp_path, engine="off")

    with pytest.raises(EndpointUnavailable) as err:
        await discover_local(settings)

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
            await discover_local(settings)


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
def test_llm_base_url_is_on_premises_only_on_this_machine_or_the_private_network(
    tmp_path: Path, url: str, local: bool
) -> None:
    assert is_local_url(url) is local
    assert configured_provider(make_settings(tmp_path, llm_base_url=url)).on_premises is local


async def test_local_only_refuses_a_remote_llm_base_url_without_calling_it(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, llm_base_url="http://api.example.com/v1", routing="local-only"
    )
    with pytest.raises(RouteRefused, match="local-only.*api.example.com.*never called"):
        async for _ in answer(QUESTION, settings, model="gpt", hits=[REFUNDS]):
            pass


# --- what the catalog remembers -----------------------------------------------------------------


def _status_calls(path: Path) -> int:
    return path.read_text().count("x") if path.exists() else 0


async def test_a_discovered_foundry_is_remembered_until_it_is_reported_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    with FakeOpenAI(models=FOUNDRY_IDS) as fake:
        install_fake_foundry(
            tmp_path / "bin", monkeypatch, f"echo x >> {calls}\n" + running_status(fake.port)
        )
        settings = make_settings(tmp_path, engine="off")
        catalog = model_catalog(settings)
        assert model_catalog(settings) is catalog  # one catalog per settings

        first = await catalog.local()
        assert await catalog.local() == first
        assert _status_calls(calls) == 1  # one `foundry service status` for both

        catalog.report_down(first)
        assert await catalog.local() == first
        assert _status_calls(calls) == 2


async def test_a_provider_other_than_the_local_one_being_down_keeps_the_local_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    with FakeOpenAI(models=FOUNDRY_IDS) as fake:
        install_fake_foundry(
            tmp_path / "bin", monkeypatch, f"echo x >> {calls}\n" + running_status(fake.port)
        )
        catalog = model_catalog(make_settings(tmp_path, engine="off"))
        await catalog.local()
        elsewhere = Provider(Endpoint("fallback", "https://cloud.example.com/v1"), Kind.DECLARED)
        catalog.report_down(elsewhere)
        await catalog.local()
    assert _status_calls(calls) == 1


async def test_discovery_runs_again_once_the_remembered_result_is_too_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setattr(catalog_module, "DISCOVERY_TTL_S", 0.0)
    with FakeOpenAI(models=FOUNDRY_IDS) as fake:
        install_fake_foundry(
            tmp_path / "bin", monkeypatch, f"echo x >> {calls}\n" + running_status(fake.port)
        )
        catalog = model_catalog(make_settings(tmp_path, engine="off"))
        await catalog.local()
        await catalog.local()
    assert _status_calls(calls) == 2


async def test_no_local_server_is_not_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_foundry(tmp_path / "bin", monkeypatch)
    catalog = model_catalog(make_settings(tmp_path, engine="off"))
    with pytest.raises(EndpointUnavailable):
        await catalog.local()
    with FakeOpenAI(models=FOUNDRY_IDS) as fake:
        install_fake_foundry(tmp_path / "bin2", monkeypatch, running_status(fake.port))
        assert (await catalog.local()).endpoint.base_url == fake.base_url


async def test_a_foundry_that_restarted_on_a_new_port_is_named_then_found_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port_file = tmp_path / "port"
    install_fake_foundry(
        tmp_path / "bin",
        monkeypatch,
        f'echo "🟢 Model management service is running on '
        f'http://127.0.0.1:$(cat {port_file})/openai/status"\n',
    )
    settings = make_settings(tmp_path, engine="off")
    first = FakeOpenAI(models=FOUNDRY_IDS, reply="First.").start()
    port_file.write_text(str(first.port))
    assert (await model_catalog(settings).local()).endpoint.base_url == first.base_url
    first.stop()

    with pytest.raises(EndpointUnavailable) as err:
        async for _ in answer(QUESTION, settings, hits=[REFUNDS]):
            pass
    # The transport names the URL; the provider adds what to start.
    assert str(err.value).startswith(f"No model server answered at {first.base_url}")
    assert "start Foundry Local (`foundry model run phi-4-mini`)" in str(err.value)

    with FakeOpenAI(models=FOUNDRY_IDS, reply="Second.") as second:
        port_file.write_text(str(second.port))
        events = [e async for e in answer(QUESTION, settings, hits=[REFUNDS])]
    assert isinstance(events[-1], AnswerDone) and events[-1].text == "Second."
    assert second.models_called == ["Phi-4-mini-instruct-generic-cpu"]


def test_a_server_that_does_not_answer_is_named_and_its_provider_says_what_to_start() -> None:
    endpoint = Endpoint("configured", "http://127.0.0.1:9/v1")
    bare = unavailable(endpoint, "APIConnectionError")
    assert str(bare) == "No model server answered at http://127.0.0.1:9/v1 (APIConnectionError)."
    assert bare.base_url == endpoint.base_url

    explained = Provider(endpoint, Kind.CONFIGURED).explain(bare)
    assert str(explained) == (
        f"No model server answered at http://127.0.0.1:9/v1 (APIConnectionError): "
        f"{DEFAULT_START_HINT}."
    )
    assert explained.base_url == endpoint.base_url
