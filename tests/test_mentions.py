"""Questions about particular files: ``@name`` mentions, scoped retrieval, ``rag.search --file``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rag.answer import EVERY_FILE_AGAIN, AnswerDone, AnswerStart, answer, search_query
from rag.llm import Message
from rag.mentions import (
    follow_up_scope,
    mentions,
    mentions_removed,
    scope_of,
    unknown_sentence,
    whole_document_files,
)
from rag.retrieve import Retriever, retrieve
from rag.settings import Settings, get_settings
from tests.chainlit_server import app_env, running_chainlit
from tests.chat_session import ChatSession
from tests.chat_socket import ChatSocket
from tests.fake_openai import FakeOpenAI
from tests.support import MODELS_DIR, offline_settings, run_module

SOURCES = [
    "handbook.md",
    "onboarding checklist.docx",
    "policies/expenses.txt",
    "policies/security.html",
    "tidewater-12-manual.pdf",
]
HOLIDAYS = "How many days of paid holiday do employees get?"


# --- parsing ----------------------------------------------------------------------------


def test_a_mention_limits_the_scope_to_its_file_and_reads_as_the_bare_name() -> None:
    scope = scope_of("Does @handbook.md allow remote work?", SOURCES)
    assert scope.sources == ("handbook.md",)
    assert scope.question == "Does handbook.md allow remote work?"
    assert scope.unknown == ()


def test_quoted_names_and_unquoted_names_with_spaces_and_punctuation_are_mentions() -> None:
    quoted = scope_of('What is in @"onboarding checklist.docx"?', SOURCES)
    spaced = scope_of("What is in @onboarding checklist.docx?", SOURCES)
    assert quoted.sources == spaced.sources == ("onboarding checklist.docx",)
    assert spaced.question == "What is in onboarding checklist.docx?"


def test_a_name_matches_by_path_file_name_or_stem_with_case_aside() -> None:
    for name in ("policies/expenses.txt", "expenses.txt", "Expenses", "EXPENSES.TXT"):
        assert scope_of(f"hotel limit in @{name}", SOURCES).sources == ("policies/expenses.txt",)


def test_several_mentions_scope_to_all_of_their_files_in_order() -> None:
    scope = scope_of("Compare @security.html and @expenses.txt, please.", SOURCES)
    assert scope.sources == ("policies/security.html", "policies/expenses.txt")


def test_an_email_address_or_a_bare_at_is_not_a_mention() -> None:
    assert mentions("write to it@brightwater.example about @ 10:00") == []
    assert scope_of("write to it@handbook.md", SOURCES).sources == ()


def test_an_unmatched_mention_that_does_not_look_like_a_file_is_left_as_text() -> None:
    scope = scope_of("Did @john approve the hotel limit?", SOURCES)
    assert scope.unknown == () and scope.sources == ()
    assert scope.question == "Did @john approve the hotel limit?"
    assert scope_of('Is it in @"jon"?', SOURCES).unknown == ("jon",)  # quoted: meant as a file
    assert scope_of("Is it in @notes.md?", SOURCES).unknown == ("notes.md",)


def test_mentions_removed_keeps_the_names_and_drops_the_at_and_the_quotes() -> None:
    assert mentions_removed('see @guide.md, and @"a b.pdf"!') == "see guide.md, and a b.pdf!"


def test_an_unknown_name_gets_a_sentence_with_the_close_names() -> None:
    scope = scope_of("What does @handbok.md say?", SOURCES)
    assert scope.unknown == ("handbok.md",) and scope.sources == ()
    sentence = unknown_sentence(scope.unknown, SOURCES)
    assert sentence.startswith('No ingested file is called "handbok.md". Did you mean `@handbook')
    assert "/files" in sentence
    part = unknown_sentence(["manual"], SOURCES)
    assert "`@tidewater-12-manual.pdf`" in part  # the name is part of a longer file name
    assert "none has a similar name" in unknown_sentence(["zzz"], SOURCES)


def test_whole_document_tasks_need_a_task_word_and_a_named_file() -> None:
    assert whole_document_files(scope_of("Summarize @handbook.md", SOURCES)) == ("handbook.md",)
    assert whole_document_files(scope_of("list the key points of handbook.md", SOURCES)) == (
        "handbook.md",
    )
    compare = scope_of("compare expenses.txt and security.html", SOURCES)
    assert whole_document_files(compare) == ("policies/expenses.txt", "policies/security.html")
    assert whole_document_files(scope_of("How long is the notice in @handbook.md?", SOURCES)) == ()
    assert whole_document_files(scope_of("Summarize the holiday rules", SOURCES)) == ()


# --- scoped retrieval over the real store --------------------------------------------------


def test_scoped_search_returns_passages_of_the_mentioned_files_only(
    corpus_settings: Settings,
) -> None:
    retriever = Retriever(corpus_settings)
    assert tuple(SOURCES) == retriever.sources()
    unscoped = retriever.search(HOLIDAYS, 5)
    assert unscoped[0].source == "handbook.md"
    for mode in ("hybrid", "dense", "bm25"):
        hits = retriever.search(HOLIDAYS, 5, mode=mode, sources=["policies/expenses.txt"])
        assert hits and {h.source for h in hits} == {"policies/expenses.txt"}, mode
    both = retriever.search(HOLIDAYS, 8, sources=["policies/expenses.txt", "handbook.md"])
    assert {h.source for h in both} <= {"policies/expenses.txt", "handbook.md"}
    assert both[0].source == "handbook.md"


def test_chunks_of_a_file_come_in_reading_order_and_all_of_them(corpus_settings: Settings) -> None:
    retriever = Retriever(corpus_settings)
    chunks = retriever.chunks_of("tidewater-12-manual.pdf")
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert {c.page for c in chunks} == set(range(1, 7))
    assert retriever.chunks_of("no-such-file.md") == []


def test_rag_search_file_limits_hits_to_that_file(
    corpus_settings: Settings, tmp_path: Path
) -> None:
    out = run_module(
        "rag.search", HOLIDAYS, "--json", "--k", "3", "--file", "expenses.txt",
        "--file", "security", "--data-dir", str(corpus_settings.data_dir), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (line,) = [json.loads(line) for line in out.stdout.splitlines()]
    sources = {hit["source"] for hit in line["hits"]}
    assert sources and sources <= {"policies/expenses.txt", "policies/security.html"}


def test_rag_search_unknown_file_exits_1_with_the_close_names(
    corpus_settings: Settings, tmp_path: Path
) -> None:
    out = run_module(
        "rag.search", HOLIDAYS, "--file", "handbok",
        "--data-dir", str(corpus_settings.data_dir), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1
    assert 'No ingested file is called "handbok"' in out.stderr
    assert "`--file handbook.md`" in out.stderr and "Traceback" not in out.stderr


# --- the answer pipeline -------------------------------------------------------------------


async def test_an_answer_about_a_mentioned_file_sends_only_its_passages(
    corpus_store: Path,
) -> None:
    with FakeOpenAI(models=["m"], reply="Hotels are capped per night [1].") as fake:
        settings = offline_settings(corpus_store, llm_base_url=fake.base_url, context_tokens=8192)
        question = "What is the nightly hotel limit in Zurich, says @expenses.txt?"
        events = [e async for e in answer(question, settings, model="m")]
    start, done = events[0], events[-1]
    assert isinstance(start, AnswerStart) and isinstance(done, AnswerDone)
    assert start.hits and {h.source for h in start.hits} == {"policies/expenses.txt"}
    (request,) = fake.requests
    prompt = request["messages"][-1]["content"]
    assert "(policies/expenses.txt" in prompt and "(handbook.md" not in prompt
    assert "@expenses.txt" not in prompt and "says expenses.txt?" in prompt


async def test_an_unknown_mention_is_answered_with_close_names_and_no_model_call(
    corpus_store: Path,
) -> None:
    with FakeOpenAI(models=["m"]) as fake:
        settings = offline_settings(corpus_store, llm_base_url=fake.base_url)
        events = [e async for e in answer("Summarize @handbok.md", settings, model="m")]
    done = events[-1]
    assert isinstance(done, AnswerDone) and done.route is None and done.refused
    assert "`@handbook.md`" in done.text
    assert fake.requests == []


# --- the chat ------------------------------------------------------------------------------


def cite_two(request: dict[str, Any]) -> str:
    return "Here is what the passages say [1][2]."


def test_in_the_chat_a_mention_limits_the_sources_shown_to_that_file(
    tmp_path: Path, corpus_store: Path
) -> None:
    with FakeOpenAI(models=["m"], reply=cite_two) as fake:
        env = app_env(corpus_store, fake.base_url)
        with running_chainlit(tmp_path, env) as app, ChatSocket(app.url, timeout_s=180) as chat:
            everywhere = chat.ask(HOLIDAYS)
            scoped = chat.ask(f"@expenses.txt {HOLIDAYS}")
            unknown = chat.ask(f"@handbok.md {HOLIDAYS}")
    shown = [e["name"] for e in everywhere.elements]
    assert any("handbook.md" in name for name in shown), shown
    names = [e["name"] for e in scoped.elements]
    assert names and all("policies/expenses.txt" in name for name in names), names
    assert "(policies/expenses.txt" in fake.requests[-1]["messages"][-1]["content"]
    assert "(handbook.md" not in fake.requests[-1]["messages"][-1]["content"]
    assert '"handbok.md"' in unknown.text and "`@handbook.md`" in unknown.text
    assert len(fake.requests) == 2  # the unknown name asked no model


def test_the_composer_completion_gets_the_file_names_from_this_machines_pages_only(
    tmp_path: Path, corpus_store: Path
) -> None:
    import httpx

    with running_chainlit(tmp_path, app_env(corpus_store, "http://127.0.0.1:9/v1")) as app:
        names = httpx.get(f"{app.url}/file-names", timeout=30)
        foreign = httpx.get(
            f"{app.url}/file-names", headers={"Origin": "http://evil.example"}, timeout=30
        )
        rebound = httpx.get(f"{app.url}/file-names", headers={"Host": "evil.example"}, timeout=30)
        page = httpx.get(app.url, timeout=30)
    assert names.status_code == 200 and names.headers["cache-control"] == "no-store"
    body = names.json()
    assert [f["source"] for f in body["files"]] == SOURCES
    assert {"source": "onboarding checklist.docx", "mention": '@"onboarding checklist.docx"'} in (
        body["files"]
    )
    assert body["every_file"] == "@all"
    assert foreign.status_code == 403 and rebound.status_code == 403
    assert '<script src="/public/file_mentions.js"' in page.text


@pytest.fixture
def chat_env(corpus_store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """The app's settings over the corpus store, answered by a fake that cites [1][2]."""
    with FakeOpenAI(models=["m"], reply=cite_two) as fake:
        for name, value in {
            "RAG_DOCS_DIR": corpus_store / "docs",
            "RAG_DATA_DIR": corpus_store / "data",
            "RAG_MODELS_DIR": MODELS_DIR,
            "LLM_BASE_URL": fake.base_url,
        }.items():
            monkeypatch.setenv(name, str(value))
        get_settings.cache_clear()
        yield fake
    get_settings.cache_clear()


