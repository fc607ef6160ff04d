"""Routing: the pure plan (modes, size and task routing), the routing file, and the catalog's
local-only guard, pins and model offer.

:func:`plan_routes` is tested on plain values; the catalog with a configured
``LLM_BASE_URL`` (taken without a network call) or a fake server when it must list models.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rag.catalog import model_catalog
from rag.errors import EndpointUnavailable
from rag.llm import Endpoint
from rag.routing import (
    DEFAULT_START_HINT,
    Kind,
    Provider,
    Reason,
    Route,
    RouteRefused,
    RoutingFileError,
    RoutingTable,
    code_signal,
    declared_models,
    load_routing,
    plan_routes,
    split_qualified,
)
from rag.settings import Settings
from rag.web.chat_text import route_note
from tests.support import make_settings, offline_settings
from tests.fake_openai import FakeOpenAI
from tests.foundry_fake import no_foundry

LOCAL_URL = "http://127.0.0.1:5272/v1"
LOCAL = Provider(
    endpoint=Endpoint(name="configured", base_url=LOCAL_URL),
    kind=Kind.CONFIGURED,
    models=("phi",),
    context_tokens=2048,
)
CLOUD = "https://cloud.example.com/v1"


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return make_settings(tmp_path, **overrides)


def _plan(
    tmp_path: Path,
    question: str = "What is the refund policy?",
    *,
    tokens: int = 100,
    local: Provider | None = LOCAL,
    model: str = "phi",
    **overrides: object,
) -> list[Route]:
    settings = _settings(tmp_path, **overrides)
    return plan_routes(
        question,
        load_routing(settings),
        local=local,
        model=model,
        prompt_tokens=tokens,
        answer_tokens=settings.answer_tokens,
    )


async def _routes(
    tmp_path: Path,
    question: str = "What is the refund policy?",
    *,
    tokens: int = 100,
    model: str | None = "phi",
    **overrides: object,
) -> list[Route]:
    """The catalog's routes with LLM_BASE_URL as the local server (no network call)."""
    settings = offline_settings(tmp_path, **{"llm_base_url": LOCAL_URL, **overrides})
    return await model_catalog(settings).routes(question, model, tokens)


def _where(routes: list[Route]) -> list[tuple[str, str]]:
    return [(r.provider.name, r.model) for r in routes]


def _routing_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routing.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the code-question classifier ----------------------------------------------


@pytest.mark.parametrize(
    "question",
    [
        "Write a function that parses ISO dates",
        "write a Python script to rename files",
        "Can you write a regex for email addresses?",
        "Generate an SQL query that counts orders per customer",
        "Why does this fail?\n```\nx = [1, 2\n```",
        'Traceback (most recent call last):\n  File "app.py", line 3, in <module>',
        "I get ValueError: invalid literal for int() with base 10",
        "What does the retry loop in client.py do?",
        "def add(a, b):\n    return a + b\nwhy is this slow?",
        "SELECT name FROM users WHERE id = 3 returns nothing",
        "How do I handle an exception in Java?",
        "fix the bug in this function please",
    ],
)
def test_code_questions_are_recognised(question: str) -> None:
    assert code_signal(question) is not None


@pytest.mark.parametrize(
    "question",
    [
        "What is the refund policy?",
        "Summarise chapter 3 of guide.pdf",
        "Which function does the finance department serve?",
        "Write a summary of the onboarding handbook",
        "Who wrote the report and when was it published?",
        "How many vacation days do I get?",
        "Is Java an island in Indonesia?",
    ],
)
def test_ordinary_questions_are_not_code_questions(question: str) -> None:
    assert code_signal(question) is None


def test_code_signal_names_what_it_found() -> None:
    assert code_signal("```py\nprint(1)\n```") == "code fence"
    assert code_signal('File "x.py", line 9') == "stack trace"


# --- planning: modes ----------------------------------------------------------------


def test_without_fallback_only_the_local_server_answers_with_the_picked_model(
    tmp_path: Path,
) -> None:
    routes = _plan(tmp_path)
    assert _where(routes) == [("configured", "phi")]
    assert routes[0].reason is Reason.PICKED and routes[0].endpoint == LOCAL.endpoint


