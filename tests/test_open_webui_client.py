"""Open WebUI as a client of the API: its own recorded requests, replayed.

``tests/fixtures/openwebui-0.12.4-chat-requests.jsonl`` holds the chat requests
Open WebUI 0.12.4 sent to this API (bodies and headers): the question, a
follow-up with history, its title, tags and follow-up tasks, with and without
its ~24 KB of tool definitions. They are replayed with raw httpx against the
real API in a real uvicorn server, over a store the real ingest built from one
document about project Bluebird; the model server is tests.fake_openai.FakeOpenAI.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import rag.answer
from ingest.pipeline import ingest
from rag.settings import Settings
from tests.api_server import ApiServer
from tests.fake_openai import FakeOpenAI
from tests.support import offline_settings

FIXTURE = Path(__file__).parent / "fixtures" / "openwebui-0.12.4-chat-requests.jsonl"
MODEL = "phi-4-mini"  # the model Open WebUI asked for in the recording
BLUEBIRD = (
    "# Project Bluebird\n\n"
    "The launch code of project Bluebird is AMBER-7-ORCHID. Marta Lindqvist, the flight "
    "director, chose the launch code in March because amber and orchid were the colours "
    "of the first prototype. The launch code is changed every spring.\n"
)
TITLE = '{ "title": "Bluebird Launch Code" }'
TAGS = '{ "tags": ["Technology", "Aerospace"] }'
FOLLOW_UPS = '{ "follow_ups": ["Who chose it?", "When does it change?"] }'
ANSWER = "The launch code is AMBER-7-ORCHID [1]."


def recorded() -> list[dict[str, Any]]:
    """Open WebUI's requests, in the order it sent them."""
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


def task_of(body: dict[str, Any]) -> str | None:
    """Which housekeeping task a request to the model server is, or None for a question."""
    text = body["messages"][-1]["content"]
    for word, task in (("title", "title"), ("tags", "tags"), ("Predict", "follow_ups")):
        if text.startswith("### Task:") and word in text.split("###")[1]:
            return task
    return None


def reply(body: dict[str, Any]) -> str:
    """What a capable model would say: the JSON a task asks for, or a cited answer."""
    return {"title": TITLE, "tags": TAGS, "follow_ups": FOLLOW_UPS}.get(task_of(body) or "", ANSWER)


@pytest.fixture(scope="module")
def bluebird_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bluebird")
    (root / "docs").mkdir()
    (root / "docs" / "bluebird.md").write_text(BLUEBIRD, encoding="utf-8")
    report = ingest(offline_settings(root))
    assert not report.failed and report.chunks > 0
    return root


@pytest.fixture
def model_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=[MODEL, "qwen-local"], reply=reply) as fake:
        yield fake


@pytest.fixture
def quick_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    # The replay sends one request after another: nothing to wait for.
    monkeypatch.setattr(rag.answer, "HOUSEKEEPING_GRACE_S", 0.05)


def _settings(root: Path, fake: FakeOpenAI, **overrides: object) -> Settings:
    return offline_settings(root, llm_base_url=fake.base_url, **overrides)


def _send(api: ApiServer, record: dict[str, Any]) -> str:
    """Replay one recorded request as Open WebUI sent it; the assistant text it got back."""
    headers = {k: v for k, v in record["headers"].items() if k.lower() != "content-length"}
    response = httpx.post(
        f"{api.url}{record['path']}", json=record["body"], headers=headers, timeout=60
    )
    assert response.status_code == 200, response.text
    if not record["body"].get("stream"):
        return response.json()["choices"][0]["message"]["content"]
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def test_open_webui_replay_answers_questions_from_documents_and_tasks_as_bare_json(
    bluebird_store: Path, model_server: FakeOpenAI, quick_grace: None
) -> None:
    records = recorded()
    with ApiServer(_settings(bluebird_store, model_server)) as api:
        replies = [_send(api, record) for record in records]

    assert len(model_server.requests) == len(records)
    for record, text, upstream in zip(records, replies, model_server.requests):
        task = task_of(record["body"])
        assert "tools" not in upstream  # tool calling is not offered
        if task is None:
            # A question: retrieved, grounded, cited.
            assert text.startswith(ANSWER) and "\n\nSources:\n[1] bluebird.md" in text
            assert "AMBER-7-ORCHID" in upstream["messages"][-1]["content"]
        else:
            # A task: the client's own message reaches the model untouched, JSON comes back bare.
            assert json.loads(text) == json.loads(reply(record["body"]))
            assert upstream["messages"] == record["body"]["messages"]
            assert "Sources:" not in text
    title = next(u for r, u in zip(records, model_server.requests) if task_of(r["body"]) == "title")
    assert title["max_tokens"] == 1000  # the title request's own limit


def test_follow_up_question_is_retrieved_with_the_question_before_it(
    bluebird_store: Path, model_server: FakeOpenAI
) -> None:
    follow_up = next(r for r in recorded() if len(r["body"]["messages"]) == 3)
    with ApiServer(_settings(bluebird_store, model_server)) as api:
        text = _send(api, follow_up)
    assert "\n\nSources:\n[1] bluebird.md" in text
    messages = model_server.requests[0]["messages"]
    assert "Marta Lindqvist" in messages[-1]["content"]
    assert messages[-1]["content"].endswith("Who chose it?")
    # The earlier answer is history without this API's own trailer.
    assert any(m["content"].endswith("read carefully [1].") for m in messages)


