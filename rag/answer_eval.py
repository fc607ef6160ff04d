"""Measure answers, not only retrieval: ask the real answer pipeline and score what comes back.

    python -m rag.answer_eval QA.jsonl [--models A B ...] [--json] [--k N] [--data-dir DIR]
                                       [--details FILE]

Each line of QA.jsonl is one question::

    {"q": "Which port does Ollama use?", "facts": ["11434"], "sources": ["configuration.md"]}
    {"q": "And which model does it suggest?", "facts": [{"re": "phi-?4-mini"}],
     "sources": ["configuration.md"], "history": [{"role": "user", "content": "..."}, ...]}
    {"q": "What is the capital of France?", "refuse": true}

``facts`` are what a right answer must state: a string matches case-insensitively
where no letter is glued to a letter and no digit to a digit at either end ("28"
is not found in "128", "port" not in "ports"); ``{"re": ...}`` is a Python regex,
searched case-insensitively. Both look at the answer with Markdown emphasis and
code marks removed and whitespace collapsed, so ``**28** days`` states "28 days".
``sources`` are the files (as ingest names them, ``policies/expenses.txt``) whose
passage may be cited first. ``history`` makes the line a follow-up. ``refuse``
marks a question the documents do not cover.

Scoring, per question (:func:`score`):

- answerable: *right* when every fact is present, the first source is expected and
  the answer is not a refusal; a *false refusal* when it is a refusal; else *wrong*;
- not covered: *refused right* when the answer is a refusal, else *not refused*;
- a model server that failed is an *error*, left out of the timings.

The first source is the passage the answer cites first (:func:`first_source`),
never merely the best retrieved one: an answer that cites nothing has no source.
Refusals are detected conservatively (:func:`is_refusal`): an uncovered question
counts as refused only when the answer says so near its start, so a model that
answers "Paris" and cites a passage is never credited with declining.

The one call into the answer pipeline is :func:`ask`, kept small on purpose: a change
to the pipeline's signature touches that function, never the scoring. Models are asked one after the
other and questions one at a time, because on a small CPU two generations at once
each run at half speed and the timings would measure the contention.

Per model the report gives those counts, *facts right* (answers stating every fact
whatever they cite, which tells a model that does not cite from one that invents),
and the p50/p95 of the time to first token and to the full answer (:func:`percentile`).
How many refusals were answers the pipeline withdrew as guesses
(:func:`rag.grounding.unbacked`) is counted apart, for uncovered and for answerable
questions. ``--details FILE`` writes one JSON line per question and model: the
outcome, the whole answer, the passages' files and what was cited and withdrawn.
Quality is reported, not asserted: the exit status is 0 when every model answered at
least one question, 1 on a readable error (bad answer set, nothing ingested, a model
that answered nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.answer import AnswerDone, AnswerStart, answer
from rag.errors import NoDocuments, RagError
from rag.grounding import is_refusal as declines
from rag.llm import Message
from rag.routing import Route
from rag.settings import Settings, get_settings

# --- the answer set -----------------------------------------------------------------------


class AnswerSetInvalid(RagError):
    """A line of an answer set cannot be read as a question with facts and sources."""


@dataclass(frozen=True)
class Fact:
    """One thing a right answer must state: ``label`` for people, ``pattern`` to find it."""

    label: str
    pattern: re.Pattern[str]

    def found_in(self, text: str) -> bool:
        """True when the (normalised, see :func:`normalise`) ``text`` states this fact."""
        return self.pattern.search(normalise(text)) is not None


@dataclass(frozen=True)
class AnswerQA:
    """One question of an answer set (see the module docstring for the line format)."""

    q: str
    facts: tuple[Fact, ...] = ()
    sources: tuple[str, ...] = ()
    history: tuple[Message, ...] = ()
    refuse: bool = False


def string_fact(text: str) -> Fact:
    """A fact matched as plain text, case-insensitively, not inside a longer word or number.

    >>> string_fact("28").found_in("Everyone gets 28 days"), string_fact("28").found_in("128")
    (True, False)
    """
    if not text.strip():
        raise ValueError("a fact must not be empty")
    before = r"(?<!\d)" if text[0].isdigit() else r"(?<![^\W\d_])" if text[0].isalpha() else ""
    after = r"(?!\d)" if text[-1].isdigit() else r"(?![^\W\d_])" if text[-1].isalpha() else ""
    return Fact(text, re.compile(before + re.escape(normalise(text)) + after, re.IGNORECASE))


def parse_fact(raw: object) -> Fact:
    """A fact from its JSON form: a string, or ``{"re": "regex"}`` (a Python regex)."""
    if isinstance(raw, str):
        return string_fact(raw)
    if isinstance(raw, dict) and set(raw) == {"re"} and isinstance(raw["re"], str):
        return Fact(f"/{raw['re']}/", re.compile(raw["re"], re.IGNORECASE))
    raise ValueError(f'a fact is a string or {{"re": "regex"}}, not {raw!r}')


def _listed(record: dict[str, Any], key: str) -> list[Any]:
    value = record.get(key) or []
    if isinstance(value, str) and key == "sources":
        return [value]
    if not isinstance(value, list):
        raise TypeError(f'"{key}" must be a list')
    return value


def _turn(raw: Any) -> Message:
    if not isinstance(raw, dict) or raw.get("role") not in ("user", "assistant"):
        raise ValueError('history turns are {"role": "user"|"assistant", "content": "..."}')
    if not isinstance(raw.get("content"), str):
        raise TypeError("a history turn's content must be text")
    return {"role": raw["role"], "content": raw["content"]}


def parse_line(record: dict[str, Any]) -> AnswerQA:
    """One :class:`AnswerQA` from a parsed JSON line; ValueError/KeyError/TypeError when malformed."""
    question = record["q"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError('"q" must be a question')
    refuse = record.get("refuse", False)
    if not isinstance(refuse, bool):
        raise TypeError('"refuse" must be true or false')
    sources = tuple(str(s) for s in _listed(record, "sources"))
    if not refuse and not sources:
        raise ValueError('an answerable question needs "sources" (or "refuse": true)')
    return AnswerQA(
        q=question.strip(),
        facts=tuple(parse_fact(f) for f in _listed(record, "facts")),
        sources=sources,
        history=tuple(_turn(t) for t in _listed(record, "history")),
        refuse=refuse,
    )


def load_answer_set(path: Path) -> list[AnswerQA]:
    """Read an answer set; blank lines are skipped, a malformed line is an error naming it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AnswerSetInvalid(
            f"Cannot read the answer set {path}: {exc.strerror or exc}."
        ) from exc
    items: list[AnswerQA] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(parse_line(json.loads(line)))
        except (ValueError, KeyError, TypeError, AttributeError, re.error) as exc:
            raise AnswerSetInvalid(
                f"{path}, line {number}: expected "
                '{"q": "...", "facts": ["..." or {"re": "..."}], "sources": ["file"]} '
                f'or {{"q": "...", "refuse": true}} ({exc.__class__.__name__}: {exc}). '
                "Fix that line of the answer set."
            ) from exc
    if not items:
        raise AnswerSetInvalid(f"The answer set {path} holds no questions: add one per line.")
    return items