def test_local_first_tries_local_then_cloud_fallback(tmp_path: Path) -> None:
    routes = _plan(tmp_path, llm_fallback_base_url=CLOUD, llm_fallback_model="gpt-4o-mini")
    assert _where(routes) == [("configured", "phi"), ("fallback", "gpt-4o-mini")]
    assert [r.reason for r in routes] == [Reason.PICKED, Reason.LOCAL_DOWN]
    assert routes[1].provider.on_premises is False
    assert route_note(routes[1]) == "local endpoint down -> cloud fallback 'fallback'"


def test_cloud_first_tries_fallback_then_local(tmp_path: Path) -> None:
    routes = _plan(
        tmp_path,
        routing="cloud-first",
        llm_fallback_base_url=CLOUD,
        llm_fallback_model="gpt-4o-mini",
        llm_fallback_api_key="sk-test",
    )
    assert _where(routes) == [("fallback", "gpt-4o-mini"), ("configured", "phi")]
    assert [r.reason for r in routes] == [Reason.CLOUD_FIRST, Reason.CLOUD_DOWN]
    assert routes[0].endpoint.api_key == "sk-test"
    assert route_note(routes[0]) == "cloud-first: 'fallback'"
    assert route_note(routes[1]) == "cloud-first: cloud endpoint down -> local endpoint"


def test_cloud_first_without_a_cloud_is_just_the_picked_model(tmp_path: Path) -> None:
    routes = _plan(tmp_path, routing="cloud-first")
    assert _where(routes) == [("configured", "phi")]
    assert routes[0].reason is Reason.PICKED


def test_fallback_without_model_asks_for_the_picked_model(tmp_path: Path) -> None:
    routes = _plan(tmp_path, llm_fallback_base_url=CLOUD)
    assert _where(routes) == [("configured", "phi"), ("fallback", "phi")]


def test_a_fallback_that_is_the_local_server_is_not_tried_twice(tmp_path: Path) -> None:
    routes = _plan(tmp_path, llm_fallback_base_url=LOCAL_URL, llm_fallback_model="phi")
    assert _where(routes) == [("configured", "phi")]


def test_prompt_over_local_budget_goes_to_fallback_first(tmp_path: Path) -> None:
    # budget = 2048 context - 512 answer tokens = 1536
    routes = _plan(tmp_path, tokens=1537, llm_fallback_base_url=CLOUD, llm_fallback_model="big")
    assert _where(routes) == [("fallback", "big"), ("configured", "phi")]
    assert routes[0].reason is Reason.TOO_LARGE
    assert routes[0].detail == "1537 tokens > budget 1536"
    assert route_note(routes[0]) == (
        "prompt too large for the local model (1537 tokens > budget 1536) "
        "-> cloud fallback 'fallback'"
    )
    at_budget = _plan(tmp_path, tokens=1536, llm_fallback_base_url=CLOUD, llm_fallback_model="big")
    assert _where(at_budget)[0] == ("configured", "phi")


def test_the_budget_is_the_local_providers_window(tmp_path: Path) -> None:
    roomy = Provider(LOCAL.endpoint, Kind.CONFIGURED, models=("phi",), context_tokens=8192)
    routes = _plan(tmp_path, tokens=5000, local=roomy, llm_fallback_base_url=CLOUD)
    assert _where(routes)[0] == ("configured", "phi")


def test_code_question_goes_to_code_model_on_the_local_server(tmp_path: Path) -> None:
    routes = _plan(
        tmp_path,
        "Write a function that reverses a list",
        llm_code_model="deepseek-coder",
        llm_fallback_base_url=CLOUD,
        llm_fallback_model="gpt",
    )
    # The code model replaces the picked model on the local server, it is not tried after it.
    assert _where(routes) == [("configured", "deepseek-coder"), ("fallback", "gpt")]
    assert routes[0].reason is Reason.CODE and routes[0].detail == "asks for code"
    assert route_note(routes[0]) == (
        "code question (asks for code) -> LLM_CODE_MODEL on 'configured'"
    )


def test_code_question_without_code_model_uses_picked_model(tmp_path: Path) -> None:
    routes = _plan(tmp_path, "Write a function that reverses a list")
    assert _where(routes) == [("configured", "phi")] and routes[0].reason is Reason.PICKED