async def test_files_command_lists_the_ingested_files_as_mentions(chat_env: FakeOpenAI) -> None:
    import app as chat_app

    async with ChatSession() as chat:
        await chat.send(chat_app.on_message, "/files")
        listing = chat.last_answer().output
    assert listing.startswith("**5 ingested file(s).**")
    assert '- `@"onboarding checklist.docx"`' in listing
    assert "- `@policies/expenses.txt`" in listing
    assert chat_env.requests == []


def test_the_api_scopes_mentions_and_answers_an_unknown_name_without_a_model(
    corpus_store: Path,
) -> None:
    from tests.api_server import ApiServer

    with (
        FakeOpenAI(models=["m"], reply=cite_two) as fake,
        ApiServer(offline_settings(corpus_store, llm_base_url=fake.base_url)) as api,
    ):
        client = api.client()
        scoped = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"{HOLIDAYS} @expenses.txt"}]
        )
        unknown = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"{HOLIDAYS} @handbok"}]
        )
    text = scoped.choices[0].message.content or ""
    sources = text.split("\n\nSources:\n")[1].splitlines()
    assert sources and all("policies/expenses.txt" in line for line in sources)
    assert "`@handbook.md`" in (unknown.choices[0].message.content or "")
    assert len(fake.requests) == 1