# --- scoring (pure) -------------------------------------------------------------------------

# Emphasis and code marks say nothing about the content: "**28** days" states "28 days".
_MARKUP = re.compile(r"[*`]+")
_SPACES = re.compile(r"\s+")


def plain(text: str) -> str:
    """``text`` without Markdown emphasis and code marks, with curly quotes straightened."""
    return _MARKUP.sub("", text).replace("\u2019", "'").replace("\u2018", "'")


def normalise(text: str) -> str:
    """:func:`plain` text with whitespace collapsed: what facts are looked for in."""
    return _SPACES.sub(" ", plain(text)).strip()


def missing_facts(text: str, facts: Sequence[Fact]) -> list[str]:
    """The labels of the facts ``text`` does not state, in order (empty: all present)."""
    return [fact.label for fact in facts if not fact.found_in(text)]


# [1], [2][3], and the list forms models write as well: [1, 2], [1,2].
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def cited_numbers(text: str) -> list[int]:
    """Passage numbers cited as ``[n]`` (also ``[1, 2]``), in order of first citation.

    >>> cited_numbers("Use docs/ [2][1]. Then ingest [2, 3].")
    [2, 1, 3]
    """
    seen: list[int] = []
    for match in _CITATION.finditer(text):
        for number in (int(n) for n in match.group(1).split(",")):
            if number not in seen:
                seen.append(number)
    return seen