def test_general_question_ignores_code_model(tmp_path: Path) -> None:
    assert _where(_plan(tmp_path, llm_code_model="deepseek-coder")) == [("configured", "phi")]


def test_planning_leaves_the_local_only_guard_to_the_catalog(tmp_path: Path) -> None:
    # Pure planning lists the remote fallback; only size routing is off outside local-first.
    routes = _plan(
        tmp_path, tokens=99_999, routing="local-only", llm_fallback_base_url=CLOUD
    )
    assert [r.reason for r in routes] == [Reason.PICKED, Reason.LOCAL_DOWN]


# --- planning without a local server -----------------------------------------------------


def test_no_local_server_and_nothing_declared_plans_nothing(tmp_path: Path) -> None:
    assert _plan(tmp_path, local=None) == []


def test_no_local_server_leaves_the_fallback(tmp_path: Path) -> None:
    routes = _plan(
        tmp_path, tokens=99_999, local=None, llm_fallback_base_url=CLOUD, llm_fallback_model="gpt"
    )
    assert _where(routes) == [("fallback", "gpt")]
    assert routes[0].reason is Reason.LOCAL_DOWN  # not "too large": there is no local window


def test_no_local_server_in_cloud_first_leaves_the_cloud_first(tmp_path: Path) -> None:
    routes = _plan(
        tmp_path,
        local=None,
        routing="cloud-first",
        llm_fallback_base_url=CLOUD,
        llm_fallback_model="gpt",
    )
    assert _where(routes) == [("fallback", "gpt")] and routes[0].reason is Reason.CLOUD_FIRST


def test_no_local_server_drops_a_code_model_meant_for_it(tmp_path: Path) -> None:
    routes = _plan(
        tmp_path,
        "Write a function that reverses a list",
        local=None,
        llm_code_model="deepseek-coder",
        llm_fallback_base_url=CLOUD,
        llm_fallback_model="gpt",
    )
    assert _where(routes) == [("fallback", "gpt")]


def test_no_local_server_keeps_a_declared_code_endpoint(tmp_path: Path) -> None:
    path = _routing_file(
        tmp_path,
        """
[[endpoints]]
name = "coder"
base_url = "http://127.0.0.1:11434/v1"
models = ["deepseek-coder:6.7b"]
local = true
labels = ["code"]

[rules]
code_model = "deepseek-coder:6.7b"
""",
    )
    question = "write a bash script that backs up /etc"
    routes = _plan(tmp_path, question, local=None, routing_file=path)
    assert _where(routes) == [("coder", "deepseek-coder:6.7b")] and routes[0].reason is Reason.CODE


# --- reasons for people ------------------------------------------------------------------------


CLOUD_PROVIDER = Provider(Endpoint("fallback", CLOUD), Kind.DECLARED, on_premises=False)
LAN_PROVIDER = Provider(Endpoint("lan", "http://192.168.1.20:11434/v1"), Kind.DECLARED)


def test_route_notes_say_why_a_route_answered() -> None:
    assert route_note(Route(LOCAL, "phi")) == "the picked model"
    assert route_note(Route(CLOUD_PROVIDER, "gpt", Reason.PINNED)) == "pinned to 'fallback'"
    assert route_note(Route(LAN_PROVIDER, "qwen", Reason.LOCAL_DOWN)) == (
        "local endpoint down -> 'lan'"
    )
    assert route_note(Route(LAN_PROVIDER, "coder", Reason.CODE, "stack trace")) == (
        "code question (stack trace) -> LLM_CODE_MODEL on 'lan'"
    )


def test_only_the_picked_or_pinned_model_on_the_premises_answers_here() -> None:
    assert not Route(LOCAL, "phi", Reason.PICKED).answered_elsewhere
    assert not Route(LOCAL, "phi", Reason.PINNED).answered_elsewhere
    assert not Route(LAN_PROVIDER, "qwen", Reason.PINNED).answered_elsewhere
    assert Route(CLOUD_PROVIDER, "gpt", Reason.PINNED).answered_elsewhere
    assert Route(LOCAL, "coder", Reason.CODE).answered_elsewhere
    assert Route(LAN_PROVIDER, "qwen", Reason.LOCAL_DOWN).answered_elsewhere
    assert Route(CLOUD_PROVIDER, "gpt", Reason.TOO_LARGE).answered_elsewhere


