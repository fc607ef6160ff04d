"""`python -m rag.answer_eval`: scoring on plain data, the CLI against scripted fake models,
and the shipped answer sets themselves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import rag.answer_eval
from ingest.loaders import load_document
from rag.answer import AnswerDone, AnswerEvent, AnswerStart
from rag.answer_eval import (
    AnswerQA,
    AnswerSetInvalid,
    Attempt,
    ModelReport,
    Outcome,
    ask,
    cited_numbers,
    first_source,
    is_refusal,
    load_answer_set,
    missing_facts,
    parse_fact,
    percentile,
    score,
)
from rag.llm import Endpoint
from rag.retrieve import Hit
from rag.grounding import NOT_COVERED, Citation
from rag.prompt import FULL
from rag.routing import Kind, Provider, Route
from rag.settings import Settings
from tests.support import MODELS_DIR, REPO, free_port, offline_settings, with_fallback
from tests.corpus import QA_DIR, SAMPLE_DOCS, build_corpus
from tests.fake_openai import FakeOpenAI

# --- facts ------------------------------------------------------------------------------


def facts(*raw: object) -> tuple[Any, ...]:
    return tuple(parse_fact(r) for r in raw)


def test_string_facts_match_case_insensitively_through_markdown() -> None:
    text = "Set **RAG_ENGINE** to `off` and everyone gets 28 days."
    assert missing_facts(text, facts("rag_engine", "OFF", "28 days")) == []


def test_string_facts_do_not_match_inside_longer_numbers_or_words() -> None:
    assert missing_facts("It takes 128 MB and two reports.", facts("28", "port")) == ["28", "port"]
    # A unit glued to a number still states the number.
    assert missing_facts("Uploads up to 20MB.", facts("20")) == []


def test_regex_facts_accept_paraphrases() -> None:
    fact = facts({"re": r"(6|six) months"})
    assert missing_facts("The probation period is six months.", fact) == []
    assert missing_facts("It lasts 6 months [2].", fact) == []
    assert missing_facts("It lasts half a year.", fact) == ["/(6|six) months/"]


def test_a_fact_is_a_string_or_a_regex_object() -> None:
    for bad in ({"regex": "x"}, 3, "", {"re": "x", "also": "y"}):
        with pytest.raises(ValueError):
            parse_fact(bad)


# --- first source -----------------------------------------------------------------------

PASSAGES = ("faq.txt", "user-guide.md", "configuration.md")


def test_first_source_is_the_first_cited_passage_not_the_best_retrieved() -> None:
    assert first_source("Run ingest [2]. It is fast [1].", PASSAGES) == "user-guide.md"
    assert first_source("See [3, 1].", PASSAGES) == "configuration.md"


def test_citations_of_passages_the_model_was_not_given_are_skipped() -> None:
    assert first_source("As [7] and [3] say.", PASSAGES) == "configuration.md"
    assert first_source("As [0] says.", PASSAGES) is None


def test_an_answer_that_cites_nothing_has_no_first_source() -> None:
    assert first_source("Put files into docs/ and run ingest.", PASSAGES) is None


def test_the_pipelines_own_cited_sources_win_over_the_markers() -> None:
    assert first_source("Run ingest [2].", PASSAGES, cited=("faq.txt",)) == "faq.txt"
    assert first_source("Run ingest [2].", PASSAGES, cited=()) is None


def test_cited_numbers_keep_the_order_of_first_citation() -> None:
    assert cited_numbers("A [2][1]. B [1, 3]. C [2,4].") == [2, 1, 3, 4]
    assert cited_numbers("Arrays like x[i] are not citations.") == []


# --- refusals: real-looking model outputs, both ways --------------------------------------

REFUSALS = [
    "Your documents do not seem to cover this question. Closest matches: [1] faq.txt",
    "The documents do not cover the capital of France.",
    "I'm sorry, but the provided context does not contain information about dark mode.",
    "There is no information about a dark mode setting in the documents.",
    "The context doesn't mention Google Drive, so I can't say how to connect it.",
    "I don't know.",
    "This is not mentioned in the passages provided.",
    "Based on the given passages, I cannot find any setting called RAG_MAX_PASSAGES.",
    "I\u2019m sorry, I don\u2019t have information about the 2018 World Cup.",
    "I'm sorry, but I can't provide information about the admin password.",
    "Sorry! The passages do not say anything about sourdough.",
    "**The documents don't specify** which Ollama version is needed.",
    "The question cannot be answered from the context.",
]

ANSWERS = [
    "Put your files into the docs/ folder and run `python -m ingest` [1]. You do not need to "
    "restart the chat.",
    "No, you don't need a GPU: everything runs on the CPU [1].",
    "Nothing leaves your machine unless you configure a cloud fallback [2]. The app makes no "
    "telemetry calls.",
    "Scanned PDFs contain only images and have no text to index; run them through OCR first [1].",
    "A file that cannot be read is reported by name and skipped [1].",
    "If the answer says the documents do not cover your question, try the words your "
    "documents use [1].",
    "Ollama listens on port 11434 [1]. The documents do not mention how to change it.",
    "Paris is the capital of France [1].",
    # SmolLM2-135M's own answers over docs/ and the Brightwater corpus:
    "The capital of France is Paris.",
    "The 2018 World Cup was won by Croatia (Croatia).",
    "To remove a document from the index, you can use the following steps: 1. 1. 1.",
    "No, you don't need to put Foundry Local's port into LLM_BASE_URL. The port is dynamic.",
    "The answer to this question can be found in the following pages: [1] (onboarding "
    "checklist.docx) Onboarding checklist:",
    "1. Open the settings.\n2. Pick a model [2].\nThe passages don't mention other ways.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_recognised(text: str) -> None:
    assert is_refusal(text)


@pytest.mark.parametrize("text", ANSWERS)
def test_answers_are_not_taken_for_refusals(text: str) -> None:
    assert not is_refusal(text)


def test_the_pipelines_refused_flag_is_trusted() -> None:
    assert is_refusal("Closest matches: [1] faq.txt", refused=True)


# --- scoring ------------------------------------------------------------------------------

HOLIDAY = AnswerQA("How many days of holiday?", facts("28"), ("handbook.md",))
UNCOVERED = AnswerQA("Who is the CEO?", refuse=True)
GIVEN = ("policies/expenses.txt", "handbook.md")


def attempt(text: str, **fields: Any) -> Attempt:
    return Attempt(text=text, passages=GIVEN, **fields)


@pytest.mark.parametrize(
    ("qa", "text", "outcome"),
    [
        (HOLIDAY, "Everyone gets 28 days [2].", Outcome.RIGHT),
        (HOLIDAY, "Everyone gets 30 days [2].", Outcome.WRONG),  # fact missing
        (HOLIDAY, "Everyone gets 28 days [1].", Outcome.WRONG),  # wrong first source
        (HOLIDAY, "Everyone gets 28 days.", Outcome.WRONG),  # cites nothing
        (HOLIDAY, "The documents do not cover holidays.", Outcome.FALSE_REFUSAL),
        (UNCOVERED, "The documents do not say who the CEO is.", Outcome.REFUSED_RIGHT),
        (UNCOVERED, "The CEO is Anna Berg [2].", Outcome.NOT_REFUSED),
    ],
)
def test_each_answer_gets_one_outcome(qa: AnswerQA, text: str, outcome: Outcome) -> None:
    assert score(qa, attempt(text)).outcome is outcome


def test_a_wrong_answer_records_what_was_missing_and_cited() -> None:
    scored = score(HOLIDAY, attempt("You get 30 days [1]."))
    assert scored.missing == ("28",) and scored.first_source == "policies/expenses.txt"


def test_a_failed_request_is_an_error_not_a_wrong_answer() -> None:
    assert score(HOLIDAY, Attempt(error="No model server answered.")).outcome is Outcome.ERROR


def _hit(source: str) -> Hit:
    return Hit(chunk_id=f"{source}#0", source=source, page=None, heading=None, text="", score=1.0)


async def test_ask_uses_the_pipelines_cited_sources_and_refusal_when_it_gives_them(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    # A stand-in pipeline whose cited passages disagree with the text's [n] markers.
    provider = Provider(Endpoint(name="local", base_url="http://127.0.0.1:1/v1"), Kind.CONFIGURED)
    route = Route(provider, "m")
    given = [_hit("policies/expenses.txt"), _hit("handbook.md")]
    replies = {
        "cited": AnswerDone(route, "28 days [1].", 0.1, 0.2, 3, sources=[Citation(2, given[1])]),
        "gated": AnswerDone(None, NOT_COVERED, 0.0, 0.1, 0, refused=True),
    }

    async def pipeline(question: str, settings: Settings, **_: object) -> AsyncIterator[AnswerEvent]:
        yield AnswerStart(route=route, hits=given, prompt_tokens=1, dropped_history=0,
                          dropped_hits=0)  # fmt: skip
        yield replies[question]

    monkeypatch.setattr(rag.answer_eval, "answer", pipeline)
    # [1] in the text is expenses.txt, but the pipeline says the cited passage is the handbook.
    qa = AnswerQA("cited", facts("28"), ("handbook.md",))
    cited = await ask(qa, "m", settings)
    assert cited.cited == ("handbook.md",) and cited.answered_by == "local:m"
    assert score(qa, cited).outcome is Outcome.RIGHT
    gated_qa = replace(UNCOVERED, q="gated")
    assert score(gated_qa, await ask(gated_qa, None, settings)).outcome is Outcome.REFUSED_RIGHT


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([float(n) for n in range(1, 21)], 95) == pytest.approx(19.05)


def test_report_counts_outcomes_and_times_only_answered_questions() -> None:
    report = ModelReport("m")
    answers = [
        (HOLIDAY, "28 days [2].", 1.0),
        (UNCOVERED, "I don't know.", 3.0),
        (HOLIDAY, "28 days, no citation.", 2.0),
        (HOLIDAY, "30 days [2].", 2.0),
    ]
    for qa, text, ttft in answers:
        report.scored.append(score(qa, attempt(text, ttft_s=ttft, total_s=ttft + 1)))
    report.scored.append(score(HOLIDAY, Attempt(error="down")))
    line = report.as_dict()
    assert (line["answered_right"], line["refused_right"], line["errors"]) == (1, 1, 1)
    assert (line["wrong_answers"], line["facts_right"]) == (2, 2)
    assert (line["answerable"], line["uncovered"]) == (4, 1)
    assert (line["ttft_p50_s"], line["total_p95_s"]) == (2.0, pytest.approx(3.85))
    assert [m["outcome"] for m in line["misses"]] == ["wrong", "wrong", "error"]  # type: ignore[index]


def test_malformed_answer_set_line_is_named(tmp_path: Path) -> None:
    qa = tmp_path / "bad.jsonl"
    qa.write_text('{"q": "ok", "facts": ["1"], "sources": ["a.md"]}\n{"q": "no sources"}\n')
    with pytest.raises(AnswerSetInvalid, match="line 2"):
        load_answer_set(qa)
    qa.write_text('{"q": "bad regex", "facts": [{"re": "("}], "sources": ["a.md"]}\n')
    with pytest.raises(AnswerSetInvalid, match="line 1"):
        load_answer_set(qa)


# --- the CLI against scripted models over the Brightwater corpus --------------------------

HOLIDAY_TURNS = [
    {"role": "user", "content": "How many days of holiday do I get?"},
    {"role": "assistant", "content": "Everyone gets 28 days of paid holiday a year [1]."},
]
# question -> (line of the answer set, the scripted reply; {file} is the number of that
# file's first passage in the prompt)
SCRIPT: dict[str, tuple[dict[str, Any], str]] = {
    "How many days of paid holiday do we get a year?": (
        {"facts": ["28"], "sources": ["handbook.md"]},
        "Everyone gets 28 days of paid holiday a year [{handbook.md}].",
    ),
    "What do I get per kilometre when I drive my own car?": (
        {"facts": [{"re": r"0\.30?\b"}], "sources": ["policies/expenses.txt"]},
        "You get 0.50 EUR per kilometre [{policies/expenses.txt}].",
    ),
    "How long does my password need to be?": (
        {"facts": ["14"], "sources": ["policies/security.html"]},
        "Passwords need at least 14 characters.",
    ),
    "How long is the probation period?": (
        {"facts": [{"re": "(6|six) months"}], "sources": ["onboarding checklist.docx"]},
        "I'm sorry, but the documents do not cover the probation period.",
    ),
    "And how many of them can I carry over?": (
        {"facts": [{"re": r"\b(5|five)\b"}], "sources": ["handbook.md"], "history": HOLIDAY_TURNS},
        "Up to five unused days carry over [{handbook.md}].",
    ),
    "Who is the CEO of Brightwater Kayaks?": (
        {"refuse": True},
        "The documents do not mention who the CEO is.",
    ),
    # A near miss the relevance gate lets through (the corpus is about Brightwater): the
    # model must decline it, and this one does not.
    "How much parking allowance do I get at the airport?": (
        {"refuse": True},
        "You get 20 EUR a day for airport parking [1].",
    ),
}
# What the script scores as, for each model: three right (the answer citing nothing is matched
# to the passage holding its words), one wrong, one false refusal;
# one refused right, one not refused.
EXPECTED = {
    "questions": 7, "answerable": 5, "uncovered": 2, "answered_right": 3, "wrong_answers": 1,
    "false_refusals": 1, "refused_right": 1, "not_refused": 1, "errors": 0,
}  # fmt: skip
SLOW_FIRST_TOKEN_S = 0.3
_PASSAGE = re.compile(r"^\[(\d+)\] \((.+?)(?:, page \d+)?\) ", re.MULTILINE)


def scripted_reply(body: dict[str, Any]) -> str:
    """The reply SCRIPT gives the question in the prompt, citing the passage it names."""
    prompt = body["messages"][-1]["content"]
    question = prompt.rsplit("Question:", 1)[1].strip()
    numbers: dict[str, str] = {}
    for number, source in _PASSAGE.findall(prompt):
        numbers.setdefault(source, number)
    reply = SCRIPT[question][1]
    return re.sub(r"\{([^}]+)\}", lambda m: numbers.get(m.group(1), "9"), reply)


@pytest.fixture
def answer_set(tmp_path: Path) -> Path:
    path = tmp_path / "scripted.jsonl"
    lines = [json.dumps({"q": q, **line}) for q, (line, _) in SCRIPT.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fakes() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with (
        FakeOpenAI(models=["small"], reply=scripted_reply) as small,
        FakeOpenAI(models=["big"], reply=scripted_reply, first_token_delay_s=SLOW_FIRST_TOKEN_S)
        as big,
    ):
        yield small, big


@pytest.fixture
def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """Run ``rag.answer_eval.main`` in this process with the given settings."""

    def run(settings: Settings, *argv: str) -> tuple[int, str, str]:
        monkeypatch.setattr(rag.answer_eval, "get_settings", lambda: settings)
        status = rag.answer_eval.main(list(argv))
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


def test_cli_reports_scripted_outcomes_per_model(
    corpus_store: Path,
    answer_set: Path,
    fakes: tuple[FakeOpenAI, FakeOpenAI],
    run_main: Callable[..., tuple[int, str, str]],
) -> None:
    small, big = fakes
    settings = with_fallback(corpus_store, small.base_url, big.base_url, "big")
    status, out, err = run_main(
        settings, str(answer_set), "--json", "--models", "small", "fallback:big"
    )
    assert status == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["model"], x["endpoint"]) for x in lines] == [
        ("small", "configured:small"),
        ("fallback:big", "fallback:big"),
    ]
    for line in lines:
        assert {k: line[k] for k in EXPECTED} == EXPECTED, line["misses"]
        assert 0 < line["ttft_p50_s"] <= line["ttft_p95_s"] <= line["total_p95_s"]
        assert line["total_p50_s"] <= line["total_p95_s"]
    assert lines[1]["ttft_p50_s"] >= SLOW_FIRST_TOKEN_S > lines[0]["ttft_p50_s"]
    misses = {m["q"]: m for m in lines[0]["misses"]}
    assert "How long does my password need to be?" not in misses  # matched, though uncited
    assert misses["What do I get per kilometre when I drive my own car?"]["missing"] == [
        r"/0\.30?\b/"
    ]
    assert len(small.requests) == len(big.requests) == len(SCRIPT)


def test_follow_up_history_reaches_the_model(
    corpus_store: Path,
    answer_set: Path,
    fakes: tuple[FakeOpenAI, FakeOpenAI],
    run_main: Callable[..., tuple[int, str, str]],
) -> None:
    small, _ = fakes
    status, _, err = run_main(offline_settings(corpus_store, llm_base_url=small.base_url),
                              str(answer_set), "--json")  # fmt: skip
    assert status == 0, err
    follow_up = next(
        r for r in small.requests if r["messages"][-1]["content"].endswith("can I carry over?")
    )
    assert follow_up["messages"][1:3] == HOLIDAY_TURNS


def test_cli_prints_a_table_and_exits_0_the_way_a_user_runs_it(
    corpus_store: Path, answer_set: Path, fakes: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "CHROMA_", "LLM_"))}
    env.update(
        PYTHONPATH=str(REPO),
        RAG_MODELS_DIR=str(MODELS_DIR),
        RAG_DATA_DIR=str(corpus_store / "data"),
        RAG_ENGINE="off",
        LLM_BASE_URL=fakes[0].base_url,
    )
    out = subprocess.run(
        [sys.executable, "-m", "rag.answer_eval", str(answer_set), "--k", "3"],
        cwd=answer_set.parent, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    table = out.stdout.splitlines()
    assert "7 questions (5 answerable, 2 not covered by the documents)" in table[0]
    assert table[1].split()[:3] == ["model", "right", "refused"]
    assert table[2].startswith("default (configured:small)")
    assert table[2].split()[2:8] == ["3/5", "1/2", "1/5", "1/5", "1/2", "0"]
    assert "[7/7] default: not refused" in out.stderr
    # --k 3: three passages in every prompt.
    assert all(len(_PASSAGE.findall(r["messages"][-1]["content"])) == 3
               for r in fakes[0].requests)  # fmt: skip


def test_a_model_that_answers_nothing_exits_1_with_the_servers_sentence(
    corpus_store: Path, answer_set: Path, run_main: Callable[..., tuple[int, str, str]]
) -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"
    status, out, err = run_main(offline_settings(corpus_store, llm_base_url=down),
                                str(answer_set), "--json", "--models", "m")  # fmt: skip
    assert status == 1
    assert json.loads(out)["errors"] == len(SCRIPT)
    assert "m answered no question" in err and "127.0.0.1" in err


def test_an_empty_store_stops_the_run_with_what_to_do(
    tmp_path: Path, answer_set: Path, run_main: Callable[..., tuple[int, str, str]]
) -> None:
    status, out, err = run_main(offline_settings(tmp_path, llm_base_url="http://127.0.0.1:9/v1"),
                                str(answer_set))  # fmt: skip
    assert status == 1 and out == ""
    assert "python -m ingest" in err


# --- the shipped answer sets --------------------------------------------------------------

ANSWER_SETS = ("answers.jsonl", "answers_corpus.jsonl")
# Uncovered questions kept out of tuning, to see whether refusals carry over to new ones.
HELD_OUT = ("uncovered_docs.jsonl", "uncovered_corpus.jsonl")


@pytest.fixture(scope="module")
def corpus_texts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The text of every file of docs/ and of the Brightwater corpus, by source name."""
    folders = [SAMPLE_DOCS, build_corpus(tmp_path_factory.mktemp("answer-sets") / "docs")]
    texts: dict[str, str] = {}
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            source = path.relative_to(folder).as_posix()
            document = load_document(source, path.read_bytes())
            texts[source] = "\n".join(s.text for s in document.sections)
    return texts