def first_source(
    text: str, passages: Sequence[str], cited: Sequence[str] | None = None
) -> str | None:
    """The file of the passage the answer cites first, or None when it cites nothing.

    ``cited`` is the pipeline's own list of the passages an answer cites, when it
    gives one (``AnswerDone.sources``): its first entry is the first source. Else the
    first ``[n]`` in ``text`` that names one of ``passages`` (the files of the
    passages the model was given, numbered from 1 as in the prompt); a number no
    passage carries is a citation of nothing and skipped.
    """
    if cited is not None:
        return cited[0] if cited else None
    for number in cited_numbers(text):
        if 1 <= number <= len(passages):
            return passages[number - 1]
    return None


# The relevance gate's reply (the pipeline answers with it instead of asking a model).
GATE_PREFIX = "Your documents do not seem to cover"

def is_refusal(text: str, refused: bool = False) -> bool:
    """True when the answer declines: the pipeline says so (``AnswerDone.refused``, the
    relevance gate), or the model does near its start (:func:`rag.grounding.is_refusal`)."""
    return refused or text.lstrip().startswith(GATE_PREFIX) or declines(text)


class Outcome(enum.Enum):
    """How one answer fared (see the module docstring)."""

    RIGHT = "right"
    WRONG = "wrong"
    FALSE_REFUSAL = "false refusal"
    REFUSED_RIGHT = "refused right"
    NOT_REFUSED = "not refused"
    ERROR = "error"


@dataclass(frozen=True)
class Attempt:
    """What the pipeline answered to one question, as plain data.

    ``passages`` are the files of the passages the model was given, numbered [1]..;
    ``cited`` the files of the passages the pipeline says the answer cites (None
    when it does not say); ``refused`` the pipeline's own refusal verdict;
    ``answered_by`` is ``endpoint:model``. ``error`` is set (and the rest empty)
    when no answer came back.
    """

    text: str = ""
    passages: tuple[str, ...] = ()
    cited: tuple[str, ...] | None = None
    refused: bool = False
    ttft_s: float = 0.0
    total_s: float = 0.0
    answered_by: str = ""
    error: str = ""
    flagged: int = 0  # answer sentences the support check marked as not backed by their sources
    withdrawn: str = ""  # why the pipeline withdrew the model's answer (Unbacked's name), if it did
    draft: str = ""  # the withdrawn answer's text


@dataclass(frozen=True)
class Scored:
    """One question's :class:`Outcome`, with what was missing and what was cited first."""

    qa: AnswerQA
    attempt: Attempt
    outcome: Outcome
    missing: tuple[str, ...] = ()
    first_source: str | None = None