# --- follow-ups keep the scope -------------------------------------------------------------

FOLLOW_UP = "And for part-timers?"


def test_a_follow_up_keeps_the_files_of_the_question_before_it() -> None:
    earlier = ["Hi there", "@handbook.md how many holiday days?", "who books them?"]
    scope = follow_up_scope(FOLLOW_UP, earlier, SOURCES)
    assert scope.sources == ("handbook.md",) and scope.carried
    assert scope.question == FOLLOW_UP
    assert follow_up_scope(FOLLOW_UP, ["How many holiday days?"], SOURCES).sources == ()


def test_mentioning_other_files_changes_the_scope_and_at_all_goes_back_to_every_file() -> None:
    earlier = ["@handbook.md how many holiday days?"]
    other = follow_up_scope("And in @expenses.txt and @security.html?", earlier, SOURCES)
    assert other.sources == ("policies/expenses.txt", "policies/security.html")
    assert not other.carried
    every = follow_up_scope(f"@all {FOLLOW_UP}", earlier, SOURCES)
    assert every.sources == () and every.every_file and every.question == FOLLOW_UP
    after_all = follow_up_scope(FOLLOW_UP, [*earlier, "@all", "who books them?"], SOURCES)
    assert after_all.sources == () and not after_all.carried
    moved = follow_up_scope(FOLLOW_UP, [*earlier, "@all", "What about @expenses?"], SOURCES)
    assert moved.sources == ("policies/expenses.txt",) and moved.carried