def test_tools_are_ignored_and_never_counted_into_the_prompt_budget(
    bluebird_store: Path, model_server: FakeOpenAI
) -> None:
    with_tools = next(r for r in recorded() if r["body"].get("tools"))
    assert len(json.dumps(with_tools["body"]["tools"])) > 20_000
    # 24 KB of tools would be ~6,000 tokens: far beyond this 512-token window.
    settings = _settings(bluebird_store, model_server, context_tokens=512, answer_tokens=128)
    with ApiServer(settings) as api:
        text = _send(api, with_tools)
    assert text.startswith(ANSWER)
    upstream = model_server.requests[0]
    assert "tools" not in upstream and "tool_choice" not in upstream
    assert "AMBER-7-ORCHID" in upstream["messages"][-1]["content"]


def test_housekeeping_waits_behind_a_question_in_flight_on_a_local_server(
    bluebird_store: Path,
) -> None:
    arrived: dict[str, float] = {}
    # 40 words at 50 ms: the question holds the model for about 2 s.
    slow = " ".join([ANSWER] * 8)

    def timed(body: dict[str, Any]) -> str:
        arrived[task_of(body) or "question"] = time.monotonic()
        return reply(body) if task_of(body) else slow

    records = recorded()
    title = next(r for r in records if task_of(r["body"]) == "title")
    question = next(
        r for r in records if r["body"].get("stream") and len(r["body"]["messages"]) == 1
    )
    with FakeOpenAI(models=[MODEL], reply=timed, token_delay_s=0.05) as fake:
        with ApiServer(_settings(bluebird_store, fake)) as api:
            # Open WebUI sends the title first, the question a moment later.
            titling = threading.Thread(target=_send, args=(api, title))
            titling.start()
            time.sleep(0.05)
            _send(api, question)
            answered = time.monotonic()
            titling.join(timeout=30)
    assert [task_of(b) for b in fake.requests] == [None, "title"]
    assert arrived["title"] >= answered - 0.2  # it waited for the whole answer


def test_housekeeping_alone_is_not_held_back(
    bluebird_store: Path, model_server: FakeOpenAI
) -> None:
    title = next(r for r in recorded() if task_of(r["body"]) == "title")
    with ApiServer(_settings(bluebird_store, model_server)) as api:
        started = time.monotonic()
        assert json.loads(_send(api, title)) == json.loads(TITLE)
        elapsed = time.monotonic() - started
    assert elapsed < rag.answer.HOUSEKEEPING_GRACE_S + 2.0


def test_generation_settings_reach_the_model_within_the_window(
    bluebird_store: Path, model_server: FakeOpenAI
) -> None:
    question = {"role": "user", "content": "What is the launch code of project Bluebird?"}
    settings = _settings(bluebird_store, model_server, context_tokens=1024, answer_tokens=256)
    with ApiServer(settings) as api:
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0)
        client.chat.completions.create(
            model=MODEL,
            messages=[question],
            max_tokens=40,
            temperature=0.7,
            top_p=0.9,
            stop=["\n\n", "END"],
        )
        client.chat.completions.create(model=MODEL, messages=[question], max_completion_tokens=33)
        client.chat.completions.create(model=MODEL, messages=[question], max_tokens=100_000)
        client.chat.completions.create(model=MODEL, messages=[question])
    asked, newer, huge, plain = model_server.requests
    assert (asked["max_tokens"], asked["temperature"], asked["top_p"]) == (40, 0.7, 0.9)
    assert asked["stop"] == ["\n\n", "END"]
    assert newer["max_tokens"] == 33
    # Capped to what the 1,024-token window leaves after the prompt, yet more than the default.
    assert 256 < huge["max_tokens"] < 1024
    assert plain["max_tokens"] == 256 and "top_p" not in plain and "stop" not in plain


def test_bad_generation_settings_are_400s_with_a_sentence(
    bluebird_store: Path, model_server: FakeOpenAI
) -> None:
    base = {"model": MODEL, "messages": [{"role": "user", "content": "What is the launch code?"}]}
    bad = [
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_completion_tokens": True}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 7}, "stop"),
    ]
    with ApiServer(_settings(bluebird_store, model_server)) as api:
        for fields, name in bad:
            response = httpx.post(f"{api.url}/v1/chat/completions", json={**base, **fields})
            assert response.status_code == 400, fields
            error = response.json()["error"]
            assert f"'{name}'" in error["message"] and error["message"].endswith("."), error
    assert model_server.requests == []


def test_a_model_server_down_keeps_the_model_list_and_answers_with_what_to_start(
    bluebird_store: Path, model_server: FakeOpenAI
) -> None:
    settings = _settings(bluebird_store, model_server, llm_model=MODEL)
    title = next(r for r in recorded() if task_of(r["body"]) == "title")
    question = [{"role": "user", "content": "What is the launch code of project Bluebird?"}]
    with ApiServer(settings) as api:
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == [MODEL, "qwen-local"]
        model_server.stop()
        # The last seen list stays, so Open WebUI keeps the model it was using.
        assert [m.id for m in client.models.list().data] == [MODEL, "qwen-local"]
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model=MODEL, messages=question)
        assert err.value.status_code == 503
        assert f"No model server answered at {model_server.base_url}" in err.value.message
        assert "start a model server" in err.value.message
        stream = client.chat.completions.create(model=MODEL, messages=question, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == err.value.body["message"]
        untitled = httpx.post(f"{api.url}/v1/chat/completions", json=title["body"], timeout=30)
        assert untitled.status_code == 503
    # Never seen up, the configured model is still listed.
    fresh = _settings(bluebird_store, model_server, llm_model="llama3.2:1b")
    with ApiServer(fresh) as api:
        models = httpx.get(f"{api.url}/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["llama3.2:1b"]