def score(qa: AnswerQA, attempt: Attempt) -> Scored:
    """Score one attempt at ``qa``: right, wrong, false refusal, refused right, not refused."""
    if attempt.error:
        return Scored(qa, attempt, Outcome.ERROR)
    refused = is_refusal(attempt.text, attempt.refused)
    if qa.refuse:
        return Scored(qa, attempt, Outcome.REFUSED_RIGHT if refused else Outcome.NOT_REFUSED)
    source = first_source(attempt.text, attempt.passages, attempt.cited)
    if refused:
        return Scored(qa, attempt, Outcome.FALSE_REFUSAL, first_source=source)
    missing = tuple(missing_facts(attempt.text, qa.facts))
    right = not missing and source in qa.sources
    return Scored(qa, attempt, Outcome.RIGHT if right else Outcome.WRONG, missing, source)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) by linear interpolation between ranks; None when empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 95)
    (2.5, 3.85)
    """
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * p / 100
    low, high = math.floor(position), math.ceil(position)
    value = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return round(value, 4)


@dataclass
class ModelReport:
    """One model's figures over an answer set."""

    model: str
    scored: list[Scored] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        """How many questions ended in ``outcome``."""
        return sum(s.outcome is outcome for s in self.scored)

    def withdrawn(self, outcome: Outcome) -> int:
        """How many answers ending in ``outcome`` the pipeline withdrew as guesses."""
        return sum(s.outcome is outcome and bool(s.attempt.withdrawn) for s in self.scored)

    def flagged(self, outcome: Outcome) -> int:
        """How many answers ending in ``outcome`` had a sentence marked as unsupported."""
        return sum(s.outcome is outcome and s.attempt.flagged > 0 for s in self.scored)

    @property
    def answerable(self) -> int:
        """Questions the documents cover."""
        return sum(not s.qa.refuse for s in self.scored)

    @property
    def uncovered(self) -> int:
        """Questions the documents do not cover."""
        return sum(s.qa.refuse for s in self.scored)

    @property
    def facts_right(self) -> int:
        """Answers that state every fact, whatever they cite: right ones plus those that
        only lack the right first source (a model that knows but does not cite)."""
        return sum(
            s.outcome is Outcome.RIGHT or (s.outcome is Outcome.WRONG and not s.missing)
            for s in self.scored
        )

    @property
    def endpoint(self) -> str:
        """The ``endpoint:model`` that answered most questions ("" when none did)."""
        answered = Counter(s.attempt.answered_by for s in self.scored if s.attempt.answered_by)
        return answered.most_common(1)[0][0] if answered else ""

    def timings(self, which: Callable[[Attempt], float]) -> list[float]:
        """One timing (``ttft_s`` or ``total_s``) of every question that was answered."""
        return [which(s.attempt) for s in self.scored if s.outcome is not Outcome.ERROR]

    def latency(self) -> dict[str, float | None]:
        """p50 and p95 of the time to first token and to the full answer, in seconds."""
        ttft = self.timings(lambda a: a.ttft_s)
        total = self.timings(lambda a: a.total_s)
        return {
            "ttft_p50_s": percentile(ttft, 50),
            "ttft_p95_s": percentile(ttft, 95),
            "total_p50_s": percentile(total, 50),
            "total_p95_s": percentile(total, 95),
        }

    def as_dict(self) -> dict[str, object]:
        """The ``--json`` line: counts, timings and the questions not scored right."""
        return {
            "model": self.model,
            "endpoint": self.endpoint,
            "questions": len(self.scored),
            "answerable": self.answerable,
            "uncovered": self.uncovered,
            "answered_right": self.count(Outcome.RIGHT),
            "refused_right": self.count(Outcome.REFUSED_RIGHT),
            "false_refusals": self.count(Outcome.FALSE_REFUSAL),
            "wrong_answers": self.count(Outcome.WRONG),
            "facts_right": self.facts_right,
            "not_refused": self.count(Outcome.NOT_REFUSED),
            "errors": self.count(Outcome.ERROR),
            # How often the support check marks a sentence, in right and in wrong answers.
            "flagged_right": self.flagged(Outcome.RIGHT),
            "flagged_wrong": self.flagged(Outcome.WRONG),
            # Refusals that were a model's answer withdrawn as a guess, right and false ones.
            "withdrawn_right": self.withdrawn(Outcome.REFUSED_RIGHT),
            "withdrawn_false": self.withdrawn(Outcome.FALSE_REFUSAL),
            **self.latency(),
            "misses": [miss_dict(s) for s in self.scored if s.outcome not in _GOOD],
        }