def test_at_all_is_not_a_file_while_all_md_and_a_quoted_all_are_names() -> None:
    sources = [*SOURCES, "all.md"]
    assert scope_of("@all how many days?", sources).every_file
    assert scope_of("@all.md how many days?", sources).sources == ("all.md",)
    assert scope_of('@"all" how many days?', sources).sources == ("all.md",)
    # Not a file's "install" or "manual" either: "@all" is never an unknown name.
    assert scope_of("@all what now?", ["install.md", "manual.pdf"]).unknown == ()


def test_an_earlier_unknown_name_or_a_file_named_now_does_not_carry_the_scope() -> None:
    earlier = ["@expenses.txt hotel limit?", "@handbok.md how many days?"]
    assert follow_up_scope(FOLLOW_UP, earlier, SOURCES).sources == ("policies/expenses.txt",)
    summary = follow_up_scope("summarize security.html", earlier, SOURCES)
    assert summary.sources == () and whole_document_files(summary) == ("policies/security.html",)
    # A carried scope limits the search; reading files whole needs them named in the request.
    task = follow_up_scope("and the difference for part-timers?", ["@handbook.md days?"], SOURCES)
    assert task.sources == ("handbook.md",) and whole_document_files(task) == ()


async def test_a_follow_up_answer_searches_the_earlier_files_with_the_earlier_question(
    corpus_store: Path,
) -> None:
    first = f"@expenses.txt {HOLIDAYS}"
    history: list[Message] = [
        {"role": "user", "content": first},
        {"role": "assistant", "content": "Nothing on holidays there [1]."},
    ]
    with FakeOpenAI(models=["m"], reply=cite_two) as fake:
        settings = offline_settings(corpus_store, llm_base_url=fake.base_url, context_tokens=8192)
        events = [e async for e in answer(FOLLOW_UP, settings, model="m", history=history)]
    start = events[0]
    assert isinstance(start, AnswerStart)
    assert start.hits and {h.source for h in start.hits} == {"policies/expenses.txt"}
    # Retrieval still reads the follow-up together with the question before it.
    joined = retrieve(
        search_query(FOLLOW_UP, history), settings=settings, sources=["policies/expenses.txt"]
    )
    assert [h.text for h in start.hits] == [h.text for h in joined][: len(start.hits)]
    prompt = fake.requests[-1]["messages"][-1]["content"]
    assert "(policies/expenses.txt" in prompt and "(handbook.md" not in prompt


