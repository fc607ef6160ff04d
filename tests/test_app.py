"""The chat app's handlers, awaited directly in a mocked Chainlit context.

Everything else is real: a store ingested by the real pipeline from a small
multi-format corpus, hybrid retrieval with the ONNX embedder, the prompt builder,
the openai SDK, and an OpenAI-compatible fake server on loopback that logs every
request it receives (it stands in for Foundry Local / Ollama).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import chainlit as cl
import pytest

import app
from ingest.pipeline import ingest
from rag.prompt import CONTEXT_HEAD, FULL_PASSAGES, build_prompt, estimate_tokens, token_counter
from rag.retrieve import retrieve
from rag.settings import Settings, get_settings
from tests.chat_session import ChatSession
from tests.support import MODELS_DIR, REPO, make_settings
from tests.corpus import build_corpus
from tests.fake_openai import FakeOpenAI
from tests.foundry_fake import install_fake_foundry

MODELS = ["phi-4-mini-fake", "qwen-2.5-fake"]
HOLIDAYS = "How many days of paid holiday do employees get?"
REPLY = "Employees get 28 days of paid holiday a year [1]."

@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """Point the app's settings (read from the environment, as in production) at a test store."""

    def apply(root: Path, base_url: str, **env: object) -> Settings:
        monkeypatch.setenv("RAG_DOCS_DIR", str(root / "docs"))
        monkeypatch.setenv("RAG_DATA_DIR", str(root / "data"))
        monkeypatch.setenv("RAG_MODELS_DIR", str(MODELS_DIR))
        monkeypatch.setenv("LLM_BASE_URL", base_url)
        for name, value in env.items():
            monkeypatch.setenv(name, str(value))
        get_settings.cache_clear()
        return get_settings()

    yield apply
    get_settings.cache_clear()


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=list(MODELS), reply=REPLY) as server:
        yield server


def user_content(request: dict) -> str:
    return request["messages"][-1]["content"]


def history_of(request: dict) -> list[dict]:
    """The messages between the system prompt and the final user message."""
    return request["messages"][1:-1]


def sidebars(chat: ChatSession) -> list[dict]:
    """The sidebar contents the app set, in order."""
    return [data for event, data in chat.events if event == "set_sidebar_elements"]


def passages_in(request: dict) -> int:
    return len(re.findall(r"^\[\d+\] \(", user_content(request), flags=re.MULTILINE))


# --- start of a chat -----------------------------------------------------------------------


async def test_picker_lists_the_servers_models_with_the_first_preselected(
    corpus_store: Path, fake: FakeOpenAI, app_env: Callable[..., Settings]
) -> None:
    app_env(corpus_store, fake.base_url)
    async with ChatSession() as chat:
        await app.on_chat_start()

        (picker,) = chat.chat_settings()
        assert picker["id"] == "model" and picker["type"] == "select"
        assert [item["value"] for item in picker["items"]] == MODELS
        assert picker["initial"] == "phi-4-mini-fake"
        welcome = chat.last_answer().output
        assert "Ask" in welcome and "drop" in welcome and str(corpus_store / "docs") in welcome
        assert fake.base_url in welcome


async def test_picker_preselects_llm_model_when_the_server_lists_it(
    corpus_store: Path, fake: FakeOpenAI, app_env: Callable[..., Settings]
) -> None:
    app_env(corpus_store, fake.base_url, LLM_MODEL="qwen-2.5-fake")
    async with ChatSession() as chat:
        await app.on_chat_start()
        assert chat.chat_settings()[0]["initial"] == "qwen-2.5-fake"


# --- answering -------------------------------------------------------------------------------


