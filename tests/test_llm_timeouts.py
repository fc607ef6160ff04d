"""The model-server deadlines, against real servers on loopback that trickle, hang or refuse.

- a trickling server: tests.fake_openai.FakeOpenAI with a delay between tokens;
- a hanging server (:class:`HangingServer`): accepts TCP connections, reads the
  request and never answers, as an overloaded or stuck model server does;
- a refusing address: a free loopback port nobody listens on.

Deadlines are sub-second through the settings, so the suite stays fast.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag.answer import AnswerDone, answer
from rag.errors import EndpointSilent, EndpointUnavailable, StreamInterrupted
from rag.llm import Endpoint, list_models, stream_chat
from rag.routing import DEFAULT_START_HINT
from rag.settings import Settings
from tests.fake_openai import FakeOpenAI
from tests.support import free_port, make_settings, offline_settings, with_fallback

QUESTION = "How many days of paid holiday does everyone get?"
HELLO = [{"role": "user", "content": "hello"}]


class HangingServer:
    """Accepts connections on loopback, reads what arrives, and never sends a byte back."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            conn.setblocking(False)  # read nothing back; just keep the connection open
            self._held.append(conn)
            self.accepted += 1

    def __enter__(self) -> HangingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._listener.close()


@pytest.fixture
def hanging() -> Iterator[HangingServer]:
    with HangingServer() as server:
        yield server


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return make_settings(tmp_path, **overrides)


async def _collect(endpoint: Endpoint, settings: Settings, model: str = "fake-model") -> str:
    return "".join([t async for t in stream_chat(endpoint, HELLO, model=model, settings=settings)])


async def test_a_server_trickling_tokens_is_cut_off_at_the_total_deadline(
    tmp_path: Path,
) -> None:
    # One token every 0.5 s never trips a per-read timeout of 3 s; the answer's deadline must.
    # (3 s, not less: on a loaded machine the first token alone may take a second.)
    reply = " ".join(f"word{n}" for n in range(30))
    settings = _settings(tmp_path, llm_timeout_s=3.0, llm_first_token_timeout_s=3.0)
    with FakeOpenAI(reply=reply, token_delay_s=0.5) as fake:
        started = time.monotonic()
        with pytest.raises(StreamInterrupted) as err:
            await _collect(Endpoint("trickle", fake.base_url), settings)
        elapsed = time.monotonic() - started
    assert 2.9 < elapsed < 6.0, elapsed
    assert err.value.partial.startswith("word0 word1 ")
    assert len(err.value.partial.split()) < 30
    assert "LLM_TIMEOUT" in str(err.value) and fake.base_url in str(err.value)


async def test_a_slow_first_token_within_the_wait_still_gets_the_whole_answer(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, llm_timeout_s=5.0, llm_first_token_timeout_s=1.0)
    with FakeOpenAI(reply="All of it [1].", first_token_delay_s=0.4, token_delay_s=0.1) as fake:
        assert await _collect(Endpoint("slow", fake.base_url), settings) == "All of it [1]."