# --- pinned ids ------------------------------------------------------------------------------


def test_qualified_ids_name_a_known_provider_or_the_local_server(tmp_path: Path) -> None:
    table = load_routing(_settings(tmp_path, llm_fallback_base_url=CLOUD))
    assert split_qualified("fallback:gpt-4o", table) == ("fallback", "gpt-4o")
    for alias in ("local", "configured", "foundry", "embedded"):
        assert split_qualified(f"{alias}:phi", table) == ("local", "phi")
    # An Ollama id with a colon is a plain model, not a pin; so is an empty model.
    assert split_qualified("llama3.2:1b", table) is None
    assert split_qualified("local:", table) is None
    assert split_qualified("phi", table) is None


def test_fallback_is_no_pin_when_no_fallback_is_configured(tmp_path: Path) -> None:
    assert split_qualified("fallback:gpt", load_routing(_settings(tmp_path))) is None


# --- the catalog: pins and the local-only guard -------------------------------------------


async def test_pinned_models_get_exactly_one_route(tmp_path: Path) -> None:
    kwargs = {
        "llm_fallback_base_url": CLOUD,
        "llm_fallback_model": "gpt",
        "llm_code_model": "coder",
    }
    local = await _routes(tmp_path, "write a function", model="local:tiny", **kwargs)
    assert _where(local) == [("configured", "tiny")] and local[0].reason is Reason.PINNED
    cloud = await _routes(tmp_path, model="fallback:gpt-4o", tokens=10, **kwargs)
    assert _where(cloud) == [("fallback", "gpt-4o")] and cloud[0].reason is Reason.PINNED
    # An Ollama id with a colon is the picked model on the local server.
    ollama = await _routes(tmp_path, model="llama3.2:1b")
    assert _where(ollama) == [("configured", "llama3.2:1b")] and ollama[0].reason is Reason.PICKED


async def test_a_pinned_plain_id_means_that_model_on_the_local_server(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path, llm_base_url=LOCAL_URL, llm_fallback_base_url=CLOUD)
    route = await model_catalog(settings).pinned("phi")
    assert (route.provider.name, route.model, route.reason) == ("configured", "phi", Reason.PINNED)


async def test_without_a_picked_model_the_local_servers_own_answers(tmp_path: Path) -> None:
    routes = await _routes(tmp_path, model=None, llm_model="llama3.2")
    assert _where(routes) == [("configured", "llama3.2")]


async def test_local_only_never_routes_to_the_fallback(tmp_path: Path) -> None:
    for tokens in (10, 1537, 100_000):
        routes = await _routes(
            tmp_path,
            tokens=tokens,
            routing="local-only",
            llm_fallback_base_url=CLOUD,
            llm_fallback_model="gpt",
        )
        assert _where(routes) == [("configured", "phi")]


async def test_local_only_drops_a_cloud_code_model(tmp_path: Path) -> None:
    path = _routing_file(
        tmp_path,
        f"""
[[endpoints]]
name = "cloudcoder"
base_url = "{CLOUD}"
models = ["gpt-code"]
labels = ["code"]

[rules]
code_model = "gpt-code"
""",
    )
    question = "```python\nprint(1/0)\n```\nwhy does this crash?"
    local_first = await _routes(tmp_path, question, routing_file=path)
    assert _where(local_first)[0] == ("cloudcoder", "gpt-code")
    local_only = await _routes(
        tmp_path, question, routing_file=path, routing="local-only", llm_fallback_base_url=CLOUD
    )
    assert _where(local_only) == [("configured", "phi")]
    assert all(r.provider.on_premises for r in local_only)


async def test_local_only_refuses_a_model_pinned_to_the_cloud(tmp_path: Path) -> None:
    refused = "local-only.*'fallback:gpt'.*remote endpoint \\(fallback\\)"
    with pytest.raises(RouteRefused, match=refused):
        await _routes(
            tmp_path, model="fallback:gpt", routing="local-only", llm_fallback_base_url=CLOUD
        )
    settings = offline_settings(
        tmp_path, llm_base_url=LOCAL_URL, routing="local-only", llm_fallback_base_url=CLOUD
    )
    with pytest.raises(RouteRefused, match="local-only"):
        await model_catalog(settings).pinned("fallback:gpt")