async def test_answer_is_grounded_with_the_context_ahead_of_the_question_and_shows_sources(
    corpus_store: Path, fake: FakeOpenAI, app_env: Callable[..., Settings]
) -> None:
    app_env(corpus_store, fake.base_url)
    async with ChatSession() as chat:
        await app.on_chat_start()
        await chat.send(app.on_message, HOLIDAYS)

        (request,) = fake.requests
        assert request["model"] == "phi-4-mini-fake" and request["stream"] is True
        system, user = request["messages"]
        assert system["role"] == "system" and "using only the numbered context" in system["content"]
        content = user["content"]
        assert content.startswith(f"{CONTEXT_HEAD}\n[1] (")
        assert content.endswith(f"\n\nQuestion: {HOLIDAYS}")
        assert content.index("28 days of paid holiday") < content.index("Question:")

        (step,) = chat.steps("retrieval")
        assert "handbook.md" in step.output
        step_dicts = [d for e, d in chat.events if e == "new_message" and d["id"] == step.id]
        assert step_dicts[0]["defaultOpen"] is False  # collapsed until the user opens it

        answer = chat.last_answer()
        assert len(chat.streamed_tokens(answer.id)) > 3  # streamed token by token
        assert answer.output.startswith(REPLY)
        assert "**Sources:** [1] handbook.md" in answer.output
        # The passages behind the answer, with their full text, open in the sidebar.
        (sidebar,) = sidebars(chat)
        assert sidebar["key"] == answer.id
        names = [e["name"] for e in sidebar["elements"]]
        assert names == ["[1] handbook.md"]  # the answer cites only [1]: the others stay out
        (text,) = [chat.element_text(e) for e in sidebar["elements"]]
        assert text.startswith("**[1] handbook.md**")
        # The cited passage is the prompt's [1], its full text with supporting sentences bold.
        cited = re.search(r"^\[1\] \(handbook\.md\) (.+)$", content, flags=re.MULTILINE)
        assert cited is not None and cited.group(1)[:60] in text.replace("**", "")


async def test_pdf_sources_name_the_page(
    corpus_store: Path, fake: FakeOpenAI, app_env: Callable[..., Settings]
) -> None:
    app_env(corpus_store, fake.base_url)
    async with ChatSession() as chat:
        await app.on_chat_start()
        await chat.send(app.on_message, "What is the maximum load of the Tidewater 12 kayak?")
        assert "tidewater-12-manual.pdf, page 1" in chat.last_answer().output


async def test_switching_the_model_applies_to_the_next_message_and_keeps_the_history(
    corpus_store: Path, fake: FakeOpenAI, app_env: Callable[..., Settings]
) -> None:
    app_env(corpus_store, fake.base_url)
    async with ChatSession() as chat:
        await app.on_chat_start()
        await chat.send(app.on_message, HOLIDAYS)
        await app.on_settings_update({"model": "qwen-2.5-fake"})
        await chat.send(app.on_message, "And how many of them carry over?")

        assert fake.models_called == ["phi-4-mini-fake", "qwen-2.5-fake"]
        assert history_of(fake.requests[1]) == [
            {"role": "user", "content": HOLIDAYS},
            {"role": "assistant", "content": REPLY},
        ]
        # Each answer replaces the sidebar's sources with its own: nothing piles up.
        answers = [a for a in chat.answers() if a.output.startswith(REPLY)]
        first, second = sidebars(chat)
        assert [first["key"], second["key"]] == [a.id for a in answers]
        assert len(second["elements"]) == 1  # REPLY cites [1] only
        assert not {e["id"] for e in first["elements"]} & {e["id"] for e in second["elements"]}
        assert all(not a.elements for a in chat.answers())  # none attached to messages


async def test_a_small_window_drops_weak_passages_then_history_and_never_exceeds_the_budget(
    corpus_store: Path, app_env: Callable[..., Settings]
) -> None:
    long_reply = "Holidays are explained in the handbook [1]. " + "More detail follows here. " * 40
    with FakeOpenAI(models=list(MODELS), reply=long_reply) as server:
        settings = app_env(corpus_store, server.base_url)
        counter = token_counter(settings)
        hits = retrieve(HOLIDAYS, settings=settings)
        no_history = estimate_tokens(HOLIDAYS, hits, settings=settings)
        turn = [{"role": "user", "content": HOLIDAYS}, {"role": "assistant", "content": long_reply}]
        one_turn = counter.count_messages(turn)
        # Room for the best three passages plus one earlier turn, not two.
        window = no_history + one_turn + one_turn // 2 + settings.answer_tokens
        settings = app_env(corpus_store, server.base_url, RAG_CONTEXT_TOKENS=window)

        async with ChatSession() as chat:
            await app.on_chat_start()
            for _ in range(3):
                await chat.send(app.on_message, HOLIDAYS)

        first, second, third = server.requests
        assert [len(history_of(r)) for r in (first, second, third)] == [0, 2, 2]
        # Weak passages went before the conversation; the best three stayed.
        assert passages_in(first) >= FULL_PASSAGES
        assert [passages_in(r) for r in (second, third)] == [FULL_PASSAGES] * 2
        for request in server.requests:
            assert counter.count_messages(request["messages"]) <= window - settings.answer_tokens
            assert request["max_tokens"] == settings.answer_tokens
        assert "2 earlier message(s) were left out" in chat.last_answer().output


