"""The embedded engine: a real converted model served over HTTP, driven by the real openai SDK.

One `rag.embedded_llm serve` child (started through EngineProcess, as the app does) serves the
smallest tier (SmolLM2-135M) to the whole module, for speed; process-lifecycle tests start their
own. One test serves the default tier and checks it answers a grounded question.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import openai
import pytest

from bench.bench_engine import bench_server
from rag.embedded_llm import EngineProcess, engine_available
from rag.embedded_llm.generation import (
    Delta,
    Engine,
    Sampling,
    StopMatcher,
    TokenLogprob,
    ends_in_loop,
)
from rag.errors import ModelMissing
from rag.llm import Endpoint, first_token_odds
from rag.model_tiers import TIERS
from rag.prompt import ON_CPU, build_prompt
from rag.retrieve import Hit
from rag.settings import Settings
from tests.support import MODELS_DIR, REPO, make_settings

SMALL = "smollm2-135m"

CONTEXT_PROMPT = [
    {"role": "system", "content": "Answer only from the context. Be brief."},
    {
        "role": "user",
        "content": "Context:\n[1] The secret code word for the vault is TANGERINE.\n\n"
        "Question: What is the secret code word for the vault?",
    },
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EngineProcess, Endpoint]]:
    settings = make_settings(tmp_path_factory.mktemp("engine"), engine_model=SMALL)
    process = EngineProcess(settings)
    endpoint = process.start()
    yield process, endpoint
    process.stop()


@pytest.fixture(scope="module")
def client(engine) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine[1].base_url, api_key="x", max_retries=0, timeout=60)


def _stats(endpoint: Endpoint) -> dict:
    return httpx.get(endpoint.base_url.removesuffix("/v1") + "/engine/stats").json()


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie nobody reaped yet counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


# --- answers -------------------------------------------------------------------------
def test_models_lists_the_loaded_model_with_its_context(engine, client) -> None:
    process, endpoint = engine
    assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct-int4"]
    assert process.info is not None and process.info.id == "smollm2-135m-instruct-int4"
    assert process.info.context_tokens == 8192 and endpoint.name == "embedded"


def test_streamed_answer_repeats_a_fact_given_in_the_context(engine, client) -> None:
    stream = client.chat.completions.create(
        model=engine[0].info.id, messages=CONTEXT_PROMPT, stream=True, temperature=0, max_tokens=40
    )
    deltas = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert len(deltas) > 1, "the answer should arrive token by token"
    assert "TANGERINE" in "".join(deltas).upper()


def test_non_streamed_answer_reports_real_token_usage(engine, client) -> None:
    import onnxruntime_genai as og

    reply = client.chat.completions.create(
        model=engine[0].info.id, messages=CONTEXT_PROMPT, temperature=0, max_tokens=40
    )
    tokenizer = og.Tokenizer(og.Model(str(engine[0].model_dir)))
    templated = tokenizer.apply_chat_template(
        json.dumps(CONTEXT_PROMPT), add_generation_prompt=True
    )
    assert reply.usage.prompt_tokens == len(tokenizer.encode(templated))
    assert 0 < reply.usage.completion_tokens <= 40
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert "TANGERINE" in reply.choices[0].message.content.upper()


def test_streamed_usage_is_sent_when_asked(engine, client) -> None:
    chunks = list(client.chat.completions.create(
        model=engine[0].info.id, messages=CONTEXT_PROMPT, stream=True, temperature=0, max_tokens=40,
        stream_options={"include_usage": True},
    ))  # fmt: skip
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens > 0
    # Where greedy decoding runs past 40 tokens (kernels round differently per CPU), "length".
    finished = "length" if usage.completion_tokens == 40 else "stop"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finished


def test_max_tokens_bounds_the_answer(engine, client) -> None:
    reply = client.chat.completions.create(
        model=engine[0].info.id, temperature=0, max_tokens=7,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
    )  # fmt: skip
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 7


def test_stop_sequence_cuts_the_answer_before_it(engine, client) -> None:
    ask = dict(model=engine[0].info.id, messages=CONTEXT_PROMPT, temperature=0, max_tokens=40)
    full = client.chat.completions.create(**ask).choices[0].message.content
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]  # greedy decoding repeats the same text, so the cut point is known
    cut = client.chat.completions.create(**ask, stop=[stop, "never-appears"])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_logprobs_give_each_greedy_tokens_odds_and_the_likeliest_alternatives(
    engine, client
) -> None:
    ask = dict(model=engine[0].info.id, messages=CONTEXT_PROMPT, temperature=0, max_tokens=6)
    reply = client.chat.completions.create(**ask, logprobs=True, top_logprobs=3)
    tokens = reply.choices[0].logprobs.content
    assert len(tokens) == reply.usage.completion_tokens
    assert "".join(t.token for t in tokens) == reply.choices[0].message.content
    for token in tokens:
        top = [t.logprob for t in token.top_logprobs]
        assert len(top) == 3 and top == sorted(top, reverse=True) and top[0] <= 0
        # Greedy decoding picks the likeliest token, so it heads its own alternatives.
        assert token.token == token.top_logprobs[0].token and token.logprob == top[0]
        assert sum(math.exp(lp) for lp in top) <= 1 + 1e-6
    streamed = list(client.chat.completions.create(**ask, stream=True, logprobs=True))
    last = [c for c in streamed if c.choices][-1].choices[0]
    assert [t.token for t in last.logprobs.content] == [t.token for t in tokens]
    assert client.chat.completions.create(**ask).choices[0].logprobs is None


def test_top_logprobs_without_logprobs_gets_400(engine) -> None:
    url = f"{engine[1].base_url}/chat/completions"
    for bad in ({"top_logprobs": 2}, {"logprobs": True, "top_logprobs": 21}, {"logprobs": "yes"}):
        error = _assert_openai_error(httpx.post(url, json={"messages": CONTEXT_PROMPT, **bad}), 400)
        assert error["param"] in ("top_logprobs", "logprobs")


async def test_first_token_odds_name_the_greedy_first_token_likeliest(
    engine, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, engine_model=SMALL)
    odds = await first_token_odds(
        engine[1], CONTEXT_PROMPT, model=engine[0].info.id, settings=settings
    )
    first = openai.OpenAI(base_url=engine[1].base_url, api_key="x").chat.completions.create(
        model=engine[0].info.id, messages=CONTEXT_PROMPT, temperature=0, max_tokens=1
    )
    assert len(odds) == 20 and max(odds, key=odds.get) == first.choices[0].message.content


def test_a_greedy_request_reads_only_what_its_prompt_does_not_share_with_the_last(
    engine, client
) -> None:
    """The system prompt read for one question is not read again for the next."""
    ask = {"model": engine[0].info.id, "temperature": 0, "max_tokens": 24}
    first = [CONTEXT_PROMPT[0], {"role": "user", "content": "Question: What is a vault?"}]
    client.chat.completions.create(**ask, messages=first)
    before = _stats(engine[1])["prefix_tokens_reused"]
    second = client.chat.completions.create(**ask, messages=CONTEXT_PROMPT)
    reused = _stats(engine[1])["prefix_tokens_reused"] - before
    # The system turn and the user turn's opening are shared; the context and question are not.
    assert 10 <= reused < second.usage.prompt_tokens - 20


async def test_a_kept_prefix_answers_as_a_fresh_generator() -> None:
    """Greedy answers to prompts that share a prefix, and a max_tokens limit, come out the same
    whether the shared part is read again or kept from the request before, up to the noise of
    8-bit activations (see :func:`_agree`)."""
    model_dir = MODELS_DIR / TIERS[SMALL].folder
    fresh, kept = Engine(model_dir, reuse_prefix=False), Engine(model_dir, reuse_prefix=True)
    prompts = [
        CONTEXT_PROMPT,
        [CONTEXT_PROMPT[0], {"role": "user", "content": "Write a long story about a dragon."}],
        [CONTEXT_PROMPT[0], {"role": "user", "content": "Context:\n[1] Bikes go in the shed."}],
        CONTEXT_PROMPT,
    ]
    for messages in prompts:
        for limit in (40, 5):
            (_, a), (_, b) = [await _answer(e, messages, limit) for e in (fresh, kept)]
            _agree(a.logprobs, b.logprobs)
            assert a.completion_tokens <= limit and b.completion_tokens <= limit
    assert fresh.stats.prefix_tokens_reused == 0
    assert kept.stats.prefix_tokens_reused > 0


def _agree(a: Sequence[TokenLogprob], b: Sequence[TokenLogprob]) -> None:
    """The same tokens with log-probabilities within 0.25, up to where the model was nearly
    undecided: its two likeliest tokens the same two on both sides and within 0.25 of each
    other. There a token read alone and the same token read with the prompt can tip either
    way: each token's activations are rounded to 8 bits (by int8 products, or by the 4-bit
    projections' int8 compute), and attention over a kept prefix adds its floats in another
    order. SmolLM2 in 4 bits moved one by 0.11 on a CPU with VNNI, and by 0.16 on one with
    AVX2 only where all of the prompt but its last token was kept, so that token was
    multiplied as a row of its own; a kept prefix one token too long moved them by
    0.37-0.52, or split at tokens that were not a near tie, and fails this."""
    for x, y in zip(a, b):
        if x.token != y.token:
            assert {t for t, _ in x.top[:2]} == {t for t, _ in y.top[:2]}, (x, y)
            assert x.top[0][1] - x.top[1][1] < 0.25 and y.top[0][1] - y.top[1][1] < 0.25
            return
        assert abs(x.logprob - y.logprob) < 0.25, (x, y)
    assert len(a) == len(b)


async def _answer(engine: Engine, messages: list[dict[str, str]], max_tokens: int) -> tuple:
    text, end = "", None
    ids = engine.encode(engine.render(messages))
    sampling = Sampling(max_tokens=max_tokens, temperature=0.0, top_logprobs=2)
    async for event in engine.generate(ids, sampling):
        if isinstance(event, Delta):
            text += event.text
        else:
            end = event
    return text, end


async def test_four_concurrent_requests_all_complete_with_the_fact(engine) -> None:
    client = openai.AsyncOpenAI(base_url=engine[1].base_url, api_key="x", max_retries=0, timeout=60)

    async def ask() -> tuple[str, str | None]:
        # The same greedy request four times: each answer must be whole, not a share of one.
        stream = await client.chat.completions.create(
            model=engine[0].info.id, messages=CONTEXT_PROMPT, stream=True, temperature=0,
            max_tokens=24,
        )  # fmt: skip
        text, finish = [], None
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        return "".join(text), finish

    answers = await asyncio.wait_for(asyncio.gather(*(ask() for _ in range(4))), timeout=60)
    await client.close()
    assert len(answers) == 4
    for text, finish in answers:
        assert "TANGERINE" in text.upper(), text
        assert finish in ("stop", "length")


def test_disconnect_mid_stream_stops_generation(engine, client) -> None:
    process, endpoint = engine
    model = process.info.id
    before = _stats(endpoint)
    # ignore_eos keeps the model talking for 4000 tokens (about a minute) unless stopped.
    stream = client.chat.completions.create(
        model=model, stream=True, max_tokens=4000, temperature=0,
        messages=[{"role": "user", "content": "Tell me everything about oceans."}],
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    received = 0
    for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received >= 5:
            break
    stream.close()
    abandoned_at = time.monotonic()
    while _stats(endpoint)["cancelled"] == before["cancelled"]:
        assert time.monotonic() - abandoned_at < 10, "the server kept generating"
        time.sleep(0.05)
    assert _stats(endpoint)["last_cancelled_tokens"] < 1000
    # The single generation worker is free again at once.
    started = time.monotonic()
    reply = client.chat.completions.create(
        model=model, messages=CONTEXT_PROMPT, max_tokens=5
    )
    assert reply.usage.completion_tokens > 0 and time.monotonic() - started < 10


# --- the default tier ------------------------------------------------------------------------
RENTALS = [
    "Brightwater Kayaks rents touring kayaks by the day. A rented kayak must be back at the "
    "boathouse within 48 hours; each late day costs 15 euros.",
    "The boathouse opens at 8:00 and closes at 19:00 from May to September.",
    "Life jackets are included with every rental and must be worn on the water.",
]


def test_default_tier_answers_a_grounded_question_from_its_context(tmp_path: Path) -> None:
    default = TIERS[Settings.model_fields["engine_model"].default]
    with EngineProcess(make_settings(tmp_path, engine_model=default.name)) as process:
        endpoint, info = process.endpoint, process.info
        assert endpoint is not None and info is not None and info.id == default.folder
        assert info.context_tokens == default.context_tokens
        # The app's own prompt for this tier. A hand-written one ("answer that the documents
        # do not say") had the 4-bit model's first token 0.06 nats from a refusal: a coin flip.
        hits = [Hit(f"rentals.md#{n}", "rentals.md", None, None, text, 1.0)
                for n, text in enumerate(RENTALS)]  # fmt: skip
        question = "How long may I keep a kayak I rented, and what happens if I am late?"
        prompt = build_prompt(question, hits, settings=make_settings(tmp_path), style=ON_CPU)
        client = openai.OpenAI(base_url=endpoint.base_url, api_key="x", max_retries=0, timeout=300)
        reply = client.chat.completions.create(
            model=info.id, messages=prompt.messages, temperature=0, max_tokens=80
        )
    answer = reply.choices[0].message.content
    assert "48" in answer and "15" in answer, answer
    assert reply.choices[0].finish_reason == "stop", answer


# --- errors ----------------------------------------------------------------------------
def _assert_openai_error(reply: httpx.Response, status: int) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_malformed_json_gets_400(engine) -> None:
    reply = httpx.post(
        f"{engine[1].base_url}/chat/completions",
        content=b'{"model": ',
        headers={"content-type": "application/json"},
    )
    assert "not valid JSON" in _assert_openai_error(reply, 400)["message"]


def test_missing_messages_gets_400(engine) -> None:
    reply = httpx.post(f"{engine[1].base_url}/chat/completions", json={"model": engine[0].info.id})
    assert _assert_openai_error(reply, 400)["param"] == "messages"


def test_bad_parameters_get_400_not_500(engine) -> None:
    url = f"{engine[1].base_url}/chat/completions"
    for bad in (
        {"temperature": "hot"},
        {"max_tokens": 0},
        {"stop": 3},
        {"messages": [{"role": "x"}]},
        [1, 2],
    ):
        body = bad if isinstance(bad, list) else {"messages": CONTEXT_PROMPT, **bad}
        _assert_openai_error(httpx.post(url, json=body), 400)


def test_unknown_model_gets_404_through_the_sdk(engine, client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-9", messages=CONTEXT_PROMPT)
    assert caught.value.body["code"] == "model_not_found"


def test_prompt_longer_than_the_context_gets_400_with_a_message(engine, client) -> None:
    huge = "word " * 9000  # about 9,000 tokens against a context of 8,192
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=engine[0].info.id, messages=[{"role": "user", "content": huge}]
        )
    assert "maximum context length is 8192 tokens" in caught.value.body["message"]
    assert caught.value.body["code"] == "context_length_exceeded"


def test_unknown_route_gets_json_404(engine) -> None:
    _assert_openai_error(httpx.get(engine[1].base_url + "/nothing-here"), 404)


# --- processes ------------------------------------------------------------------------------
def test_stop_leaves_no_engine_process_behind(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, engine_model=SMALL)
    with EngineProcess(settings) as process:
        pid = process.pid
        assert pid and _alive(pid)
        assert httpx.get(process.endpoint.base_url + "/models").status_code == 200
    assert not _alive(pid)
    assert process.pid is None


@pytest.mark.parametrize("started_from", ["main thread", "worker thread"])
def test_engine_dies_when_its_parent_is_killed(tmp_path: Path, started_from: str) -> None:
    # The app starts the engine from a worker thread (asyncio.to_thread), where the
    # parent-death signal cannot be used: there only the stdin EOF watch ends the child.
    start = (
        "t = threading.Thread(target=p.start)\nt.start()\nt.join()\n"
        if started_from == "worker thread"
        else "p.start()\n"
    )
    parent_code = (
        "import sys, threading, time\n"
        "from rag.embedded_llm import EngineProcess\n"
        "from tests.support import make_settings\n"
        "from pathlib import Path\n"
        f"p = EngineProcess(make_settings(Path({str(tmp_path)!r}), engine_model={SMALL!r}))\n"
        f"{start}"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, f"engine {child} outlived its killed parent"
        time.sleep(0.1)


def test_shared_engine_is_stopped_when_the_app_exits(tmp_path: Path) -> None:
    app_code = (
        "from pathlib import Path\n"
        "from rag.embedded_llm import shared_engine\n"
        "from tests.support import make_settings\n"
        f"settings = make_settings(Path({str(tmp_path)!r}), engine_model={SMALL!r})\n"
        "engine = shared_engine(settings)\n"
        "engine.start()\n"
        "assert shared_engine(settings) is engine and engine.start() is engine.endpoint\n"
        "print(engine.pid, flush=True)\n"
    )  # exits without stop(): the atexit hook has to do it
    done = subprocess.run([sys.executable, "-c", app_code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not _alive(int(done.stdout))


def test_engine_process_without_a_model_says_how_to_build(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, engine_model_dir_override=tmp_path / "none")
    assert not engine_available(settings)
    with pytest.raises(ModelMissing, match="rag.embedded_llm build"):
        EngineProcess(settings).start()


def test_serve_without_a_model_exits_1_with_a_sentence(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rag.embedded_llm", "serve", "--port", "0", "--model-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "python -m rag.embedded_llm build" in done.stderr and "make models" in done.stderr


# --- pure logic ---------------------------------------------------------------------------------
def test_stop_matcher_holds_back_a_partial_stop_sequence() -> None:
    stops = StopMatcher(["END"])
    assert stops.feed("hello E") == ("hello ", False)
    assert stops.feed("N") == ("", False)
    assert stops.feed("D and more") == ("", True)
    again = StopMatcher(["END"])
    assert again.feed("hello E") == ("hello ", False)
    assert again.feed("xit") == ("Exit", False)
    assert again.flush() == ""


def test_a_generation_looping_on_the_same_phrase_is_detected() -> None:
    phrase = [11, 22, 33, 44]
    assert ends_in_loop([1, 2, 3] + phrase * 3)
    assert not ends_in_loop([1, 2, 3] + phrase * 2)  # twice can be an honest repeat
    assert not ends_in_loop([7, 7, 7, 7, 7, 7])  # runs shorter than 3 tokens: "1 1 1", rules
    assert not ends_in_loop(list(range(100)))
    assert ends_in_loop([5] + [9, 8, 7] * 3)


def test_the_engine_stops_a_looping_answer_before_max_tokens(client: openai.OpenAI) -> None:
    model = client.models.list().data[0].id
    # SmolLM2-135M answers this by repeating it, line after line, until max_tokens.
    done = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "The answers to this question are:"}],
        max_tokens=200,
        temperature=0,
    )
    lines = [line for line in done.choices[0].message.content.splitlines() if line.strip()]
    assert done.choices[0].finish_reason == "stop"
    assert done.usage.completion_tokens < 100
    assert all(lines[i : i + 4].count(lines[i]) < 4 for i in range(len(lines)))


def test_engine_bench_times_the_served_tier(tmp_path: Path) -> None:
    # bench_engine is how RESULTS.md's tier table is made; it had gone stale once unnoticed.
    run = bench_server(make_settings(tmp_path, engine_model=SMALL), tokens=8, reps=1)
    assert run.prompt_tokens > 100 and 0 < run.ttft_s < run.answer_s
    assert run.decode_tps > 0 and run.peak_gb > 0.1
    assert "TANGERINE" in run.answer.upper()