async def test_a_server_that_accepts_and_never_answers_is_told_as_silent_not_absent(
    tmp_path: Path, hanging: HangingServer
) -> None:
    settings = _settings(tmp_path, llm_timeout_s=30.0, llm_first_token_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(EndpointSilent) as err:
        await _collect(Endpoint("hung", hanging.base_url), settings)
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 3.0, elapsed
    assert hanging.accepted == 1
    message = str(err.value)
    assert message.startswith(
        f"The model server at {hanging.base_url} accepted the request but sent nothing for 0.5 s"
    )
    assert "LLM_FIRST_TOKEN_TIMEOUT" in message
    assert "No model server answered" not in message


async def test_a_server_that_sends_headers_but_no_text_is_told_as_silent(
    tmp_path: Path,
) -> None:
    # The response headers arrive at once; the first chunk would come after 5 s.
    settings = _settings(tmp_path, llm_timeout_s=30.0, llm_first_token_timeout_s=0.5)
    with FakeOpenAI(first_token_delay_s=5.0) as fake:
        started = time.monotonic()
        with pytest.raises(EndpointSilent) as err:
            await _collect(Endpoint("mute", fake.base_url), settings)
    assert time.monotonic() - started < 3.0
    assert f"{fake.base_url} accepted the request but sent nothing for 0.5 s" in str(err.value)


async def test_a_first_token_wait_longer_than_the_total_names_llm_timeout(
    tmp_path: Path, hanging: HangingServer
) -> None:
    settings = _settings(tmp_path, llm_timeout_s=0.4, llm_first_token_timeout_s=60.0)
    with pytest.raises(EndpointSilent) as err:
        await _collect(Endpoint("hung", hanging.base_url), settings)
    assert "sent nothing for 0.4 s" in str(err.value)
    assert "Raise LLM_TIMEOUT (now 0.4 s)" in str(err.value)


async def test_a_refused_connection_still_says_no_model_server_answered(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    settings = _settings(tmp_path, llm_first_token_timeout_s=0.5)
    with pytest.raises(EndpointUnavailable) as err:
        await _collect(Endpoint("nobody", url), settings)
    assert not isinstance(err.value, EndpointSilent)
    assert str(err.value).startswith(f"No model server answered at {url}")


async def test_listing_models_of_a_hanging_server_gives_up_after_the_first_token_wait(
    tmp_path: Path, hanging: HangingServer
) -> None:
    settings = _settings(tmp_path, llm_timeout_s=30.0, llm_first_token_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(EndpointSilent):
        await list_models(Endpoint("hung", hanging.base_url), settings)
    assert time.monotonic() - started < 3.0


async def test_a_silent_local_server_falls_back_to_the_cloud_in_local_first(
    corpus_store: Path, hanging: HangingServer
) -> None:
    with FakeOpenAI(models=["gpt-cloud"], reply="Cloud says 28 days [1].") as cloud:
        settings = with_fallback(
            corpus_store,
            hanging.base_url,
            cloud.base_url,
            "gpt-cloud",
            llm_model="phi-local",
            llm_first_token_timeout_s=0.5,
        )
        done = [e async for e in answer(QUESTION, settings) if isinstance(e, AnswerDone)][0]
    assert done.route is not None and done.route.endpoint.name == "fallback"
    assert done.text == "Cloud says 28 days [1]."
    assert hanging.accepted >= 1


async def test_a_silent_local_server_in_local_only_says_what_happened(
    corpus_store: Path, hanging: HangingServer
) -> None:
    settings = offline_settings(
        corpus_store,
        llm_base_url=hanging.base_url,
        llm_model="phi-local",
        routing="local-only",
        llm_first_token_timeout_s=0.5,
    )
    with pytest.raises(EndpointSilent) as err:
        async for _ in answer(QUESTION, settings):
            pass
    message = str(err.value)
    assert f"{hanging.base_url} accepted the request but sent nothing for 0.5 s" in message
    assert "No model server answered" not in message
    assert DEFAULT_START_HINT not in message


def test_the_first_token_wait_is_read_from_llm_first_token_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_FIRST_TOKEN_TIMEOUT", "7.5")
    assert Settings(_env_file=None).llm_first_token_timeout_s == 7.5
    monkeypatch.delenv("LLM_FIRST_TOKEN_TIMEOUT")
    assert Settings(_env_file=None).llm_first_token_timeout_s == 60.0


def test_a_streamed_api_client_sees_the_stream_open_while_the_server_hangs(
    corpus_store: Path, hanging: HangingServer
) -> None:
    from tests.api_server import ApiServer

    settings = offline_settings(
        corpus_store,
        llm_base_url=hanging.base_url,
        llm_model="phi-local",
        routing="local-only",
        llm_first_token_timeout_s=3.0,
    )
    question = [{"role": "user", "content": QUESTION}]
    body = {"model": "phi-local", "stream": True, "messages": question}
    with ApiServer(settings) as api:
        started = time.monotonic()
        url = f"{api.url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=60) as response:
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            opened = json.loads(next(lines)[len("data: ") :])
            opened_after = time.monotonic() - started
            rest = list(lines)
        ended_after = time.monotonic() - started
    assert opened["choices"][0]["delta"]["role"] == "assistant"
    # Listing its models and then the answer each wait 3 s; the stream opened before either.
    assert opened_after < 2.0 and ended_after >= 5.0, (opened_after, ended_after)
    text = "".join(
        c["delta"].get("content") or ""
        for line in rest
        if line != "data: [DONE]"
        for c in json.loads(line[len("data: ") :]).get("choices", [])
    )
    assert f"{hanging.base_url} accepted the request but sent nothing for 3 s" in text