_GOOD = (Outcome.RIGHT, Outcome.REFUSED_RIGHT)
ANSWER_EXCERPT_CHARS = 200


def detail_dict(report: ModelReport, scored: Scored) -> dict[str, object]:
    """One ``--details`` line: a question, how it fared, and the whole answer."""
    attempt = scored.attempt
    return {
        "model": report.model,
        "q": scored.qa.q,
        "outcome": scored.outcome.value,
        "missing": list(scored.missing),
        "first_source": scored.first_source,
        "expected": list(scored.qa.sources),
        "answer": attempt.error or attempt.text,
        "passages": list(attempt.passages),
        "withdrawn": attempt.withdrawn,
        "draft": attempt.draft,
        "ttft_s": round(attempt.ttft_s, 3),
        "total_s": round(attempt.total_s, 3),
    }


def miss_dict(scored: Scored) -> dict[str, object]:
    """A question not scored right, for the JSON line: why, and the start of the answer."""
    attempt = scored.attempt
    return {
        "q": scored.qa.q,
        "outcome": scored.outcome.value,
        "missing": list(scored.missing),
        "first_source": scored.first_source,
        "expected": list(scored.qa.sources),
        "answer": attempt.error or normalise(attempt.text)[:ANSWER_EXCERPT_CHARS],
    }


# --- asking the pipeline -------------------------------------------------------------------


async def ask(qa: AnswerQA, model: str | None, settings: Settings) -> Attempt:
    """Ask the answer pipeline ``qa``'s question (with its history) and keep what scoring needs.

    ``model`` is a model id on the local endpoint, an ``endpoint:model`` pinned id, or
    None for the model the chat would pick. This is the only call into
    :func:`rag.answer.answer`; the timings are the pipeline's own (from the call,
    retrieval included). Raises what the pipeline raises (RagError sentences).
    """
    passages: tuple[str, ...] = ()
    done: AnswerDone | None = None
    async for event in answer(qa.q, settings, history=list(qa.history), model=model):
        if isinstance(event, AnswerStart):
            passages = tuple(hit.source for hit in event.hits)
        elif isinstance(event, AnswerDone):
            done = event
    if done is None:
        raise RagError("The answer pipeline ended without an answer; report this as a bug.")
    return Attempt(
        text=done.text,
        passages=passages,
        cited=tuple(c.hit.source for c in done.sources),
        refused=done.refused,
        ttft_s=done.ttft_s,
        total_s=done.total_s,
        answered_by=_answered_by(done.route),
        flagged=len(done.unsupported),
        withdrawn=done.withdrawn.reason.name if done.withdrawn else "",
        draft=done.withdrawn.draft if done.withdrawn else "",
    )


def _answered_by(route: Route | None) -> str:
    # A reply the pipeline gives without asking a model (the relevance gate) may carry no route.
    return f"{route.provider.name}:{route.model}" if route is not None else ""


Progress = Callable[[int, int, str, Scored], None]


async def evaluate_model(
    qas: Sequence[AnswerQA],
    model: str | None,
    settings: Settings,
    progress: Progress | None = None,
) -> ModelReport:
    """Ask ``model`` every question in turn and score each answer.

    A question the model server fails on is an :attr:`Outcome.ERROR` and the run goes
    on; an empty store (:class:`~rag.errors.NoDocuments`) stops it, since no question
    can then be answered from the documents.
    """
    label = model or "default"
    report = ModelReport(label)
    for number, qa in enumerate(qas, start=1):
        try:
            attempt = await ask(qa, model, settings)
        except NoDocuments:
            raise
        except RagError as exc:
            attempt = Attempt(error=str(exc))
        report.scored.append(score(qa, attempt))
        if progress is not None:
            progress(number, len(qas), label, report.scored[-1])
    return report