def shipped() -> list[AnswerQA]:
    return [qa for name in ANSWER_SETS for qa in load_answer_set(QA_DIR / name)]


def test_shipped_answer_sets_meet_the_minimum_counts() -> None:
    items = shipped()
    assert len(items) >= 48
    assert sum(qa.refuse for qa in items) >= 14
    assert sum(bool(qa.history) for qa in items) >= 6
    assert len({qa.q for qa in items}) == len(items), "a question is asked twice"


def test_held_out_sets_are_uncovered_questions_asked_nowhere_else() -> None:
    held_out = [qa for name in HELD_OUT for qa in load_answer_set(QA_DIR / name)]
    assert len(held_out) >= 24 and all(qa.refuse and not qa.history for qa in held_out)
    asked = {qa.q.casefold() for qa in shipped()}
    assert len({qa.q.casefold() for qa in held_out} | asked) == len(held_out) + len(asked)


def test_answerable_questions_name_facts_and_existing_sources(
    corpus_texts: dict[str, str],
) -> None:
    for qa in shipped():
        if qa.refuse:
            assert not qa.facts and not qa.sources, qa.q
            continue
        assert qa.facts, qa.q
        assert set(qa.sources) <= set(corpus_texts), (qa.q, qa.sources)


def test_every_fact_is_stated_by_an_expected_source(corpus_texts: dict[str, str]) -> None:
    for qa in shipped():
        stated = "\n".join(corpus_texts[s] for s in qa.sources)
        assert missing_facts(stated, qa.facts) == [], qa.q