async def test_local_only_refuses_a_remote_llm_base_url_as_the_local_server(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path, llm_base_url=CLOUD, routing="local-only")
    catalog = model_catalog(settings)
    with pytest.raises(RouteRefused, match="LLM_BASE_URL \\(https://cloud.example.com/v1\\)"):
        await catalog.local()
    with pytest.raises(RouteRefused):
        await catalog.routes("What is the refund policy?", "phi", 100)
    with pytest.raises(RouteRefused):
        await catalog.pinned("local:phi")


async def test_a_remote_llm_base_url_is_allowed_outside_local_only(tmp_path: Path) -> None:
    routes = await _routes(tmp_path, llm_base_url=CLOUD)
    assert _where(routes) == [("configured", "phi")]
    assert routes[0].answered_elsewhere  # the chat says who answered


async def test_routing_file_endpoints_are_remote_unless_marked_local(tmp_path: Path) -> None:
    path = _routing_file(
        tmp_path,
        f"""
[[endpoints]]
name = "lan"
base_url = "http://192.168.1.20:11434/v1"
models = ["qwen"]
local = true
labels = ["fallback"]

[[endpoints]]
name = "forgot-the-flag"
base_url = "{CLOUD}"
models = ["gpt"]
labels = ["fallback"]
""",
    )
    routes = await _routes(tmp_path, routing_file=path, routing="local-only", tokens=99_999)
    assert _where(routes) == [("configured", "phi"), ("lan", "qwen")]


async def test_routing_file_cannot_relax_local_only(tmp_path: Path) -> None:
    path = _routing_file(tmp_path, 'mode = "cloud-first"\n')
    settings = _settings(
        tmp_path, routing_file=path, routing="local-only", llm_fallback_base_url=CLOUD
    )
    assert load_routing(settings).mode == "local-only"
    routes = await _routes(
        tmp_path, routing_file=path, routing="local-only", llm_fallback_base_url=CLOUD
    )
    assert _where(routes) == [("configured", "phi")]


async def test_routing_file_can_tighten_to_local_only(tmp_path: Path) -> None:
    path = _routing_file(tmp_path, 'mode = "local-only"\n')
    routes = await _routes(tmp_path, routing_file=path, llm_fallback_base_url=CLOUD, tokens=99_999)
    assert _where(routes) == [("configured", "phi")]


async def test_no_local_server_and_nothing_declared_says_what_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_foundry(tmp_path / "bin", monkeypatch)
    catalog = model_catalog(offline_settings(tmp_path))
    with pytest.raises(EndpointUnavailable, match="No local model server was found"):
        await catalog.routes("What is the refund policy?", None, 100)


async def test_no_local_server_routes_to_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_foundry(tmp_path / "bin", monkeypatch)
    settings = offline_settings(tmp_path, llm_fallback_base_url=CLOUD, llm_fallback_model="gpt")
    routes = await model_catalog(settings).routes("What is the refund policy?", None, 100)
    assert _where(routes) == [("fallback", "gpt")]


# --- the routing file --------------------------------------------------------------------


def test_routing_file_adds_endpoints_rules_and_keeps_env_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODER_KEY", "secret-from-env")
    path = _routing_file(
        tmp_path,
        """
[local]
context_tokens = 4096

[[endpoints]]
name = "coder"
base_url = "http://127.0.0.1:11434/v1/"
api_key_env = "CODER_KEY"
models = ["deepseek-coder:6.7b"]
local = true
labels = ["code"]

[rules]
code_model = "deepseek-coder:6.7b"
""",
    )
    settings = _settings(
        tmp_path, routing_file=path, llm_fallback_base_url=CLOUD, llm_fallback_model="gpt"
    )
    table = load_routing(settings)
    coder = table.provider("coder")
    assert coder is not None and coder.kind is Kind.DECLARED
    assert coder.endpoint.api_key == "secret-from-env"
    assert coder.endpoint.base_url == "http://127.0.0.1:11434/v1" and coder.on_premises
    assert table.fallbacks == ("fallback",)
    assert (table.code_model, table.code_provider) == ("deepseek-coder:6.7b", "coder")
    assert table.local_context_tokens == 4096

    code = plan_routes(
        "write a bash script that backs up /etc",
        table,
        local=LOCAL,
        model="phi",
        prompt_tokens=100,
        answer_tokens=settings.answer_tokens,
    )
    assert _where(code) == [
        ("coder", "deepseek-coder:6.7b"),
        ("configured", "phi"),
        ("fallback", "gpt"),
    ]
    assert declared_models(table, has_local=True) == ["coder:deepseek-coder:6.7b", "fallback:gpt"]


