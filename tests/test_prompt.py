"""Prompt building: context ahead of the question, history for follow-ups, and the token budget."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from rag.errors import RagError
from rag.grounding import ANSWERABLE_CHECK
from rag.llm import Endpoint
from rag.prompt import (
    FULL_PASSAGES,
    ON_CPU,
    ON_CPU_UNCHECKED,
    CONTEXT_END,
    CONTEXT_HEAD,
    COMPACT,
    COMPACT_SYSTEM_PROMPT,
    FULL,
    SMALL_MODEL_PARAMETERS,
    SYSTEM_PROMPT,
    TokenCounter,
    _focused,
    build_prompt,
    check_messages,
    estimate_tokens,
    style_for,
    token_counter,
)
from rag.retrieve import Hit
from rag.routing import Kind, Provider
from tests.support import MODELS_DIR, make_settings


def hit(n: int, source: str = "guide.pdf", page: int | None = 3, words: int = 60) -> Hit:
    text = f"Fact {n}: " + " ".join(f"word{n}x{i}" for i in range(words))
    return Hit(
        chunk_id=f"{source}#{n}",
        source=source,
        page=page,
        heading=None,
        text=text,
        score=1.0 / (60 + n),
        dense_rank=n,
        bm25_rank=None,
    )


def conversation(turns: int) -> list[dict[str, str]]:
    history: list[dict[str, str]] = []
    for t in range(turns):
        history.append({"role": "user", "content": f"old question {t} " + "q " * 40})
        history.append({"role": "assistant", "content": f"old answer {t} " + "a " * 40})
    return history


def test_context_is_numbered_and_placed_before_the_question(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    hits = [hit(1), hit(2, source="notes/setup.md", page=None)]

    prompt = build_prompt("How do I add files?", hits, settings=settings)

    system, user = prompt.messages
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert "using only the numbered context" in system["content"] and "[1]" in system["content"]
    assert user["role"] == "user"
    content = user["content"]
    assert content.startswith(f"{CONTEXT_HEAD}\n[1] (guide.pdf, page 3) Fact 1:")
    assert "\n\n[2] (notes/setup.md) Fact 2:" in content
    assert content.endswith("\n\nQuestion: How do I add files?")
    assert content.index("[2]") < content.index("Question:")
    assert prompt.hits == hits and prompt.dropped_hits == 0 and prompt.dropped_history == 0


def test_compact_style_gives_a_small_model_two_short_passages_ahead_of_the_bare_question(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    hits = [hit(n, words=200) for n in range(1, 6)]

    prompt = build_prompt(
        "How do I add files?", hits, settings=settings, history=conversation(3), style=COMPACT
    )

    system, *history, user = prompt.messages
    assert system["content"].startswith(f"{COMPACT_SYSTEM_PROMPT}\n\n{CONTEXT_HEAD}\n[1] (guide.pdf")
    assert "[2]" in system["content"] and "[3]" not in system["content"]
    assert user == {"role": "user", "content": "How do I add files?"}
    assert len(history) == 2  # one earlier turn only: more history confuses a tiny model
    assert [h.chunk_id for h in prompt.hits] == ["guide.pdf#1", "guide.pdf#2"]
    counter = token_counter(settings)
    for n, kept in enumerate(prompt.hits, start=1):
        assert kept.text.endswith(" …")  # cut from 200 words
        assert counter.count(f"[{n}] (guide.pdf, page 3) {kept.text}") + 1 <= COMPACT.passage_tokens


def test_recent_history_goes_between_system_and_the_context_message(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, history_turns=2)
    history = conversation(3)

    prompt = build_prompt("And then?", [hit(1)], settings=settings, history=history)

    middle = prompt.messages[1:-1]
    assert middle == history[-4:]  # the last two turns, oldest first; older ones are out of window
    assert prompt.dropped_history == 0
    assert CONTEXT_HEAD not in "".join(m["content"] for m in middle)  # old turns carry no old context


def test_with_no_hits_the_model_is_told_there_is_no_context(tmp_path: Path) -> None:
    prompt = build_prompt("Anything?", [], settings=make_settings(tmp_path))
    assert prompt.messages[-1]["content"] == (
        f"{CONTEXT_HEAD}\n(no passages found)\n{CONTEXT_END}\n\nQuestion: Anything?"
    )


def test_history_is_dropped_first_oldest_first_when_over_budget(tmp_path: Path) -> None:
    history = conversation(3)
    hits = [hit(1, words=40), hit(2, words=40)]
    probe = make_settings(tmp_path, history_turns=3)
    without_history = estimate_tokens("Why?", hits, settings=probe)
    one_turn = estimate_tokens("Why?", hits, settings=probe, history=history[-2:]) - without_history
    # Room for the passages and about one and a half turns of history, not three.
    window = without_history + one_turn * 3 // 2 + 200
    settings = make_settings(tmp_path, context_tokens=window, answer_tokens=200, history_turns=3)
    counter = token_counter(settings)

    prompt = build_prompt("Why?", hits, settings=settings, history=history, counter=counter)

    assert prompt.dropped_history > 0
    assert prompt.dropped_hits == 0  # passages are kept while history can still go
    kept = prompt.messages[1:-1]
    assert kept == history[len(history) - len(kept) :]  # what is left is the most recent part
    assert not kept or kept[0]["role"] == "user"  # never an answer without its question
    assert len(kept) == 2  # exactly the last turn fits
    assert counter.count_messages(prompt.messages) <= prompt.tokens <= window - 200


def test_lowest_ranked_passages_go_after_all_history_and_the_last_one_is_cut(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, context_tokens=400, answer_tokens=100, history_turns=3)
    hits = [hit(n, words=80) for n in range(1, 6)]
    counter = token_counter(settings)

    prompt = build_prompt("Why?", hits, settings=settings, history=conversation(3), counter=counter)

    assert prompt.dropped_history == 6
    assert prompt.dropped_hits >= 1
    assert [h.chunk_id for h in prompt.hits] == [h.chunk_id for h in hits[: len(prompt.hits)]]
    assert prompt.tokens <= 400 - 100
    if prompt.truncated:
        assert prompt.hits[-1].text.endswith(" …")


def test_a_single_long_passage_is_truncated_to_fit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, context_tokens=300, answer_tokens=100)
    long_hit = hit(1, words=600)
    counter = token_counter(settings)

    prompt = build_prompt("Why?", [long_hit], settings=settings, counter=counter)

    assert prompt.truncated and prompt.dropped_hits == 0
    assert prompt.hits[0].text.endswith(" …")
    assert long_hit.text.startswith(prompt.hits[0].text[:-2])
    assert 0 < prompt.tokens <= 200
    # The cut keeps as much as fits: a few more words would not.
    assert prompt.tokens > 200 - 30


@pytest.mark.parametrize("window", [320, 384, 512, 1024, 2048])
def test_the_prompt_never_exceeds_the_budget(tmp_path: Path, window: int) -> None:
    settings = make_settings(tmp_path, context_tokens=window, answer_tokens=128, history_turns=6)
    hits = [hit(n, words=150) for n in range(1, 8)]
    counter = token_counter(settings)

    prompt = build_prompt(
        "Explain everything.", hits, settings=settings, history=conversation(6), counter=counter
    )

    # The reported size bounds the assembled prompt's real count, which fits the budget.
    assert counter.count_messages(prompt.messages) <= prompt.tokens <= window - 128
    assert prompt.messages[-1]["content"].endswith("Question: Explain everything.")


def test_a_question_that_cannot_fit_raises_a_sentence(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, context_tokens=256, answer_tokens=128)
    with pytest.raises(RagError, match="question is too long for the model's context window"):
        build_prompt("why " * 400, [hit(1)], settings=settings)


def test_untrimmed_estimate_counts_everything_in_the_history_window(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, context_tokens=400, answer_tokens=100, history_turns=3)
    hits = [hit(n, words=80) for n in range(1, 6)]
    full = estimate_tokens("Why?", hits, settings=settings, history=conversation(3))
    trimmed = build_prompt("Why?", hits, settings=settings, history=conversation(3))
    assert full > 300 >= trimmed.tokens


SMOLLM_TOKENIZER = MODELS_DIR / "smollm2-135m-instruct-int4" / "tokenizer.json"


def test_estimate_is_not_below_a_real_chat_models_token_count(tmp_path: Path) -> None:
    """The conservative count covers a real chat tokenizer (SmolLM2, which splits digits)."""
    settings = make_settings(tmp_path)
    counter = token_counter(settings)
    real = Tokenizer.from_file(str(SMOLLM_TOKENIZER))
    samples = [
        "To add your own files, drop them into the docs folder and run the ingest command again.",
        "def chunk(text: str, size: int = 220) -> list[str]:\n"
        "    return [text[i:i+size] for i in range(0, len(text), size)]",
        "Ports: 8000, 11434, 5272, 56432; sizes 1.3 GiB / 0.25 GiB; 2,700 vectors/s at p50 2.3 ms.",
        "Die Antwort steht im Handbuch auf Seite 3 — bitte die Quellen [1] und [2] beachten.",
        "| k | p50 ms | p95 ms |\n|---|---|---|\n| 5 | 2.3 | 4.1 |\n| 10 | 2.9 | 5.0 |",
    ]
    repo_docs = Path(__file__).resolve().parents[1] / "docs"
    for path in sorted(repo_docs.glob("*.md")) + sorted(repo_docs.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        samples += [text[i : i + 1200] for i in range(0, len(text), 1200)]
    for text in samples:
        # What the server really tokenizes: the message inside SmolLM2's chat template.
        templated = f"<|im_start|>user\n{text}<|im_end|>\n"
        estimate = counter.count_messages([{"role": "user", "content": text}])
        assert estimate >= len(real.encode(templated, add_special_tokens=False).ids), text[:80]


# --- which prompt a model gets -----------------------------------------------------------


def _provider(kind: Kind, parameters: int | None) -> Provider:
    return Provider(Endpoint("p", "http://127.0.0.1:5272/v1"), kind, parameters=parameters)


def test_a_model_below_300m_parameters_gets_the_compact_prompt() -> None:
    assert style_for(_provider(Kind.EMBEDDED, 135_000_000)) is COMPACT
    assert style_for(_provider(Kind.EMBEDDED, SMALL_MODEL_PARAMETERS - 1)) is COMPACT


def test_a_larger_embedded_model_gets_three_passages_and_a_server_of_unknown_size_all() -> None:
    assert style_for(_provider(Kind.EMBEDDED, SMALL_MODEL_PARAMETERS)) is ON_CPU_UNCHECKED
    assert style_for(_provider(Kind.EMBEDDED, 500_000_000)) is ON_CPU_UNCHECKED
    assert style_for(_provider(Kind.EMBEDDED, 1_500_000_000)) is ON_CPU
    assert ON_CPU_UNCHECKED == replace(ON_CPU, check=False)
    assert ON_CPU.max_passages == FULL_PASSAGES and ON_CPU.temperature == 0.0
    for kind in (Kind.CONFIGURED, Kind.FOUNDRY, Kind.DECLARED):
        assert style_for(_provider(kind, None)) is FULL


def test_the_compact_style_asks_for_a_short_greedy_answer_and_full_leaves_the_settings() -> None:
    assert (COMPACT.answer_tokens, COMPACT.temperature) == (160, 0.0)
    assert (FULL.answer_tokens, FULL.temperature) == (None, None)


def test_one_token_counter_serves_equal_settings(tmp_path: Path) -> None:
    assert token_counter(make_settings(tmp_path)) is token_counter(make_settings(tmp_path))


def _long_passage(middle: str) -> Hit:
    filler = [f"Sentence {i} is about the weather in town number {i}." for i in range(40)]
    text = " ".join(filler[:20] + [middle] + filler[20:])
    return Hit("guide.md#0", "guide.md", None, None, text, 1.0)


def test_on_cpu_cuts_a_long_passage_to_the_sentences_that_hold_the_question_words(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    counter = token_counter(settings)
    middle = "Ollama listens on port 11434 unless OLLAMA_HOST says otherwise."
    long = _long_passage(middle)
    prompt = build_prompt("Which port does Ollama listen on?", [long], settings=settings, style=ON_CPU)

    kept = prompt.hits[0].text
    assert middle in kept  # 20 sentences in: the start of the passage would have missed it
    assert kept.startswith("… ") and kept.endswith(" …")
    assert kept.removeprefix("… ").removesuffix(" …") in long.text  # whole sentences, in order
    assert counter.count(f"[1] (guide.md) {kept}") + 1 <= ON_CPU.passage_tokens
    assert kept in prompt.messages[-1]["content"]


def test_a_question_sharing_no_word_with_a_long_passage_keeps_its_opening(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    long = _long_passage("Ollama listens on port 11434.")
    prompt = build_prompt("Who painted it?", [long], settings=settings, style=ON_CPU)
    assert prompt.hits[0].text.startswith("Sentence 0 is about the weather")
    assert prompt.hits[0].text.endswith(" …")


def test_a_passage_within_the_focus_budget_is_left_whole(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    short = hit(1, words=20)
    prompt = build_prompt("What is word1x3?", [short], settings=settings, style=ON_CPU)
    assert prompt.hits == [short]


def test_the_check_follows_the_question_and_leaves_the_answers_prompt_before_it(
    settings: Settings,
) -> None:
    hit = Hit("g#0", "guide.md", None, None, "Ollama listens on 11434.", 1.0)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    prompt = build_prompt("Which port?", [hit], settings=settings, history=history, style=ON_CPU)
    asked = prompt.messages[-1]["content"]
    assert asked.endswith("Question: Which port?") and ON_CPU.check and not FULL.check
    joined = check_messages(prompt, " Which port? ", "About Ollama\nWhich port?")
    for checked, question in [
        (check_messages(prompt, "Which port?"), "Which port?"),
        (joined, "About Ollama Which port?"),
    ]:
        assert checked[:-1] == prompt.messages[:-1] and checked[-1]["role"] == "user"
        head = asked.removesuffix("Which port?")
        assert checked[-1]["content"] == f"{head}{question}\n\n{ANSWERABLE_CHECK}"


def test_a_focused_passage_opens_on_the_question_words_so_the_answer_below_them_stays(
    tmp_path: Path,
) -> None:
    """A FAQ's question holds the asked words and its answer follows: a window that merely
    ended on the question (as the earliest best one did) cut the answer off."""
    settings = make_settings(tmp_path)
    faq = (
        "How do I remove a document? Delete it from the docs folder and run ingest again. "
        "Its passages are removed from the index."
    )
    prompt = build_prompt(
        "How do I remove a document?", [_long_passage(faq)], settings=settings, style=ON_CPU
    )
    kept = prompt.hits[0].text
    assert kept.startswith("… How do I remove a document? Delete it from the docs folder")


def test_a_focused_table_keeps_each_row_whole_on_its_own_line_without_its_rule(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    rows = [f"| Format {i} | `.f{i}` | Read line by line. Cited by line. |" for i in range(12)]
    table = "\n".join(["Supported file formats", "| Format | Extension | Notes |", "|---|---|---|"])
    text = "\n".join([table, *rows, "Files larger than 50 MB are skipped."])
    long = Hit("guide.md#0", "guide.md", None, None, text, 1.0)
    prompt = build_prompt("Which file formats?", [long], settings=settings, style=ON_CPU)

    kept = prompt.hits[0].text
    assert kept.startswith("Supported file formats\n| Format | Extension | Notes |\n| Format 0 |")
    assert "|---|" not in kept and kept.endswith(" …")
    lines = kept.removesuffix(" …").splitlines()
    assert lines[2:] == rows[: len(lines) - 2]  # whole rows, though each holds full stops


def test_a_focused_passage_does_not_end_on_a_heading_whose_section_it_cuts_off() -> None:
    """The 1.5B read Foundry Local's port story as Ollama's when the window ended on the
    "Ollama" heading: every budget that reaches the heading but not its section drops it."""
    text = (
        "Foundry Local listens on a port it picks itself, so you do not configure it. "
        "The app finds the address with foundry service status.\n\nOllama\n\n"
        "Run ollama serve, then set LLM_BASE_URL to the port 11434. Pull a model first. "
        + " ".join(f"Sentence {i} says nothing more." for i in range(20))
    )
    long = Hit("configuration.md#0", "configuration.md", None, None, text, 1.0)
    question = "Which port does Ollama listen on?"
    kept = [_focused(long, question, room, TokenCounter()).text for room in range(40, 90)]
    assert not [k for k in kept if k.endswith("Ollama …")]
    assert [k for k in kept if "Foundry Local listens" in k and "11434" not in k]