def test_follow_up_histories_are_finished_turns() -> None:
    for qa in (qa for qa in shipped() if qa.history):
        roles = [turn["role"] for turn in qa.history]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles, qa.q


def test_details_hold_every_whole_answer_and_withdrawn_guesses_are_counted(
    corpus_store: Path,
    answer_set: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_main: Callable[..., tuple[int, str, str]],
) -> None:
    # A model whose answers the pipeline judges, making up an option for every question.
    monkeypatch.setattr("rag.answer.style_for", lambda _: replace(FULL, withdraw_guesses=True))
    details = tmp_path / "details.jsonl"
    guess = "Use the --airport-pass option [1]."
    with FakeOpenAI(models=["m"], reply=guess) as fake:
        settings = offline_settings(corpus_store, llm_base_url=fake.base_url)
        status, out, err = run_main(settings, str(answer_set), "--json", "--details", str(details))
    assert status == 0, err
    report = json.loads(out)
    lines = [json.loads(line) for line in details.read_text().splitlines()]
    assert [line["q"] for line in lines] == list(SCRIPT)
    asked = [line for line in lines if line["draft"]]  # the gate stopped none of these
    assert len(asked) == len(fake.requests) == len(SCRIPT)
    assert {(line["withdrawn"], line["answer"], line["draft"]) for line in asked} == {
        ("UNKNOWN_VALUES", NOT_COVERED, guess)
    }
    assert report["withdrawn_right"] == report["refused_right"] == 2
    assert report["withdrawn_false"] == report["false_refusals"] == 5
    assert all(line["passages"] and line["ttft_s"] > 0 for line in lines)


def test_a_details_file_in_a_missing_folder_is_refused_before_the_run(
    corpus_store: Path, answer_set: Path, tmp_path: Path
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "rag.answer_eval", str(answer_set), "--details",
         str(tmp_path / "nowhere" / "details.jsonl")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and "the folder" in run.stderr and "does not exist" in run.stderr