def test_the_api_keeps_the_scope_of_earlier_user_messages_until_at_all(
    corpus_store: Path,
) -> None:
    from tests.api_server import ApiServer

    conversation = [
        {"role": "user", "content": f"@expenses.txt {HOLIDAYS}"},
        {"role": "assistant", "content": "Nothing on that [1].\n\nSources:\n[1] x"},
        {"role": "user", "content": FOLLOW_UP},
    ]
    with (
        FakeOpenAI(models=["m"], reply=cite_two) as fake,
        ApiServer(offline_settings(corpus_store, llm_base_url=fake.base_url)) as api,
    ):
        client = api.client()
        kept = client.chat.completions.create(model="m", messages=conversation)
        reset = client.chat.completions.create(
            model="m",
            messages=[
                *conversation,
                {"role": "assistant", "content": "Here [1]."},
                {"role": "user", "content": "@all"},
                {"role": "assistant", "content": EVERY_FILE_AGAIN},
                {"role": "user", "content": HOLIDAYS},
            ],
        )
        bare = client.chat.completions.create(
            model="m", messages=[*conversation[:2], {"role": "user", "content": "@all"}]
        )
    sources = (kept.choices[0].message.content or "").split("\n\nSources:\n")[1].splitlines()
    assert sources and all("policies/expenses.txt" in line for line in sources)
    first_prompt = fake.requests[0]["messages"][-1]["content"]
    assert "(policies/expenses.txt" in first_prompt and "(handbook.md" not in first_prompt
    assert "Sources:\n[1] handbook.md" in (reset.choices[0].message.content or "")
    assert (bare.choices[0].message.content or "").startswith(EVERY_FILE_AGAIN)
    assert len(fake.requests) == 2  # the bare @all asked no model


async def test_in_the_chat_a_follow_up_stays_with_the_file_and_the_search_step_says_so(
    chat_env: FakeOpenAI,
) -> None:
    import app as chat_app

    async with ChatSession() as chat:
        await chat.send(chat_app.on_message, f"@expenses.txt {HOLIDAYS}")
        await chat.send(chat_app.on_message, FOLLOW_UP)
        await chat.send(chat_app.on_message, f"@all {HOLIDAYS}")
        searches = chat.steps("retrieval")
    assert [s.name for s in searches] == [
        "document search in policies/expenses.txt",
        "document search in policies/expenses.txt",
        "document search in every file",
    ]
    assert searches[0].output.startswith("Searched only `policies/expenses.txt`.")
    assert searches[1].output.startswith(
        "Searched only `policies/expenses.txt`, as in your earlier question."
    )
    assert "`@all`" in searches[1].output
    assert searches[2].output.startswith("Searched every file (`@all`).")
    prompts = [r["messages"][-1]["content"] for r in chat_env.requests]
    assert len(prompts) == 3
    for prompt in prompts[:2]:
        assert "(policies/expenses.txt" in prompt and "(handbook.md" not in prompt
    assert "(handbook.md" in prompts[2]


def test_a_resumed_chat_keeps_the_files_its_earlier_questions_mentioned(
    tmp_path: Path, private_store: Path
) -> None:
    with FakeOpenAI(models=["m"], reply=cite_two) as fake:
        env = app_env(private_store, fake.base_url)
        with running_chainlit(tmp_path / "first", env) as app, ChatSocket(app.url) as chat:
            chat.ask(f"@expenses.txt {HOLIDAYS}")
            thread_id = chat.thread_id_started()
        with (
            running_chainlit(tmp_path / "second", env) as app,
            ChatSocket(app.url, thread_id=thread_id) as chat,
        ):
            resumed = chat.ask(FOLLOW_UP)
    names = [e["name"] for e in resumed.elements]
    assert names and all("policies/expenses.txt" in name for name in names), names
    prompt = fake.requests[-1]["messages"][-1]["content"]
    assert "(policies/expenses.txt" in prompt and "(handbook.md" not in prompt