async def test_the_routing_files_local_window_applies_to_the_discovered_server(
    tmp_path: Path,
) -> None:
    path = _routing_file(tmp_path, "[local]\ncontext_tokens = 4096\n")
    settings = offline_settings(
        tmp_path, llm_base_url=LOCAL_URL, routing_file=path, llm_fallback_base_url=CLOUD
    )
    catalog = model_catalog(settings)
    assert (await catalog.local()).context_tokens == 4096
    # 3000 tokens fit in 4096 - 512, not in the default 2048 - 512.
    big = await catalog.routes("what is x?", "phi", 3000)
    assert _where(big)[0] == ("configured", "phi") and big[0].reason is Reason.PICKED


def test_an_api_key_may_be_written_in_the_file(tmp_path: Path) -> None:
    path = _routing_file(
        tmp_path, '[[endpoints]]\nname = "c"\nbase_url = "https://c.example/v1"\napi_key = "k1"\n'
    )
    provider = load_routing(_settings(tmp_path, routing_file=path)).provider("c")
    assert provider is not None and provider.endpoint.api_key == "k1"
    assert not provider.on_premises


def test_an_edited_routing_file_is_read_again(tmp_path: Path) -> None:
    path = _routing_file(tmp_path, 'mode = "local-first"\n')
    settings = _settings(tmp_path, routing_file=path)
    assert load_routing(settings).mode == "local-first"
    path.write_text('mode = "cloud-first"\n', encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_routing(settings).mode == "cloud-first"


def test_declared_models_in_local_only_leave_out_remote_providers(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, routing="local-only", llm_fallback_base_url=CLOUD, llm_fallback_model="gpt"
    )
    assert declared_models(load_routing(settings), has_local=True) == []


def test_a_code_model_on_the_local_server_is_offered_only_with_a_local_server(
    tmp_path: Path,
) -> None:
    table = load_routing(_settings(tmp_path, llm_code_model="coder"))
    assert declared_models(table, has_local=True) == ["local:coder"]
    assert declared_models(table, has_local=False) == []


@pytest.mark.parametrize(
    "text, match",
    [
        ("mode = ", "is not valid TOML"),
        ('mode = "sometimes"', "is not valid: mode: Input should be 'local-first'"),
        ('colour = "red"\n', "is not valid: colour: Extra inputs are not permitted"),
        (
            '[[endpoints]]\nname = "a"\nbase_url = "http://a/v1"\nmodle = ["x"]\n',
            "is not valid: endpoints.0.modle: Extra inputs are not permitted",
        ),
        ('[[endpoints]]\nname = "x"\n', "is not valid: endpoints.0.base_url: Field required"),
        ("[local]\ncontext_tokens = 10\n", "local.context_tokens: Input should be greater"),
        (
            '[[endpoints]]\nname = "a"\nbase_url = "http://a/v1"\n'
            '[[endpoints]]\nname = "a"\nbase_url = "http://b/v1"\n',
            "must be unique: \\['a', 'a'\\]",
        ),
        ('[[endpoints]]\nname = "local"\nbase_url = "http://a/v1"\n', "reserved"),
        ('[rules]\nfallback = ["nowhere"]\n', "unknown endpoint 'nowhere'"),
        ('[rules]\ncode_endpoint = "nowhere"\n', "unknown endpoint 'nowhere'"),
    ],
)
def test_broken_routing_file_says_what_is_wrong_in_a_sentence(
    tmp_path: Path, text: str, match: str
) -> None:
    path = _routing_file(tmp_path, text)
    with pytest.raises(RoutingFileError, match=match) as err:
        load_routing(_settings(tmp_path, routing_file=path))
    message = str(err.value)
    assert str(path) in message and message.endswith(".")
    assert "\n" not in message and "pydantic" not in message


def test_missing_routing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RoutingFileError, match="nope.toml \\(RAG_ROUTING_FILE\\) cannot be read"):
        load_routing(_settings(tmp_path, routing_file=tmp_path / "nope.toml"))