async def test_a_tighter_window_drops_all_history_then_the_lowest_ranked_passages(
    corpus_store: Path, app_env: Callable[..., Settings]
) -> None:
    long_reply = "See the handbook [1]. " + "Detail. " * 60
    with FakeOpenAI(models=list(MODELS), reply=long_reply) as server:
        settings = app_env(corpus_store, server.base_url)
        hits = retrieve(HOLIDAYS, settings=settings)
        top_two = build_prompt(HOLIDAYS, hits[:2], settings=settings).tokens
        window = top_two + 20 + settings.answer_tokens  # two passages fit, the third does not
        settings = app_env(corpus_store, server.base_url, RAG_CONTEXT_TOKENS=window)

        async with ChatSession() as chat:
            await app.on_chat_start()
            await chat.send(app.on_message, HOLIDAYS)
            await chat.send(app.on_message, HOLIDAYS)

        counter = token_counter(settings)
        for request in server.requests:
            assert history_of(request) == []
            assert 2 <= passages_in(request) < len(hits)
            assert counter.count_messages(request["messages"]) <= window - settings.answer_tokens
        assert "[1] (handbook.md" in user_content(server.requests[0])  # the best one stays
        assert "passage(s) and 2 earlier message(s) were left out" in chat.last_answer().output


# --- errors ------------------------------------------------------------------------------------


async def test_a_stream_broken_midway_keeps_the_partial_answer_and_adds_a_note(
    corpus_store: Path, app_env: Callable[..., Settings]
) -> None:
    with FakeOpenAI(models=list(MODELS), reply=REPLY, break_after_tokens=3) as server:
        app_env(corpus_store, server.base_url)
        async with ChatSession() as chat:
            await app.on_chat_start()
            await chat.send(app.on_message, HOLIDAYS)

            answer = chat.last_answer()
            assert answer.output.startswith("Employees get 28 ")
            assert "stopped before it was complete" in answer.output
            assert "incomplete" in answer.output and "Traceback" not in answer.output


async def test_a_dead_endpoint_is_a_sentence_naming_the_url_and_what_to_start(
    corpus_store: Path, app_env: Callable[..., Settings]
) -> None:
    server = FakeOpenAI(models=list(MODELS)).start()
    server.stop()  # nothing listens on its port any more
    app_env(corpus_store, server.base_url)
    async with ChatSession() as chat:
        await app.on_chat_start()
        start_text = chat.last_answer().output
        await chat.send(app.on_message, HOLIDAYS)
        answer_text = chat.last_answer().output

    for text in (start_text, answer_text):
        assert f"No model server answered at {server.base_url}" in text
        assert "foundry model run phi-4-mini" in text and "LLM_BASE_URL" in text
        assert "Traceback" not in text


async def test_a_server_that_rejects_the_request_is_a_sentence_naming_model_and_reason(
    corpus_store: Path, fake: FakeOpenAI, app_env: Callable[..., Settings]
) -> None:
    app_env(corpus_store, fake.base_url)
    async with ChatSession() as chat:
        await app.on_chat_start()
        fake.models.remove("phi-4-mini-fake")  # unloaded on the server after the chat started
        await chat.send(app.on_message, HOLIDAYS)

        text = chat.last_answer().output
        assert text.startswith(f"The model server at {fake.base_url} rejected the request")
        assert "'phi-4-mini-fake'" in text and "HTTP 404" in text and "not found" in text