async def evaluate(
    qas: Sequence[AnswerQA],
    models: Sequence[str | None],
    settings: Settings,
    progress: Progress | None = None,
) -> list[ModelReport]:
    """One :class:`ModelReport` per model, in order; models run one after the other."""
    return [await evaluate_model(qas, model, settings, progress) for model in models]


# --- the CLI -------------------------------------------------------------------------------


def _pair(first: float | None, second: float | None) -> str:
    return " / ".join("-" if v is None else f"{v:.1f}" for v in (first, second))


def format_table(path: Path, reports: Sequence[ModelReport]) -> str:
    """The human summary: the answer set's size, then one row of figures per model."""
    first = reports[0]
    header = ("model", "right", "refused", "false refusals", "wrong", "not refused", "errors",
              "TTFT p50/p95 s", "total p50/p95 s")  # fmt: skip
    rows = [header]
    for report in reports:
        a, u, t = report.answerable, report.uncovered, report.latency()
        name = report.model if report.model != "default" else f"default ({report.endpoint})"
        rows.append(
            (
                name,
                f"{report.count(Outcome.RIGHT)}/{a}",
                f"{report.count(Outcome.REFUSED_RIGHT)}/{u}",
                f"{report.count(Outcome.FALSE_REFUSAL)}/{a}",
                f"{report.count(Outcome.WRONG)}/{a}",
                f"{report.count(Outcome.NOT_REFUSED)}/{u}",
                str(report.count(Outcome.ERROR)),
                _pair(t["ttft_p50_s"], t["ttft_p95_s"]),
                _pair(t["total_p50_s"], t["total_p95_s"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        f"{path}: {len(first.scored)} questions "
        f"({first.answerable} answerable, {first.uncovered} not covered by the documents)"
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _print_progress(number: int, total: int, model: str, scored: Scored) -> None:
    seconds = f" {scored.attempt.total_s:.1f} s" if scored.outcome is not Outcome.ERROR else ""
    print(f"[{number}/{total}] {model}: {scored.outcome.value}{seconds}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rag.answer_eval",
        description="Ask the answer pipeline an answer set and score the answers, per model.",
    )
    parser.add_argument("qa", type=Path, metavar="QA.jsonl")
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help="model ids on the local endpoint, or endpoint:model (default: the chat's model)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per model")
    parser.add_argument("--k", type=int, default=None, help="passages per question (RAG_TOP_K)")
    parser.add_argument("--data-dir", type=Path, default=None, help="store location (RAG_DATA_DIR)")
    parser.add_argument(
        "--details", type=Path, metavar="FILE", help="write one JSON line per question here"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see the module docstring)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.k is not None and args.k < 1:
        parser.error("--k must be at least 1")
    if args.details is not None and not args.details.parent.is_dir():
        parser.error(f"--details: the folder {args.details.parent} does not exist")
    try:
        settings = get_settings().with_overrides(data_dir=args.data_dir, top_k=args.k)
        qas = load_answer_set(args.qa)
        models: list[str | None] = list(args.models) if args.models else [None]
        reports = asyncio.run(evaluate(qas, models, settings, _print_progress))
    except RagError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if args.details is not None:
        lines = [detail_dict(r, s) for r in reports for s in r.scored]
        args.details.write_text(
            "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8"
        )
    if args.json:
        for report in reports:
            print(json.dumps(report.as_dict(), ensure_ascii=False))
    else:
        print(format_table(args.qa, reports))
    # The gate answers without a model; a model none of whose requests got through is silent.
    silent = [r for r in reports if not any(s.attempt.answered_by for s in r.scored)]
    for report in silent:
        error = next((s.attempt.error for s in report.scored if s.attempt.error), "no request")
        print(f"{report.model} answered no question: {error}",
              file=sys.stderr)  # fmt: skip
    return 1 if silent else 0


if __name__ == "__main__":
    sys.exit(main())