# --- the catalog's offer: what the model picker shows -------------------------------------


async def test_offer_lists_the_local_servers_models_then_the_declared_ones(tmp_path: Path) -> None:
    with FakeOpenAI(models=["llama3.2:1b", "qwen2.5:0.5b"]) as fake:
        settings = offline_settings(
            tmp_path,
            llm_base_url=fake.base_url,
            llm_model="qwen2.5:0.5b",
            llm_fallback_base_url=CLOUD,
            llm_fallback_model="gpt",
        )
        offer = await model_catalog(settings).offer()
    assert offer.problem is None and offer.local is not None
    assert offer.local.name == "configured"
    assert offer.listed == ("llama3.2:1b", "qwen2.5:0.5b")
    assert offer.declared == ("fallback:gpt",)
    assert offer.models == ["llama3.2:1b", "qwen2.5:0.5b", "fallback:gpt"]
    assert offer.default == "qwen2.5:0.5b"  # LLM_MODEL, since the server lists it
    assert offer.owner("llama3.2:1b") == "configured"  # a listed id with a colon is no pin
    assert offer.owner("fallback:gpt") == "fallback"


async def test_offer_preselects_the_first_listed_model_when_llm_model_is_not_listed(
    tmp_path: Path,
) -> None:
    with FakeOpenAI(models=["a", "b"]) as fake:
        settings = offline_settings(tmp_path, llm_base_url=fake.base_url, llm_model="missing")
        offer = await model_catalog(settings).offer()
    assert offer.default == "a" and offer.models == ["a", "b"]


async def test_offer_without_a_local_server_preselects_the_declared_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_foundry(tmp_path / "bin", monkeypatch)
    settings = offline_settings(tmp_path, llm_fallback_base_url=CLOUD, llm_fallback_model="gpt")
    offer = await model_catalog(settings).offer()
    assert offer.local is None and offer.listed == ()
    assert isinstance(offer.problem, EndpointUnavailable)
    assert "No local model server was found" in str(offer.problem)
    assert offer.models == ["fallback:gpt"] and offer.default == "fallback:gpt"
    assert offer.owner("fallback:gpt") == "fallback"


async def test_offer_with_the_configured_server_down_says_what_to_start(tmp_path: Path) -> None:
    with FakeOpenAI() as fake:
        url = fake.base_url
    offer = await model_catalog(offline_settings(tmp_path, llm_base_url=url)).offer()
    assert offer.local is None and offer.models == [] and offer.default == ""
    assert str(offer.problem).startswith(f"No model server answered at {url}")
    assert DEFAULT_START_HINT in str(offer.problem)


async def test_offer_in_local_only_hides_remote_models_and_refuses_a_remote_server(
    tmp_path: Path,
) -> None:
    with FakeOpenAI(models=["phi"]) as fake:
        settings = offline_settings(
            tmp_path,
            llm_base_url=fake.base_url,
            routing="local-only",
            llm_fallback_base_url=CLOUD,
            llm_fallback_model="gpt",
        )
        offer = await model_catalog(settings).offer()
    assert offer.models == ["phi"] and offer.declared == ()

    remote = offline_settings(tmp_path, llm_base_url=CLOUD, routing="local-only")
    refused = await model_catalog(remote).offer()
    assert refused.local is None and isinstance(refused.problem, RouteRefused)


def test_the_routing_table_knows_providers_by_name(tmp_path: Path) -> None:
    table = load_routing(_settings(tmp_path, llm_fallback_base_url=CLOUD))
    assert isinstance(table, RoutingTable)
    fallback = table.provider("fallback")
    assert fallback is not None and fallback.endpoint.base_url == CLOUD
    assert table.provider("local") is None  # the local server is discovered, not declared