async def test_an_endpoint_that_dies_mid_session_is_reported_on_the_next_question(
    corpus_store: Path, app_env: Callable[..., Settings]
) -> None:
    server = FakeOpenAI(models=list(MODELS), reply=REPLY).start()
    app_env(corpus_store, server.base_url)
    async with ChatSession() as chat:
        await app.on_chat_start()
        await chat.send(app.on_message, HOLIDAYS)
        server.stop()
        await chat.send(app.on_message, "And how many carry over?")
        assert chat.last_answer().output.startswith(
            f"No model server answered at {server.base_url}"
        )


async def test_an_empty_store_tells_the_user_to_add_files_and_how(
    tmp_path: Path, fake: FakeOpenAI, app_env: Callable[..., Settings]
) -> None:
    (tmp_path / "docs").mkdir()
    app_env(tmp_path, fake.base_url)
    async with ChatSession() as chat:
        await app.on_chat_start()
        await chat.send(app.on_message, HOLIDAYS)

        text = chat.last_answer().output
        assert "knowledge base is empty" in text
        assert "python -m ingest" in text and "drop a file into the chat" in text
        assert fake.requests == []  # nothing is asked without documents


# --- uploads -----------------------------------------------------------------------------------


async def test_an_upload_is_saved_safely_ingested_and_then_answers_questions(
    tmp_path: Path, fake: FakeOpenAI, app_env: Callable[..., Settings]
) -> None:
    root = tmp_path / "kb"
    corpus = build_corpus(tmp_path / "corpus")
    (root / "docs").mkdir(parents=True)
    shutil.copy(corpus / "handbook.md", root / "docs" / "handbook.md")
    settings = app_env(root, fake.base_url)
    ingest(settings)

    first = tmp_path / "upload-1"
    first.write_text(
        "# Launch plan\n\nThe secret launch code word is PELICAN-42.\n", encoding="utf-8"
    )
    clash = tmp_path / "upload-2"
    clash.write_text(
        "# Other plan\n\nA different file that happens to share the name.\n", encoding="utf-8"
    )
    hostile_name = "../../Launch Plan.md"

    async with ChatSession() as chat:
        await app.on_chat_start()
        await chat.send(
            app.on_message, "", [cl.File(name=hostile_name, path=str(first), mime="text/markdown")]
        )
        added = chat.last_answer().output
        await chat.send(
            app.on_message,
            "",
            [cl.File(name="Launch Plan.md", path=str(clash), mime="text/markdown")],
        )
        renamed = chat.last_answer().output
        await chat.send(app.on_message, "What is the secret launch code word?")

    saved = root / "docs" / "Launch Plan.md"
    assert saved.read_text(encoding="utf-8") == first.read_text(encoding="utf-8")
    assert (root / "docs" / "Launch Plan-2.md").read_text(encoding="utf-8") == clash.read_text(
        encoding="utf-8"
    )
    assert not (tmp_path / "Launch Plan.md").exists()  # the ../ went nowhere
    assert "Added Launch Plan.md" in added and "searchable now" in added
    assert "as Launch Plan-2.md" in renamed and "different file already had that name" in renamed

    hits = retrieve("secret launch code word", settings=get_settings())
    assert hits[0].source == "Launch Plan.md"
    assert "PELICAN-42" in user_content(fake.requests[-1])
    assert "Launch Plan.md" in chat.last_answer().output


async def test_unsupported_and_oversized_uploads_are_refused_with_a_sentence(
    tmp_path: Path, fake: FakeOpenAI, app_env: Callable[..., Settings]
) -> None:
    (tmp_path / "docs").mkdir()
    app_env(tmp_path, fake.base_url, RAG_UPLOAD_MAX_MB=0.001)
    program = tmp_path / "tool.exe"
    program.write_bytes(b"MZ" + b"\0" * 100)
    big = tmp_path / "big.txt"
    big.write_text("word " * 1000, encoding="utf-8")

    async with ChatSession() as chat:
        await app.on_chat_start()
        await chat.send(
            app.on_message,
            "",
            [
                cl.File(name="tool.exe", path=str(program), mime="application/octet-stream"),
                cl.File(name="big.txt", path=str(big), mime="text/plain"),
            ],
        )
        text = chat.last_answer().output

    assert "tool.exe was not added: .exe cannot be read" in text
    assert "big.txt was not added: it is 0.0 MB and the limit is 0.001 MB" in text
    assert list((tmp_path / "docs").iterdir()) == []


