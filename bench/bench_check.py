"""The embedded model's own check past the relevance gate, measured (bench_check).

    python -m bench.bench_check

Ingests ``docs/`` and the Brightwater Kayaks test corpus as :mod:`bench.bench_gate`
does, then, for every question of the answer sets and of the sets held out from the
threshold (:data:`SETS`) that the gate lets through, builds
the prompt the answer pipeline builds for the default tier (:data:`rag.prompt.ON_CPU`,
a follow-up checked joined to the question before it) and reads the model's
probability of "yes" to :data:`rag.grounding.ANSWERABLE_CHECK` from its first-token
log-probabilities (:func:`rag.grounding.yes_share`), in this process, with the engine
the server runs. Reports how many uncovered and answerable questions fall below
``RAG_CHECK_MIN_YES``, and where the two groups' probabilities lie.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from bench.bench_gate import QA_DIR, REPO, WORK, _retriever
from rag.answer import search_query
from rag.answer_eval import AnswerQA, load_answer_set
from rag.embedded_llm.generation import Engine, Finished, Sampling
from rag.grounding import judge, keep_close, yes_share
from rag.prompt import ON_CPU, build_prompt, check_messages
from rag.retrieve import Retriever
from rag.settings import Settings
from tests.corpus import build_corpus

ODDS = Sampling(max_tokens=1, temperature=0.0, top_logprobs=20)
# The answer sets the threshold is set on, then questions held out from it: uncovered ones,
# and the retrieval sets' answerable ones (their false refusals).
SETS = [
    ("docs", "answers.jsonl"), ("corpus", "answers_corpus.jsonl"),
    ("docs", "uncovered_docs.jsonl"), ("corpus", "uncovered_corpus.jsonl"),
    ("docs", "sample_docs.jsonl"), ("corpus", "corpus.jsonl"),
]  # fmt: skip


async def _share(engine: Engine, retriever: Retriever, qa: AnswerQA) -> float | None:
    """The check's "yes" probability for ``qa``, or None when the gate stops it first."""
    settings = retriever.settings
    query = search_query(qa.q, qa.history)
    hits = retriever.search(query, settings.top_k)
    if not judge(query, hits, settings, latest=qa.q).covered:
        return None
    prompt = build_prompt(
        qa.q, keep_close(hits, settings), settings=settings, history=qa.history,
        context_tokens=engine.info.context_tokens, style=ON_CPU, searched=query,
    )  # fmt: skip
    ids = engine.encode(engine.render(check_messages(prompt, qa.q, query)))
    async for event in engine.generate(ids, ODDS):
        if isinstance(event, Finished) and event.logprobs:
            return yes_share(dict(event.logprobs[0].top))
    return None


def _row(name: str, shares: Sequence[tuple[AnswerQA, float]], threshold: float) -> str:
    uncovered = sorted(s for qa, s in shares if qa.refuse)
    answerable = sorted(s for qa, s in shares if not qa.refuse)

    def below(values: list[float]) -> str:
        return f"{sum(v < threshold for v in values)}/{len(values)}"

    spread = f"{answerable[0]:.2f}" if answerable else "-"
    return (
        f"| `{name}` | {below(uncovered)} | {below(answerable)} | "
        f"{', '.join(f'{v:.2f}' for v in uncovered)} | {spread} |"
    )


async def _measure() -> list[str]:
    settings = Settings(_env_file=None, models_dir_override=REPO / ".data" / "models")
    engine = Engine(settings.engine_model_dir)
    corpus = build_corpus(WORK / "gate-corpus-docs")
    # Stores of their own: `python -m bench gate check` keeps bench_gate's open in this process.
    stores = {
        "docs": _retriever("check-docs", REPO / "docs"),
        "corpus": _retriever("check-corpus", corpus),
    }
    rows = []
    for store, file in SETS:
        shares = []
        for qa in load_answer_set(QA_DIR / file):
            share = await _share(engine, stores[store], qa)
            if share is not None:
                shares.append((qa, share))
        rows.append(_row(file, shares, settings.check_min_yes))
    return [
        f"Model {engine.info.id}; threshold `RAG_CHECK_MIN_YES` = {settings.check_min_yes}.",
        "",
        "| set (questions past the gate) | uncovered below | answerable below (false refusals) "
        "| uncovered: P(yes) | answerable: lowest P(yes) |",
        "|---|---|---|---|---|",
        *rows,
    ]


def main(argv: list[str] | None = None) -> str:
    """Run the measurement and return the markdown section."""
    return "\n".join([
        "## The embedded model's own check past the gate (bench_check)",
        "",
        "`python -m bench.bench_check`: each question the gate lets through, as the answer "
        "pipeline asks the default tier; \"below\" is what the check turns into \"not in your "
        "documents\".",
        "",
        *asyncio.run(_measure()),
    ]) + "\n"  # fmt: skip


if __name__ == "__main__":
    print(main(sys.argv[1:]))
