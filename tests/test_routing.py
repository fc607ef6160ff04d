"""Routing rules: mode order, size and task routing, the routing file, and the local-only lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.llm import Endpoint
from rag.routing import (
    RouteRefused,
    RoutingFileError,
    code_signal,
    load_routing,
    plan_routes,
    routed_models,
)
from tests.conftest import make_settings

LOCAL = Endpoint(
    name="local", base_url="http://127.0.0.1:5272/v1", model="phi", context_tokens=2048
)
CLOUD = "https://cloud.example.com/v1"


def _plan(
    tmp_path: Path,
    question: str = "What is the refund policy?",
    *,
    tokens: int = 100,
    local: Endpoint = LOCAL,
    model: str = "phi",
    **overrides: object,
):
    settings = make_settings(tmp_path, **overrides)
    return plan_routes(question, settings, local=local, model=model, prompt_tokens=tokens)


def _where(routes) -> list[tuple[str, str]]:
    return [(r.endpoint.name, r.model) for r in routes]


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


# --- modes ------------------------------------------------------------------------


def test_without_fallback_only_the_local_endpoint_answers(tmp_path: Path) -> None:
    routes = _plan(tmp_path)
    assert _where(routes) == [("local", "phi")]
    assert routes[0].reason == "local endpoint"


def test_local_first_tries_local_then_cloud_fallback(tmp_path: Path) -> None:
    routes = _plan(tmp_path, llm_fallback_base_url=CLOUD, llm_fallback_model="gpt-4o-mini")
    assert _where(routes) == [("local", "phi"), ("fallback", "gpt-4o-mini")]
    assert routes[1].endpoint.is_local is False
    assert "local endpoint down -> cloud fallback" in routes[1].reason


def test_cloud_first_tries_fallback_then_local(tmp_path: Path) -> None:
    routes = _plan(
        tmp_path,
        routing="cloud-first",
        llm_fallback_base_url=CLOUD,
        llm_fallback_model="gpt-4o-mini",
        llm_fallback_api_key="sk-test",
    )
    assert _where(routes) == [("fallback", "gpt-4o-mini"), ("local", "phi")]
    assert routes[0].endpoint.api_key == "sk-test"


def test_fallback_without_model_asks_for_the_picked_model(tmp_path: Path) -> None:
    routes = _plan(tmp_path, llm_fallback_base_url=CLOUD)
    assert _where(routes) == [("local", "phi"), ("fallback", "phi")]


def test_prompt_over_local_budget_goes_to_fallback_first(tmp_path: Path) -> None:
    # budget = 2048 context - 512 answer tokens = 1536
    routes = _plan(tmp_path, tokens=1537, llm_fallback_base_url=CLOUD, llm_fallback_model="big")
    assert _where(routes) == [("fallback", "big"), ("local", "phi")]
    assert routes[0].reason == (
        "prompt too large for the local model (1537 tokens > budget 1536) "
        "-> cloud fallback 'fallback'"
    )
    at_budget = _plan(tmp_path, tokens=1536, llm_fallback_base_url=CLOUD, llm_fallback_model="big")
    assert _where(at_budget)[0] == ("local", "phi")


def test_code_question_goes_to_code_model_on_local_endpoint(tmp_path: Path) -> None:
    routes = _plan(
        tmp_path,
        "Write a function that reverses a list",
        llm_code_model="deepseek-coder",
        llm_fallback_base_url=CLOUD,
        llm_fallback_model="gpt",
    )
    assert _where(routes) == [("local", "deepseek-coder"), ("fallback", "gpt")]
    assert routes[0].reason == "code question (asks for code) -> LLM_CODE_MODEL on 'local'"


def test_code_question_without_code_model_uses_picked_model(tmp_path: Path) -> None:
    assert _where(_plan(tmp_path, "Write a function that reverses a list")) == [("local", "phi")]


def test_general_question_ignores_code_model(tmp_path: Path) -> None:
    assert _where(_plan(tmp_path, llm_code_model="deepseek-coder")) == [("local", "phi")]


# --- local-only: nothing may leave the machine ----------------------------------------


def test_local_only_never_plans_the_fallback(tmp_path: Path) -> None:
    for tokens in (10, 1537, 100_000):
        routes = _plan(
            tmp_path,
            tokens=tokens,
            routing="local-only",
            llm_fallback_base_url=CLOUD,
            llm_fallback_model="gpt",
        )
        assert _where(routes) == [("local", "phi")]


def test_local_only_drops_a_cloud_code_model(tmp_path: Path) -> None:
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
    local_first = _plan(tmp_path, question, routing_file=path)
    assert _where(local_first)[0] == ("cloudcoder", "gpt-code")
    local_only = _plan(
        tmp_path, question, routing_file=path, routing="local-only", llm_fallback_base_url=CLOUD
    )
    assert _where(local_only) == [("local", "phi")]
    assert all(r.endpoint.is_local for r in local_only)


def test_local_only_refuses_a_model_pinned_to_the_cloud(tmp_path: Path) -> None:
    with pytest.raises(RouteRefused, match="local-only"):
        _plan(tmp_path, model="fallback:gpt", routing="local-only", llm_fallback_base_url=CLOUD)


def test_local_only_refuses_a_local_endpoint_that_is_not_local(tmp_path: Path) -> None:
    remote = Endpoint(name="local", base_url=CLOUD, model="phi", is_local=False)
    with pytest.raises(RouteRefused):
        _plan(tmp_path, local=remote, routing="local-only")


def test_routing_file_endpoints_are_remote_unless_marked_local(tmp_path: Path) -> None:
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
    routes = _plan(tmp_path, routing_file=path, routing="local-only", tokens=99_999)
    assert _where(routes) == [("local", "phi"), ("lan", "qwen")]


def test_routing_file_cannot_relax_local_only(tmp_path: Path) -> None:
    path = _routing_file(tmp_path, 'mode = "cloud-first"\n')
    settings = make_settings(
        tmp_path, routing_file=path, routing="local-only", llm_fallback_base_url=CLOUD
    )
    assert load_routing(settings).mode == "local-only"
    assert _where(plan_routes("hi", settings, local=LOCAL, model="phi")) == [("local", "phi")]


def test_routing_file_can_tighten_to_local_only(tmp_path: Path) -> None:
    path = _routing_file(tmp_path, 'mode = "local-only"\n')
    routes = _plan(tmp_path, routing_file=path, llm_fallback_base_url=CLOUD, tokens=99_999)
    assert _where(routes) == [("local", "phi")]


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
    settings = make_settings(
        tmp_path, routing_file=path, llm_fallback_base_url=CLOUD, llm_fallback_model="gpt"
    )
    table = load_routing(settings)
    coder = table.endpoint("coder")
    assert coder is not None and coder.api_key == "secret-from-env"
    assert coder.base_url == "http://127.0.0.1:11434/v1" and coder.is_local
    assert table.fallbacks == ("fallback",)

    code = plan_routes("write a bash script that backs up /etc", settings, local=LOCAL, model="phi")
    assert _where(code) == [("coder", "deepseek-coder:6.7b"), ("local", "phi"), ("fallback", "gpt")]

    # [local] context_tokens raises the budget: 3000 tokens fit in 4096 - 512.
    big = plan_routes("what is x?", settings, local=LOCAL, model="phi", prompt_tokens=3000)
    assert _where(big)[0] == ("local", "phi")
    assert big[0].endpoint.context_tokens == 4096

    assert routed_models(settings, LOCAL) == ["coder:deepseek-coder:6.7b", "fallback:gpt"]


def test_pinned_models_get_exactly_one_route(tmp_path: Path) -> None:
    kwargs = {
        "llm_fallback_base_url": CLOUD,
        "llm_fallback_model": "gpt",
        "llm_code_model": "coder",
    }
    assert _where(_plan(tmp_path, "write a function", model="local:tiny", **kwargs)) == [
        ("local", "tiny")
    ]
    assert _where(_plan(tmp_path, model="fallback:gpt-4o", tokens=10, **kwargs)) == [
        ("fallback", "gpt-4o")
    ]
    # An Ollama id with a colon is a plain model, not a pin.
    assert _where(_plan(tmp_path, model="llama3.2:1b"))[0] == ("local", "llama3.2:1b")


def test_local_only_hides_remote_models_from_listing(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, routing="local-only", llm_fallback_base_url=CLOUD, llm_fallback_model="gpt"
    )
    assert routed_models(settings, LOCAL) == []


@pytest.mark.parametrize(
    "text, match",
    [
        ("mode = ", "not valid TOML"),
        ('mode = "sometimes"', "must be one of"),
        ('[[endpoints]]\nname = "x"\n', "needs a name and a base_url"),
        ('[[endpoints]]\nname = "local"\nbase_url = "http://a/v1"\n', "reserved"),
        ('[rules]\nfallback = ["nowhere"]\n', "unknown endpoint 'nowhere'"),
    ],
)
def test_broken_routing_file_says_what_is_wrong(tmp_path: Path, text: str, match: str) -> None:
    path = _routing_file(tmp_path, text)
    with pytest.raises(RoutingFileError, match=match):
        _plan(tmp_path, routing_file=path)


def test_missing_routing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RoutingFileError, match="cannot be read"):
        _plan(tmp_path, routing_file=tmp_path / "nope.toml")