# --- routing and comparison ----------------------------------------------------------------------


async def test_when_local_dies_the_fallback_answers_and_the_answer_says_so(
    corpus_store: Path, app_env: Callable[..., Settings]
) -> None:
    local = FakeOpenAI(models=list(MODELS), reply=REPLY).start()
    with FakeOpenAI(models=["cloud-model"], reply="From the cloud [1].") as cloud:
        app_env(
            corpus_store,
            local.base_url,
            LLM_FALLBACK_BASE_URL=cloud.base_url,
            LLM_FALLBACK_MODEL="cloud-model",
        )
        async with ChatSession() as chat:
            await app.on_chat_start()
            values = [item["value"] for item in chat.chat_settings()[0]["items"]]
            assert values == [*MODELS, "fallback:cloud-model"]  # pickable, pinned to its endpoint

            await chat.send(app.on_message, HOLIDAYS)
            assert "Answered by" not in chat.last_answer().output  # the local default answered
            local.stop()
            await chat.send(app.on_message, "And how many carry over?")

            answer = chat.last_answer().output
            assert answer.startswith("From the cloud [1].")
            assert "Answered by `cloud-model` at fallback" in answer
            assert cloud.models_called == ["cloud-model"]
            # The fallback got the conversation too, with the context ahead of the question.
            assert history_of(cloud.requests[0])[0] == {"role": "user", "content": HOLIDAYS}


async def test_with_no_local_server_at_start_the_fallback_is_offered_and_answers(
    corpus_store: Path, app_env: Callable[..., Settings]
) -> None:
    dead = FakeOpenAI(models=list(MODELS))  # bound but never started: nothing answers there
    dead.stop()
    with FakeOpenAI(models=["cloud-model"], reply="From the cloud [1].") as cloud:
        app_env(
            corpus_store,
            dead.base_url,
            LLM_FALLBACK_BASE_URL=cloud.base_url,
            LLM_FALLBACK_MODEL="cloud-model",
        )
        async with ChatSession() as chat:
            await app.on_chat_start()
            values = [item["value"] for item in chat.chat_settings()[0]["items"]]
            assert values == ["fallback:cloud-model"]
            await chat.send(app.on_message, HOLIDAYS)
            answer = chat.last_answer().output
            assert answer.startswith("From the cloud [1].")
            assert "Answered by `cloud-model` at fallback" in answer
            assert cloud.models_called == ["cloud-model"]


async def test_compare_command_streams_two_models_on_the_same_passages_with_timings(
    corpus_store: Path, fake: FakeOpenAI, app_env: Callable[..., Settings]
) -> None:
    app_env(corpus_store, fake.base_url)
    async with ChatSession() as chat:
        await app.on_chat_start()
        await chat.send(app.on_message, f"/compare phi-4-mini-fake qwen-2.5-fake {HOLIDAYS}")

        assert sorted(fake.models_called) == sorted(MODELS)
        first, second = fake.requests
        assert user_content(first) == user_content(second)  # the very same context and question
        assert user_content(first).endswith(f"Question: {HOLIDAYS}")
        message = chat.last_answer()
        assert message.output.startswith("Comparing `phi-4-mini-fake` and `qwen-2.5-fake`")
        assert "**Sources (the same for every model):** [1] " in message.output
        # One panel with a column per model, side by side, repainted as the answers came in.
        (panel,) = [e for e in message.elements if e["name"] == "Compare"]
        columns = panel["props"]["columns"]
        assert [c["model"] for c in columns] == MODELS
        for column in columns:
            assert column["status"] == "done" and column["text"] == REPLY
            assert "TTFT" in column["figures"] and "tokens/s" in column["figures"]
        repaints = [d for e, d in chat.events if e == "element" and d["id"] == panel["id"]]
        assert len(repaints) >= 4  # created, each model started, each model done
        assert len(chat.steps("retrieval")) == 1  # one search for both models


