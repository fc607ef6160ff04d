"""Comparing models on the same retrieved context: two fake servers, different delays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.compare import (
    CompareContext,
    ModelDelta,
    ModelDone,
    ModelFailed,
    ModelStarted,
    compare,
    compare_stream,
    main,
    on_this_machine,
    pin_id,
    tokens_per_second,
)
from rag.llm import Endpoint
from rag.routing import Kind, Provider, Reason, Route
from rag.settings import Settings
from rag.web.compare_board import CompareBoard, CompareUsage, parse_compare_command
from tests.support import MODELS_DIR, REPO, offline_settings, with_fallback
from tests.fake_openai import FakeOpenAI
from tests.foundry_fake import no_foundry

QUESTION = "How many days of paid holiday does everyone get?"
REPLY = "Everyone gets 28 days of paid holiday a year [2] plus public holidays."  # [2] holds it
FAST_DELAY_S = 0.05
SLOW_DELAY_S = 0.6
TOKEN_DELAY_S = 0.02


@pytest.fixture
def small() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(
        models=["small"], reply=REPLY, first_token_delay_s=FAST_DELAY_S, token_delay_s=TOKEN_DELAY_S
    ) as fake:
        yield fake


@pytest.fixture
def big() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(
        models=["big"], reply=REPLY, first_token_delay_s=SLOW_DELAY_S, token_delay_s=TOKEN_DELAY_S
    ) as fake:
        yield fake


def _two(root: Path, small: FakeOpenAI, big: FakeOpenAI, **overrides: object) -> Settings:
    return with_fallback(root, small.base_url, big.base_url, "big", **overrides)


def _context_message(request: dict) -> str:
    return request["messages"][-1]["content"]


async def test_both_models_get_identical_context_and_plausible_figures(
    corpus_store: Path, small: FakeOpenAI, big: FakeOpenAI
) -> None:
    result = await compare(
        QUESTION, ["small", "fallback:big"], settings=_two(corpus_store, small, big)
    )

    fast, slow = result.results
    assert isinstance(fast, ModelDone) and isinstance(slow, ModelDone)
    assert (fast.route.endpoint.name, fast.route.model) == ("configured", "small")
    assert (slow.route.endpoint.name, slow.route.model) == ("fallback", "big")
    assert fast.route.reason is slow.route.reason is Reason.PINNED
    assert fast.text == slow.text == REPLY

    assert slow.ttft_s >= SLOW_DELAY_S
    assert FAST_DELAY_S <= fast.ttft_s < slow.ttft_s
    for done in (fast, slow):
        assert done.total_s >= done.ttft_s
        assert done.completion_tokens == len(REPLY.split(" "))
        # Tokens arrive TOKEN_DELAY_S apart: decode speed cannot beat that.
        assert 0 < done.tokens_per_s <= 1 / TOKEN_DELAY_S * 1.05

    assert len(small.requests) == len(big.requests) == 1
    assert _context_message(small.requests[0]) == _context_message(big.requests[0])
    assert "28 days of paid holiday" in _context_message(small.requests[0])
    assert result.hits and result.hits[0].source


async def test_models_on_this_machine_run_one_after_the_other(
    corpus_store: Path, small: FakeOpenAI, big: FakeOpenAI
) -> None:
    events = [
        e
        async for e in compare_stream(
            QUESTION, ["fallback:big", "small"], settings=_two(corpus_store, small, big)
        )
    ]
    assert isinstance(events[0], CompareContext)
    order = [e.model for e in events[1:]]
    # Both fakes are on loopback, so they share the lane: no interleaving.
    assert order == sorted(order, key=["fallback:big", "small"].index)
    kinds = [type(e) for e in events[1:] if e.model == "small"]
    assert kinds[0] is ModelStarted and kinds[-1] is ModelDone
    assert ModelDelta in kinds


async def test_given_hits_are_reused_without_retrieval(
    corpus_store: Path, small: FakeOpenAI, big: FakeOpenAI
) -> None:
    settings = _two(corpus_store, small, big)
    first = await compare(QUESTION, ["small"], settings=settings)
    again = await compare(
        "a different question entirely",
        ["small", "fallback:big"],
        hits=first.hits,
        settings=settings,
    )
    assert again.hits == first.hits
    assert (
        _context_message(small.requests[1]).split("Question:")[0]
        == _context_message(small.requests[0]).split("Question:")[0]
    )


async def test_a_dead_model_fails_alone_with_its_sentence(
    corpus_store: Path, small: FakeOpenAI, big: FakeOpenAI
) -> None:
    settings = _two(corpus_store, small, big)
    big.stop()
    result = await compare(QUESTION, ["small", "fallback:big"], settings=settings)
    ok, failed = result.results
    assert isinstance(ok, ModelDone)
    assert isinstance(failed, ModelFailed)
    assert f"No model server answered at {big.base_url}" in failed.error


async def test_comparison_never_reroutes_a_pinned_local_model(
    corpus_store: Path, small: FakeOpenAI, big: FakeOpenAI
) -> None:
    settings = _two(corpus_store, small, big)
    small.stop()
    result = await compare(QUESTION, ["small"], settings=settings)
    assert isinstance(result.results[0], ModelFailed)
    assert big.requests == []


async def test_local_only_refuses_a_cloud_model_in_a_comparison(
    corpus_store: Path, small: FakeOpenAI, big: FakeOpenAI
) -> None:
    settings = _two(corpus_store, small, big, routing="local-only")
    result = await compare(QUESTION, ["small", "fallback:big"], settings=settings)
    ok, refused = result.results
    assert isinstance(ok, ModelDone)
    assert isinstance(refused, ModelFailed) and "local-only" in refused.error
    assert big.requests == []


async def test_a_model_without_a_server_fails_before_it_starts_and_the_others_answer(
    corpus_store: Path, big: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_foundry(tmp_path / "bin", monkeypatch)  # and no LLM_BASE_URL, engine off: no local server
    settings = offline_settings(
        corpus_store, llm_fallback_base_url=big.base_url, llm_fallback_model="big"
    )
    events = [e async for e in compare_stream(QUESTION, ["small", "fallback:big"], settings)]
    failed = [e for e in events if isinstance(e, ModelFailed)]
    assert [(e.model, "No local model server was found" in e.error) for e in failed] == [
        ("small", True)
    ]
    assert not any(isinstance(e, ModelStarted) and e.model == "small" for e in events)
    (done,) = [e for e in events if isinstance(e, ModelDone)]
    assert done.model == "fallback:big" and done.text == REPLY


def test_tokens_per_second_counts_decode_time_only() -> None:
    assert tokens_per_second(11, ttft_s=1.0, total_s=2.0) == pytest.approx(10.0)
    assert tokens_per_second(1, ttft_s=1.0, total_s=1.0) == 0.0


def _route(url: str, kind: Kind = Kind.DECLARED, name: str = "a", model: str = "m") -> Route:
    return Route(Provider(Endpoint(name, url), kind), model, Reason.PINNED)


def test_only_loopback_endpoints_share_this_machine() -> None:
    assert on_this_machine(_route("http://127.0.0.1:5272/v1"))
    assert on_this_machine(_route("http://localhost:11434/v1"))
    assert not on_this_machine(_route("https://api.openai.com/v1"))
    assert not on_this_machine(_route("http://192.168.1.20:11434/v1"))


def test_a_route_is_pinned_by_its_provider_name_or_as_local() -> None:
    assert pin_id(_route("https://c.example/v1", name="fallback", model="gpt")) == "fallback:gpt"
    for kind in (Kind.CONFIGURED, Kind.FOUNDRY, Kind.EMBEDDED):
        name = kind.name.lower()
        route = _route("http://127.0.0.1:5272/v1", kind, name=name, model="llama3.2:1b")
        assert pin_id(route) == "local:llama3.2:1b"


def test_cli_prints_one_json_line_per_model(
    corpus_store: Path, small: FakeOpenAI, big: FakeOpenAI
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "LLM_"))}
    env.update(
        RAG_DOCS_DIR=str(corpus_store / "docs"),
        RAG_DATA_DIR=str(corpus_store / "data"),
        RAG_MODELS_DIR=str(MODELS_DIR),
        RAG_ENGINE="off",
        LLM_BASE_URL=small.base_url,
        LLM_FALLBACK_BASE_URL=big.base_url,
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rag.compare",
            QUESTION,
            "--models",
            "small",
            "fallback:big",
            "--json",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["model"] for line in lines] == ["small", "fallback:big"]
    for line in lines:
        assert {"model", "answer", "ttft_s", "tokens_per_s", "total_s"} <= set(line)
        assert line["answer"] == REPLY
    assert [line["endpoint"] for line in lines] == ["configured", "fallback"]
    assert lines[1]["ttft_s"] >= SLOW_DELAY_S


def test_cli_human_output_shows_each_answer_with_its_figures(
    corpus_store: Path,
    small: FakeOpenAI,
    big: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = _two(corpus_store, small, big)
    monkeypatch.setattr("rag.compare.get_settings", lambda: settings)
    assert main([QUESTION, "--models", "small", "fallback:big"]) == 0
    out = capsys.readouterr().out
    assert f"=== small — configured ({small.base_url})" in out
    assert f"=== fallback:big — fallback ({big.base_url})" in out
    assert out.count("tokens/s") == 2 and out.count(REPLY) == 2
    assert "Sources (same for every model):\n[1] " in out
    big.stop()
    assert main([QUESTION, "--models", "small", "fallback:big"]) == 1
    assert "--- failed: No model server answered" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "/compare phi fallback:gpt How do I add files?",
            (["phi", "fallback:gpt"], "How do I add files?"),
        ),
        ("/compare a,b,c  what is x?", (["a", "b", "c"], "what is x?")),
        (
            "  /COMPARE llama3.2:1b qwen2.5:0.5b Hi there",
            (["llama3.2:1b", "qwen2.5:0.5b"], "Hi there"),
        ),
        ("How do I compare two files?", None),
    ],
)
def test_compare_command_is_parsed(text: str, expected: object) -> None:
    assert parse_compare_command(text) == expected


@pytest.mark.parametrize(
    "text", ["/compare", "/compare phi", "/compare phi gpt", "/compare a, question"]
)
def test_incomplete_compare_command_explains_usage(text: str) -> None:
    with pytest.raises(CompareUsage, match="Usage: `/compare MODEL_A MODEL_B"):
        parse_compare_command(text)


@pytest.mark.parametrize("text", ["/compare phi phi what is x?", "/compare a,b,a what is x?"])
def test_compare_with_the_same_model_twice_is_refused_with_the_usage(text: str) -> None:
    with pytest.raises(CompareUsage, match="only once.*Usage: `/compare MODEL_A MODEL_B"):
        parse_compare_command(text)


async def test_board_folds_events_into_columns_for_a_ui(
    corpus_store: Path, small: FakeOpenAI, big: FakeOpenAI
) -> None:
    settings = _two(corpus_store, small, big)
    big.stop()
    board = CompareBoard(["small", "fallback:big"])
    async for event in compare_stream(QUESTION, ["small", "fallback:big"], settings=settings):
        board.apply(event)
    done, failed = board.columns["small"], board.columns["fallback:big"]
    assert done.text == REPLY and not done.error
    assert done.endpoint == "configured (small)" and "tokens/s" in done.figures
    assert not failed.figures and "No model server answered" in failed.error
    assert board.hits  # the shared passages, for the sources
    assert board.props()["columns"] == [
        {"model": "small", "endpoint": "configured (small)", "text": REPLY, "figures": done.figures,
         "error": "", "status": "done"},
        {"model": "fallback:big", "endpoint": failed.endpoint, "text": failed.text,
         "figures": "", "error": failed.error, "status": "done"},
    ]  # fmt: skip


def _non_loopback_ip() -> str | None:
    """An address of this machine that is not loopback (a UDP connect sends nothing)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
            ip = sock.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


async def test_a_model_on_another_host_runs_alongside_the_local_one(corpus_store: Path) -> None:
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address to stand in for another host")
    # The local answer takes ~1.2 s; the remote one starts after 0.3 s, so only
    # concurrent lanes let the remote start before the local one is done.
    with (
        FakeOpenAI(models=["small"], reply=REPLY, token_delay_s=0.1) as here,
        FakeOpenAI(models=["big"], reply=REPLY, first_token_delay_s=0.3, host=ip) as remote,
    ):
        settings = _two(corpus_store, here, remote)
        events = [
            e async for e in compare_stream(QUESTION, ["small", "fallback:big"], settings=settings)
        ]
    kinds = [(type(e).__name__, e.model) for e in events[1:]]
    first_done = next(i for i, k in enumerate(kinds) if k[0] == "ModelDone")
    started = {m for kind, m in kinds[:first_done] if kind == "ModelStarted"}
    assert started == {"small", "fallback:big"}
    assert remote.models_called == ["big"] and here.models_called == ["small"]
