"""The OpenAI-compatible RAG API, driven by the real ``openai`` SDK over HTTP.

The API is mounted into a FastAPI app that, like Chainlit's, ends with a
catch-all GET route serving HTML; a real uvicorn server serves it on loopback.
Model servers are tests.fake_openai.FakeOpenAI; the store is the test corpus
ingested by the real ingest into a temporary data dir.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from rag.grounding import NOT_COVERED
from rag.prompt import FULL
from rag.settings import Settings
from rag.web.http_api import CITATIONS_MOVED_NOTE, mount_openai_api
from tests.api_server import ApiServer
from tests.fake_openai import FakeOpenAI
from tests.support import offline_settings, with_fallback

REPLY = "Everyone gets 28 days of paid holiday [2]."  # [2] holds it, so the citation stands
QUESTION = "How many days of paid holiday does everyone get?"
STREAMED = {"model": "phi-local", "stream": True, "messages": [{"role": "user", "content": QUESTION}]}


@pytest.fixture
def local() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=["phi-local", "qwen-local"], reply=REPLY) as fake:
        yield fake


@pytest.fixture
def cloud() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=["gpt-cloud"], reply="Cloud: 28 days [1].") as fake:
        yield fake


def _both(root: Path, local: FakeOpenAI, cloud: FakeOpenAI, **overrides: object) -> Settings:
    return with_fallback(root, local.base_url, cloud.base_url, "gpt-cloud", **overrides)


def test_models_lists_local_and_routed_models_ahead_of_the_spa(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    with ApiServer(_both(corpus_store, local, cloud)) as api:
        ids = [m.id for m in api.client().models.list().data]
        assert ids == ["phi-local", "qwen-local", "fallback:gpt-cloud"]
        # The catch-all still serves everything else.
        assert "chainlit" in httpx.get(f"{api.url}/some/page").text


def test_non_streamed_answer_ends_with_sources_and_names_the_endpoint(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    with ApiServer(_both(corpus_store, local, cloud)) as api:
        raw = api.client().chat.completions.with_raw_response.create(
            model="qwen-local", messages=[{"role": "user", "content": QUESTION}]
        )
        completion = raw.parse()
    text = completion.choices[0].message.content
    assert text.startswith(REPLY)
    sources = text.split("\n\nSources:\n")[1].splitlines()
    assert sources[0].startswith("[2] ") and "handbook.md" in text
    assert raw.headers["x-rag-endpoint"] == "configured"
    assert raw.headers["x-rag-model"] == "qwen-local"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage and completion.usage.completion_tokens == len(REPLY.split(" "))
    assert local.models_called == ["qwen-local"] and cloud.requests == []
    prompt = local.requests[0]["messages"][-1]["content"]
    assert prompt.index("28 days of paid holiday") < prompt.index(QUESTION)


def test_streamed_answer_arrives_in_chunks_and_ends_with_sources(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    with ApiServer(_both(corpus_store, local, cloud)) as api:
        stream = api.client().chat.completions.create(
            model="phi-local", messages=[{"role": "user", "content": QUESTION}], stream=True
        )
        chunks = list(stream)
        with httpx.stream(
            "POST",
            f"{api.url}/v1/chat/completions",
            json={
                "model": "phi-local",
                "stream": True,
                "messages": [{"role": "user", "content": QUESTION}],
            },
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            body = response.read().decode()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(REPLY) and "\n\nSources:\n[2] " in text
    assert len(chunks) > 5
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert body.rstrip().endswith("data: [DONE]")
    # Headers leave before the route is known: who answers rides on the first text chunk.
    tagged = [e["rag"] for e in _events(body) if "rag" in e]
    assert tagged[0]["endpoint"] == "configured" and tagged[0]["model"] == "phi-local"
    assert tagged[-1]["sources"][0]["n"] == 2


def _events(body: str) -> list[dict[str, Any]]:
    """The JSON events of an SSE body, without the final ``[DONE]``."""
    lines = [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


def test_a_streamed_answer_opens_before_the_models_first_token(corpus_store: Path) -> None:
    with FakeOpenAI(models=["phi-local"], reply=REPLY, first_token_delay_s=4.0) as slow:
        with ApiServer(offline_settings(corpus_store, llm_base_url=slow.base_url)) as api:
            started = time.monotonic()
            url = f"{api.url}/v1/chat/completions"
            with httpx.stream("POST", url, json=STREAMED, timeout=60) as response:
                lines = response.iter_lines()
                opened = next(line for line in lines if line.startswith("data: "))
                opened_after = time.monotonic() - started
                first_text = next(line for line in lines if "Everyone" in line)
                text_after = time.monotonic() - started
                rest = "\n".join(lines)
    assert json.loads(opened[len("data: ") :])["choices"][0]["delta"]["role"] == "assistant"
    # The model's 4 s wait comes after the stream opened, not before it.
    assert text_after - opened_after > 3.0, (opened_after, text_after)
    assert first_text and "Sources:" in rest and rest.rstrip().endswith("data: [DONE]")


def test_earlier_messages_become_history_without_old_sources(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    with ApiServer(_both(corpus_store, local, cloud)) as api:
        api.client().chat.completions.create(
            model="phi-local",
            messages=[
                {"role": "system", "content": "You are a pirate."},
                {"role": "user", "content": "Who builds the kayaks?"},
                {
                    "role": "assistant",
                    "content": "Brightwater does [1].\n\nSources:\n[1] handbook.md",
                },
                {"role": "user", "content": [{"type": "text", "text": "Where is their workshop?"}]},
            ],
        )
    messages = local.requests[0]["messages"]
    contents = [m["content"] for m in messages]
    assert "Who builds the kayaks?" in contents
    assert "Brightwater does [1]." in contents
    assert not any("pirate" in c for c in contents)
    assert messages[-1]["content"].endswith("Where is their workshop?")


def test_local_down_in_local_first_is_answered_by_the_fallback_and_says_so(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    settings = _both(corpus_store, local, cloud)
    local.stop()
    with ApiServer(settings) as api:
        ids = [m.id for m in api.client().models.list().data]
        assert ids == ["fallback:gpt-cloud"]
        raw = api.client().chat.completions.with_raw_response.create(
            model="phi-local", messages=[{"role": "user", "content": QUESTION}]
        )
    assert raw.headers["x-rag-endpoint"] == "fallback"
    text = raw.parse().choices[0].message.content
    assert text.startswith("Cloud: 28 days [1].")
    assert "local endpoint down -> cloud fallback" in text
    assert cloud.models_called == ["gpt-cloud"]


def test_local_only_never_leaks_through_the_api(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    settings = _both(corpus_store, local, cloud, routing="local-only")
    with ApiServer(settings) as api:
        client = api.client()
        assert [m.id for m in client.models.list().data] == ["phi-local", "qwen-local"]
        with pytest.raises(openai.PermissionDeniedError, match="local-only"):
            client.chat.completions.create(
                model="fallback:gpt-cloud", messages=[{"role": "user", "content": QUESTION}]
            )
        local.stop()
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(
                model="phi-local", messages=[{"role": "user", "content": QUESTION}]
            )
        assert err.value.status_code == 503
        assert f"No model server answered at {local.base_url}" in err.value.message
        # Streamed, the sentence is the answer's text: where Open WebUI shows it.
        chunks = client.chat.completions.create(
            model="phi-local", messages=[{"role": "user", "content": QUESTION}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.startswith(f"No model server answered at {local.base_url}")
    assert cloud.requests == []


def test_api_key_is_required_when_set(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    with ApiServer(_both(corpus_store, local, cloud, api_key="s3cret")) as api:
        missing = httpx.get(f"{api.url}/v1/models")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        for wrong in (api.client("nope"), api.client("s3cret-but-longer")):
            with pytest.raises(openai.AuthenticationError) as err:
                wrong.models.list()
            assert err.value.body["code"] == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                wrong.chat.completions.create(
                    model="phi-local", messages=[{"role": "user", "content": QUESTION}]
                )
        good = api.client("s3cret")
        assert good.models.list().data
        answer = good.chat.completions.create(
            model="phi-local", messages=[{"role": "user", "content": QUESTION}]
        )
    assert answer.choices[0].message.content.startswith(REPLY)
    assert len(local.requests) == 1


def test_errors_are_openai_style_json(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI, tmp_path: Path
) -> None:
    with ApiServer(_both(corpus_store, local, cloud)) as api:
        client = api.client()
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": QUESTION}]
            )
        assert "GET /v1/models" in err.value.message
        for body in (
            b"{not json",
            b"[]",
            b'{"model": "phi-local"}',
            b'{"model": "phi-local", "messages": [{"role": "assistant", "content": "x"}]}',
        ):
            response = httpx.post(
                f"{api.url}/v1/chat/completions",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 400, body
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert local.requests == []

    empty = offline_settings(tmp_path, llm_base_url=local.base_url)
    with ApiServer(empty) as api:
        with pytest.raises(openai.ConflictError, match="No documents ingested yet"):
            api.client().chat.completions.create(
                model="phi-local", messages=[{"role": "user", "content": QUESTION}]
            )


def test_mounting_twice_replaces_the_routes(corpus_store: Path, local: FakeOpenAI) -> None:
    app = FastAPI()
    settings = offline_settings(corpus_store, llm_base_url=local.base_url)
    mount_openai_api(app, settings)
    count = len(app.router.routes)
    mount_openai_api(app, settings)
    assert len(app.router.routes) == count
    assert [r.path for r in app.router.routes[:2]] == ["/v1/models", "/v1/chat/completions"]


def test_a_model_pinned_to_the_fallback_is_answered_there(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    with ApiServer(_both(corpus_store, local, cloud)) as api:
        raw = api.client().chat.completions.with_raw_response.create(
            model="fallback:gpt-cloud", messages=[{"role": "user", "content": QUESTION}]
        )
    text = raw.parse().choices[0].message.content
    assert raw.headers["x-rag-endpoint"] == "fallback"
    assert "_Answered by 'fallback' (gpt-cloud)" in text
    assert local.requests == [] and cloud.models_called == ["gpt-cloud"]


def test_a_stream_breaking_midway_keeps_its_text_and_ends_with_an_error_not_stop(
    corpus_store: Path, cloud: FakeOpenAI
) -> None:
    with FakeOpenAI(models=["phi-local"], reply=REPLY, break_after_tokens=3) as breaking:
        with ApiServer(offline_settings(corpus_store, llm_base_url=breaking.base_url)) as api:
            chunks = []
            stream = api.client().chat.completions.create(
                model="phi-local", messages=[{"role": "user", "content": QUESTION}], stream=True
            )
            # The SDK raises the stream's error event once the text before it is read.
            with pytest.raises(openai.APIError, match="The answer from") as err:
                for piece in stream:
                    chunks.append(piece)
            raw = httpx.post(f"{api.url}/v1/chat/completions", json=STREAMED, timeout=60).text
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Everyone gets 28 ")
    assert "[The answer stopped early: The answer from" in text
    assert "\n\nSources:\n[1] " in text  # cut off: every passage of the prompt
    assert all(c.choices[0].finish_reason != "stop" for c in chunks if c.choices)
    assert err.value.body["code"] == "stream_interrupted"
    last = _events(raw)[-1]
    assert last["error"]["code"] == "stream_interrupted" and last["rag"]["endpoint"] == "configured"
    assert raw.rstrip().endswith("data: [DONE]")


def test_a_citation_of_a_passage_without_its_words_is_moved_whole_and_noted_streamed(
    corpus_store: Path,
) -> None:
    # [1] is the handbook's sick-days passage; [2] says how much holiday everyone gets.
    miscited = "Everyone gets 28 days of paid holiday [1]."
    with (
        FakeOpenAI(models=["phi-local"], reply=miscited) as fake,
        ApiServer(offline_settings(corpus_store, llm_base_url=fake.base_url)) as api,
    ):
        whole = api.client().chat.completions.create(
            model="phi-local", messages=[{"role": "user", "content": QUESTION}]
        )
        raw = httpx.post(f"{api.url}/v1/chat/completions", json=STREAMED, timeout=60).text
    text = whole.choices[0].message.content or ""
    assert text.startswith("Everyone gets 28 days of paid holiday [2].\n\nSources:\n[2] ")
    deltas = [e["choices"][0]["delta"] for e in _events(raw) if e.get("choices")]
    streamed = "".join(d.get("content") or "" for d in deltas)
    assert streamed.startswith(miscited)  # as it streamed
    assert CITATIONS_MOVED_NOTE + "\n\nSources:\n[2] " in streamed
    assert CITATIONS_MOVED_NOTE not in text


def test_a_stream_cut_off_by_llm_timeout_ends_with_an_error_naming_it(corpus_store: Path) -> None:
    long_reply = " ".join(["Everyone gets 28 days of paid holiday [1]."] * 20)
    with FakeOpenAI(models=["phi-local"], reply=long_reply, token_delay_s=0.3) as trickling:
        settings = offline_settings(
            corpus_store, llm_base_url=trickling.base_url, llm_timeout_s=3.0
        )
        with ApiServer(settings) as api:
            chunks = []
            stream = api.client().chat.completions.create(
                model="phi-local", messages=[{"role": "user", "content": QUESTION}], stream=True
            )
            with pytest.raises(openai.APIError, match="LLM_TIMEOUT"):
                for piece in stream:
                    chunks.append(piece)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Everyone gets") and len(text) < len(long_reply)
    assert "[The answer stopped early:" in text
    assert all(c.choices[0].finish_reason != "stop" for c in chunks if c.choices)


def test_a_streamed_request_that_cannot_begin_raises_its_sentence(
    corpus_store: Path, local: FakeOpenAI, cloud: FakeOpenAI
) -> None:
    with ApiServer(_both(corpus_store, local, cloud, routing="local-only")) as api:
        stream = api.client().chat.completions.create(
            model="fallback:gpt-cloud",
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
        )
        with pytest.raises(openai.APIError, match="local-only") as err:
            list(stream)
    assert err.value.body["code"] == "local_only"
    assert cloud.requests == []


# --- browsers and foreign callers ---------------------------------------------------------


def test_a_web_page_on_another_origin_cannot_read_the_documents(
    corpus_store: Path, local: FakeOpenAI
) -> None:
    with ApiServer(offline_settings(corpus_store, llm_base_url=local.base_url)) as api:
        body = {"model": "phi-local", "messages": [{"role": "user", "content": QUESTION}]}
        for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
            refused = httpx.post(
                f"{api.url}/v1/chat/completions", json=body, headers={"Origin": origin}
            )
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "forbidden_origin"
        assert local.requests == []
        # The chat's own page and tools on this machine still get through.
        for origin in ("http://127.0.0.1:8000", "http://localhost:3000"):
            ok = httpx.get(f"{api.url}/v1/models", headers={"Origin": origin})
            assert ok.status_code == 200, ok.text


def test_a_foreign_host_name_is_refused_unless_an_api_key_guards_the_api(
    corpus_store: Path, local: FakeOpenAI
) -> None:
    # DNS rebinding: a page at rebind.example, whose name now resolves to 127.0.0.1,
    # sends same-origin requests with its own name in Host.
    rebound = {"Host": "rebind.example:8000"}
    with ApiServer(offline_settings(corpus_store, llm_base_url=local.base_url)) as api:
        refused = httpx.get(f"{api.url}/v1/models", headers=rebound)
        assert refused.status_code == 403
        assert "RAG_API_KEY" in refused.json()["error"]["message"]
        assert httpx.get(f"{api.url}/v1/models", headers={"Host": "localhost:8000"}).is_success
    keyed = offline_settings(corpus_store, llm_base_url=local.base_url, api_key="s3cret")
    with ApiServer(keyed) as api:
        ok = httpx.get(
            f"{api.url}/v1/models", headers={**rebound, "Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200, ok.text


def test_a_question_too_long_for_the_context_window_is_a_400_context_length_exceeded(
    corpus_store: Path, local: FakeOpenAI
) -> None:
    settings = offline_settings(
        corpus_store, llm_base_url=local.base_url, context_tokens=256, answer_tokens=128
    )
    long_question = "Please consider every detail of the holiday policy. " * 60
    with ApiServer(settings) as api, pytest.raises(openai.BadRequestError) as err:
        api.client().chat.completions.create(
            model="phi-local", messages=[{"role": "user", "content": long_question}]
        )
    assert err.value.status_code == 400
    assert err.value.code == "context_length_exceeded"
    assert "context window" in err.value.message
    assert local.requests == []


# --- malformed requests --------------------------------------------------------------


def test_a_lone_surrogate_or_json_nested_100k_deep_is_a_400_with_a_sentence_not_a_500(
    corpus_store: Path, local: FakeOpenAI
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    bodies = {
        "bad_unicode": (
            '{"model": "phi-local", "messages": [{"role": "user", "content": "Hi \\ud800"}]}'
        ),
        "bad_json": deep,
    }
    nested = '{"model": "phi-local", "messages": [{"role": "user", "content": %s}]}' % deep
    with ApiServer(offline_settings(corpus_store, llm_base_url=local.base_url)) as api:
        for code, body in [*bodies.items(), ("bad_json", nested)]:
            response = httpx.post(
                f"{api.url}/v1/chat/completions",
                content=body.encode(),
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 400, response.text[:300]
            error = response.json()["error"]
            assert error["code"] == code and error["message"].endswith("."), error
    assert local.requests == []


def test_a_question_of_only_nul_bytes_or_control_characters_is_a_400_the_question_is_empty(
    corpus_store: Path, local: FakeOpenAI
) -> None:
    with ApiServer(offline_settings(corpus_store, llm_base_url=local.base_url)) as api:
        for blank in ("\x00\x00\x00", "\x01\x02\x1f\x7f", " \x00\t\n\x00 ", "\x9b"):
            with pytest.raises(openai.BadRequestError) as err:
                api.client().chat.completions.create(
                    model="phi-local", messages=[{"role": "user", "content": blank}]
                )
            assert err.value.code == "empty_question"
            assert "The question is empty" in err.value.message
        # A real question keeps its words once the stray NULs are gone.
        api.client().chat.completions.create(
            model="phi-local", messages=[{"role": "user", "content": f"\x00{QUESTION}\x00"}]
        )
    assert len(local.requests) == 1
    assert local.requests[0]["messages"][-1]["content"].endswith(QUESTION)


def test_a_withdrawn_guess_ends_with_why_and_not_covered_streamed_or_whole(
    corpus_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The draft of a model whose answers are judged has streamed when it is withdrawn: the
    stream ends with the reason; a whole response carries the reply that stands instead."""
    monkeypatch.setattr("rag.answer.style_for", lambda _: replace(FULL, withdraw_guesses=True))
    with FakeOpenAI(models=["m"], reply="Export them with --holiday-export [1].") as fake:
        with ApiServer(offline_settings(corpus_store, llm_base_url=fake.base_url)) as api:
            asked = [{"role": "user", "content": QUESTION}]
            stream = api.client().chat.completions.create(model="m", messages=asked, stream=True)
            chunks = list(stream)
            whole = api.client().chat.completions.create(model="m", messages=asked)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    draft, note = streamed.split("\n\n[", 1)
    assert draft == "Export them with --holiday-export [1]."
    assert note.startswith("The model's answer named `--holiday-export`")
    assert f"{NOT_COVERED}]" in note and "Closest matches" in note
    text = whole.choices[0].message.content
    assert text.startswith(f"{NOT_COVERED}\n\nThe model's answer named `--holiday-export`")
    assert "--holiday-export [1]" not in text