async def test_compare_without_two_models_explains_its_usage(
    corpus_store: Path, fake: FakeOpenAI, app_env: Callable[..., Settings]
) -> None:
    app_env(corpus_store, fake.base_url)
    async with ChatSession() as chat:
        await app.on_chat_start()
        await chat.send(app.on_message, "/compare phi-4-mini-fake")
        assert chat.last_answer().output.startswith(
            "Usage: `/compare MODEL_A MODEL_B your question`"
        )
        assert fake.requests == []


async def test_with_no_server_configured_the_embedded_model_answers_and_says_it_is_small(
    corpus_store: Path, app_env: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.catalog import model_catalog
    from rag.embedded_llm.process import shared_engine
    from rag.prompt import COMPACT, style_for
    from rag.web.chat_text import SMALL_MODEL_NOTICE

    app_env(corpus_store, "", RAG_ANSWER_TOKENS=40)
    monkeypatch.delenv("LLM_BASE_URL")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no Foundry Local here
    get_settings.cache_clear()
    async with ChatSession() as chat:
        await app.on_chat_start()
        welcome = chat.last_answer().output
        assert SMALL_MODEL_NOTICE in welcome and "foundry model run phi-4-mini" in welcome
        engine = shared_engine(get_settings())
        assert engine.endpoint is not None and engine.info is not None
        model = engine.info.id
        (picker,) = chat.chat_settings()
        assert picker["initial"] == model  # the embedded model's own id is picked
        assert model in [item["value"] for item in picker["items"]]
        assert f"Answering with `{model}`" in welcome

        await chat.send(app.on_message, HOLIDAYS)
        answer = chat.last_answer()
        assert len(chat.streamed_tokens(answer.id)) > 1  # the real model streamed something
        # Sources are what it cites; a tiny model often cites nothing, and then says so, or
        # makes up a value, and then its answer is withdrawn with the closest passages shown.
        said = ("**Sources:**", "cites no passage", "so it was withdrawn")
        assert any(sentence in answer.output for sentence in said), answer.output
        # The answer went to the engine, a small model that gets the compact prompt.
        local = await model_catalog(get_settings()).local()
        assert local.endpoint == engine.endpoint and style_for(local) is COMPACT


async def test_after_foundry_restarts_on_a_new_port_the_next_message_finds_it_again(
    corpus_store: Path, app_env: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    port_file = corpus_store.parent / "foundry-port"
    install_fake_foundry(
        corpus_store.parent / "bin",
        monkeypatch,
        f'echo "🟢 Model management service is running on '
        f'http://127.0.0.1:$(cat {port_file})/openai/status"\n',
    )
    ids = ["Phi-4-mini-instruct-generic-cpu"]
    first = FakeOpenAI(models=ids, reply=REPLY).start()
    port_file.write_text(str(first.port))
    app_env(corpus_store, "")
    monkeypatch.delenv("LLM_BASE_URL")
    get_settings.cache_clear()
    async with ChatSession() as chat:
        await app.on_chat_start()
        assert chat.chat_settings()[0]["initial"] == "Phi-4-mini-instruct-generic-cpu"
        first.stop()  # Foundry Local restarts ...
        await chat.send(app.on_message, HOLIDAYS)
        assert chat.last_answer().output.startswith(f"No model server answered at {first.base_url}")
        assert "foundry model run phi-4-mini" in chat.last_answer().output

        with FakeOpenAI(models=ids, reply=REPLY) as second:  # ... on another port
            port_file.write_text(str(second.port))
            await chat.send(app.on_message, HOLIDAYS)
            assert chat.last_answer().output.startswith(REPLY)
            assert second.models_called == ["Phi-4-mini-instruct-generic-cpu"]


async def test_after_the_fallback_answered_for_a_stopped_foundry_the_next_message_finds_it_again(
    corpus_store: Path, app_env: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    port_file = corpus_store.parent / "foundry-port-fallback"
    install_fake_foundry(
        corpus_store.parent / "bin-fallback",
        monkeypatch,
        f'echo "🟢 Model management service is running on '
        f'http://127.0.0.1:$(cat {port_file})/openai/status"\n',
    )
    ids = ["Phi-4-mini-instruct-generic-cpu", "qwen2.5-0.5b-instruct-generic-cpu"]
    first = FakeOpenAI(models=ids, reply=REPLY).start()
    port_file.write_text(str(first.port))
    with FakeOpenAI(models=["cloud-model"], reply="From the cloud [1].") as cloud:
        app_env(
            corpus_store,
            "",
            LLM_FALLBACK_BASE_URL=cloud.base_url,
            LLM_FALLBACK_MODEL="cloud-model",
            RAG_CONTEXT_TOKENS=8192,  # the history fits locally: only "down" reroutes
        )
        monkeypatch.delenv("LLM_BASE_URL")
        get_settings.cache_clear()
        async with ChatSession() as chat:
            await app.on_chat_start()
            await app.on_settings_update({"model": ids[1]})  # the user's pick
            first.stop()  # Foundry Local stops: the fallback answers meanwhile ...
            await chat.send(app.on_message, HOLIDAYS)
            assert chat.last_answer().output.startswith("From the cloud [1].")

            with FakeOpenAI(models=ids, reply=REPLY) as second:  # ... and it is back elsewhere
                port_file.write_text(str(second.port))
                await chat.send(app.on_message, HOLIDAYS)
                assert chat.last_answer().output.startswith(REPLY)
                assert "Answered by" not in chat.last_answer().output
                assert second.models_called == [ids[1]]  # the pick survived rediscovery
                assert cl.user_session.get("model") == ids[1]
        assert cloud.models_called == ["cloud-model"]


async def test_compare_is_offered_when_the_chat_starts_on_the_fallback_only(
    corpus_store: Path, app_env: Callable[..., Settings]
) -> None:
    dead = FakeOpenAI(models=list(MODELS))
    dead.stop()
    with FakeOpenAI(models=["cloud-model"], reply="From the cloud [1].") as cloud:
        app_env(
            corpus_store,
            dead.base_url,
            LLM_FALLBACK_BASE_URL=cloud.base_url,
            LLM_FALLBACK_MODEL="cloud-model",
        )
        async with ChatSession() as chat:
            await app.on_chat_start()
            commands = [data for event, data in chat.events if event == "set_commands"]
            assert [c["id"] for c in commands[-1]] == ["compare"]


async def test_compare_with_the_same_model_twice_explains_its_usage(
    corpus_store: Path, fake: FakeOpenAI, app_env: Callable[..., Settings]
) -> None:
    app_env(corpus_store, fake.base_url)
    async with ChatSession() as chat:
        await app.on_chat_start()
        await chat.send(app.on_message, f"/compare phi-4-mini-fake phi-4-mini-fake {HOLIDAYS}")
        assert "only once" in chat.last_answer().output
        assert fake.requests == []


def test_the_upload_limit_comes_from_settings_only(tmp_path: Path) -> None:
    from chainlit.config import config
    from rag.web.chat_ui import apply_upload_limit

    upload = config.features.spontaneous_file_upload
    assert upload is not None
    before = upload.max_size_mb
    try:
        apply_upload_limit(make_settings(tmp_path, upload_max_mb=7.5))
        assert upload.max_size_mb == 8  # whole MB for the browser; the server checks 7.5
    finally:
        upload.max_size_mb = before
    chainlit_toml = (REPO / ".chainlit" / "config.toml").read_text(encoding="utf-8")
    assert "max_size_mb =" not in chainlit_toml
    assert " MB" not in (REPO / "chainlit.md").read_text(encoding="utf-8")


def test_the_chainlit_config_grants_cross_origin_access_to_loopback_pages_only() -> None:
    import tomllib

    origins = tomllib.loads((REPO / ".chainlit" / "config.toml").read_text(encoding="utf-8"))[
        "project"
    ]["allow_origins"]
    assert origins and "*" not in origins
    assert all(o.startswith(("http://127.0.0.1:", "http://localhost:")) for o in origins)


def test_every_library_module_imports_without_loading_chainlit() -> None:
    # rag/ and ingest/ must work from a Python shell; only app.py's hooks load Chainlit.
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for folder in ("rag", "ingest")
        for p in (REPO / folder).rglob("*.py")
        if p.name != "__main__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print('chainlit' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
