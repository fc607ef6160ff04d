"""Keeping answers tied to the documents: the relevance gate, citations, refusals, support.

Small rules, each measured on the QA sets in ``tests/qa/``:

- :func:`judge` is the gate in front of the model. When no retrieved passage is
  close to the question by meaning (the embedder's cosine similarity) *and* the
  passages share few of the question's content words, the documents do not
  cover it, and the model is not asked to answer from junk. Measured on the
  sample docs and the test corpus (62 answerable, 28 uncovered questions): a
  general-knowledge question ("What is the capital of France?") scores a
  similarity of 0.06-0.17 with no content word in the passages, while only one
  answerable question fell that low. Near misses ("Who is the CEO of
  Brightwater Kayaks?") pass the gate and are left to the model's own refusal,
  which the prompt asks for in exact words. A question that names a setting
  (``RAG_MAX_PASSAGES``) that no retrieved passage contains is not covered either
  (:func:`unknown_names`): no passage can describe it.
- :func:`yes_share` reads the model's own check past the gate: asked
  :data:`ANSWERABLE_CHECK` after the question, in the prompt it is about to answer,
  the embedded 1.5B (int8 products, on a CPU with VNNI) gives "yes" a probability
  of 0.34 or more on every answerable question of both sets, and under 0.3 on 9 of
  the 17 near misses the gate lets through ("Does Local RAG Chat have an iPhone
  app?" 0.01). On a CPU with AVX2 only, its numbers move a little: 9 of the 17 are
  under 0.3 again, and so is one answerable question (0.26).
- :func:`keep_close` drops passages far weaker than the best one before they
  reach the prompt, so an unrelated file never becomes a "source".
- :func:`citations` lists the passages an answer cites (``[n]``), the only ones
  shown as its sources.
- :func:`is_refusal` recognises an answer that says the documents do not cover it.
- :func:`support` scores each answer sentence by how much of it its cited
  passages contain, so a sentence they do not back can be marked.
- :func:`recited` moves a sentence's ``[n]`` to the passage that holds its words when
  the cited one clearly does not (the 1.5B often cites the neighbour of the passage it
  copied from); measured on both answer sets and the held-out ones (bench/RESULTS.md).
- :func:`unbacked` looks at a finished answer for the marks of a guess that the
  check let through: it says nothing the question did not ("The setting that turns on
  dark mode is [3]."), it states a value that neither its passages nor the question
  hold (an invented ``--schedule`` option, "Ollama version 0.1.0"), or it gives no price
  or colour when asked for one ("It costs 22 kg."). Measured on both answer sets
  (bench/RESULTS.md), such an answer is withdrawn for "not in your documents".

>>> citations("Ollama listens on 11434 [2], see also [2][1].", ["a", "b"])
[Citation(number=2, hit='b'), Citation(number=1, hit='a')]
>>> is_refusal("Your documents do not seem to cover this.")
True
>>> round(yes_share({"Yes": -1.6, "No": -0.3, " no": -4.0}), 2)
0.21
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from rag.retrieve import Hit
from rag.settings import Settings

T = TypeVar("T")

NOT_COVERED = "Your documents do not seem to cover this."

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CITE = re.compile(r"\[(\d{1,3})\]")
# A setting or constant spelled out: capitals and digits joined by underscores (LLM_BASE_URL).
_NAME = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
# Words that say nothing about a topic; a question's other words are its content.
_STOPWORDS = frozenset(
    "a an the and or of to in on for with is are be do does did i my me we you your it its this "
    "that what which who whom how when where why can could should would will may might there "
    "their them they have has had get got any some much many not no yes from by at as about "
    "into than then so if up out our us am was were been being please tell".split()
)
# A crude stem: "configure", "configured" and "configuration" share their first five letters.
_STEM = 5
_SUBJECT = (
    r"(?:documents?|context|passages?|sources?|excerpts?|(?:provided|given) (?:text|information))"
)
_VERBS = (
    r"(?:cover|contain|mention|include|say|address|discuss|describe|specify|provide|answer"
    r"|have)"
)
# What models write when they decline. Each alternative names the documents (or the
# speaker's own ignorance), so answers that merely contain a negation ("you do not
# need a GPU", "files that cannot be read are skipped") do not match.
REFUSAL = re.compile(
    "|".join(
        [
            rf"\b{_SUBJECT},? (?:do|does|did)(?: not|n't) (?:seem to |appear to )?{_VERBS}\b",
            r"\bnot (?:explicitly |directly |clearly |specifically )?"
            r"(?:mentioned|covered|specified|stated|found|provided|included|addressed|"
            rf"discussed|described|given) (?:anywhere )?in (?:the|your|these|this)"
            rf" (?:provided |given )?{_SUBJECT}",
            r"\b(?:there is|there's|there are|I have|I found|(?:contain|provide|give|mention)s?"
            r"|has|have) no (?:information|mention|details?)\b",
            r"\bI (?:do not|don't) (?:know|have (?:any |enough )?(?:information|details))\b",
            r"\bI (?:cannot|can't|can not|could not|couldn't|am unable to|am not able to)"
            r" (?:find|answer|determine|tell|say|provide|give|locate|help)\b",
            r"\b(?:cannot|can't|could not) be (?:answered|determined|found) (?:from|in|with)\b",
            r"\bnot (?:enough|sufficient) information\b",
        ]
    ),
    re.IGNORECASE,
)
# A phrase inside a condition or a report of speech ("if the answer says the documents
# do not cover your question, ...") describes a refusal, it is not one.
_HEDGE = re.compile(r"\b(?:if|when|whenever|unless|says?|said)\b", re.IGNORECASE)
_MARKUP = re.compile(r"[*`]+")
# The values an answer can make up: --options, SETTING_NAMES, versions and numbers of 2+ digits.
_VALUE = re.compile(
    rf"(?<![\w-])--[a-z][\w-]*|{_NAME.pattern}"
    r"|(?<![\w.,])\d+(?:[.,:]\d+)+(?![\w])|(?<![\w.,])\d{2,}(?![\w])"
)
# What a question asks for, and what an answer to it must then hold. The 1.5B answered a
# price with the boat's weight ("costs 22 kg") and colours with its material.
_KINDS = (
    (
        "a price",
        re.compile(r"\b(?:costs?|price[sd]?|fees?)\b", re.IGNORECASE),
        re.compile(
            r"[€$£¥]|\b(?:EUR|USD|GBP|CHF|euros?|dollars?|pounds?|francs?|cents?|free)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "a colour",
        re.compile(r"\bcolou?rs?\b", re.IGNORECASE),
        re.compile(r"\b(?:red|orange|yellow|green|blue|purple|violet|pink|brown|black|white"
                   r"|gr[ae]y|silver|gold|beige|navy|turquoise|teal)\b", re.IGNORECASE),
    ),
)  # fmt: skip
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
_YES_NO = re.compile(r"\W*(?:yes|no)\b", re.IGNORECASE)
_CITES = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
OPENING_SENTENCES = 2
# Fewer content words than this ("Yes [1].") cannot tell one passage from another.
_CLAIM_WORDS = 3
# Put after the question: the answer's prompt is then the check's prompt minus this
# sentence, so an engine that keeps the prompt it read reads only these words twice.
ANSWERABLE_CHECK = (
    "Do the passages above state the answer to this question? Reply with yes or no only."
)


class Unbacked(enum.Enum):
    """Why a finished answer is withdrawn (:func:`unbacked`)."""

    SAYS_NOTHING = "says nothing the question did not"
    UNKNOWN_VALUES = "states values that none of its passages hold"
    WRONG_KIND = "does not give the kind of thing the question asks for"


@dataclass(frozen=True)
class Withdrawal:
    """A model's answer that the pipeline does not stand by: why, the values it made up
    (for :attr:`Unbacked.UNKNOWN_VALUES`) or the kind it lacks (for
    :attr:`Unbacked.WRONG_KIND`), and the model's own text."""

    reason: Unbacked
    values: tuple[str, ...]
    draft: str

    def sentence(self) -> str:
        """Why the draft was withdrawn, for the person who asked."""
        if self.reason is Unbacked.UNKNOWN_VALUES:
            named = ", ".join(f"`{v}`" for v in self.values)
            return (
                f"The model's answer named {named}, which none of the passages hold, "
                "so it was withdrawn."
            )
        if self.reason is Unbacked.WRONG_KIND:
            return (
                f"The question asks for {self.values[0]} and the model's answer gives none, "
                "so it was withdrawn."
            )
        return "The model's answer only repeated the question, so it was withdrawn."


@dataclass(frozen=True)
class Relevance:
    """The gate's verdict and the two signals it rests on."""

    covered: bool
    similarity: float  # best cosine similarity of a passage to the question (0 when unknown)
    coverage: float  # share of the question's content words found in the best passages
    unknown: tuple[str, ...] = ()  # setting names asked about that no passage contains


@dataclass(frozen=True)
class Citation(Generic[T]):
    """Passage ``number`` (as numbered in the prompt) cited by an answer."""

    number: int
    hit: T


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry its topic, lower-cased and stemmed.

    >>> content_words("Which files? The file formats.")
    ['file', 'file', 'forma']
    """
    words = (w.lower() for w in _WORD.findall(text))
    return [_stem(w) for w in words if w not in _STOPWORDS and len(w) > 2]


def _stem(word: str) -> str:
    # A plural's "s" goes first, or "files" (5 letters) would never meet "file".
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    return word[:_STEM]


# Words an answer uses about where it looked, not about the question.
_ABOUT_SOURCES = frozenset(
    content_words(
        "passage context source stated according mentioned section specified file document"
    )
)


def judge(
    question: str, hits: Sequence[Hit], settings: Settings, *, latest: str | None = None
) -> Relevance:
    """Whether ``hits`` can answer ``question`` (see the module docstring).

    ``question`` is what was searched (a follow-up joined to the question before it);
    setting names are read from ``latest``, the newest question alone (default: all of
    ``question``), so a name the documents lack gates only the question that asks it.
    Off (``RAG_GATE=off``), every question is covered. A store searched without its
    dense half (no similarity known) is judged by the content words alone.
    """
    similarity = max((h.similarity for h in hits if h.similarity is not None), default=0.0)
    asked = content_words(question)
    found = {w for h in hits[:3] for w in content_words(f"{h.source} {h.heading or ''} {h.text}")}
    coverage = sum(w in found for w in asked) / len(asked) if asked else 1.0
    unknown = unknown_names(latest or question, hits)
    close = similarity >= settings.gate_min_similarity or coverage >= settings.gate_min_coverage
    covered = not settings.gate or (close and not unknown)
    return Relevance(covered and bool(hits), similarity, coverage, tuple(unknown))


def unknown_names(question: str, hits: Sequence[Hit]) -> list[str]:
    """The setting-like names ``question`` spells (``RAG_MAX_PASSAGES``) that no passage of
    ``hits`` contains: passages that lack the very name asked about cannot describe it.

    >>> unknown_names("Is RAG_TOP_K or RAG_MAX_PASSAGES larger?", [Hit("a#0", "a.md", None,
    ...     None, "RAG_TOP_K is 5.", 1.0)])
    ['RAG_MAX_PASSAGES']
    """
    text = " ".join(f"{h.heading or ''} {h.text}" for h in hits)
    return [name for name in dict.fromkeys(_NAME.findall(question)) if name not in text]


def keep_close(hits: Sequence[Hit], settings: Settings) -> list[Hit]:
    """The passages worth giving the model: the best one, and those not far below it.

    A passage that BM25 ranked (it shares the question's words) stays whatever its
    similarity; one the dense half found far below the best is dropped.
    """
    best = max((h.similarity for h in hits if h.similarity is not None), default=None)
    if best is None:
        return list(hits)
    floor = best - settings.passage_margin
    return [
        h
        for n, h in enumerate(hits)
        if n == 0 or h.bm25_rank is not None or h.similarity is None or h.similarity >= floor
    ]


def citations(text: str, hits: Sequence[T]) -> list[Citation[T]]:
    """The passages ``text`` cites by ``[n]``, in the order first cited; bad numbers ignored."""
    seen: dict[int, Citation[T]] = {}
    for match in _CITE.finditer(text):
        number = int(match.group(1))
        if 1 <= number <= len(hits) and number not in seen:
            seen[number] = Citation(number, hits[number - 1])
    return list(seen.values())


def named(text: str, hits: Sequence[Hit]) -> list[Citation[Hit]]:
    """For an answer that cites no ``[n]``: the passages whose file it names ("as the
    user-guide.md file says"), the best-ranked passage of each file, in the order named.
    The 1.5B model often names the file instead of writing its number.

    >>> hits = [Hit("a#0", "docs/faq.txt", None, None, "x", 1.0),
    ...         Hit("b#0", "user-guide.md", None, None, "y", 0.5)]
    >>> [c.number for c in named("As user-guide.md and FAQ.txt say, ...", hits)]
    [2, 1]
    >>> named("See the user guide.", hits)
    []
    """
    first: dict[str, int] = {}
    for number, hit in enumerate(hits, start=1):
        first.setdefault(hit.source, number)
    found = []
    for source, number in first.items():
        names = {source, source.rsplit("/", 1)[-1]}
        spots = [m.start() for n in names for m in _named_pattern(n).finditer(text)]
        if spots:
            found.append((min(spots), number))
    return [Citation(number, hits[number - 1]) for _, number in sorted(found)]


def _named_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w/.-]){re.escape(name)}(?![\w-])", re.IGNORECASE)


def matched(text: str, hits: Sequence[Hit], threshold: float) -> list[Citation[Hit]]:
    """For an answer that cites no ``[n]``: the passage that holds most of its words, when it
    holds at least ``threshold`` of them (models on this machine often forget to cite)."""
    if not hits or not content_words(text):
        return []
    scored = [(support(text, [h.text]), n) for n, h in enumerate(hits, start=1)]
    best, number = max(scored, key=lambda pair: (pair[0], -pair[1]))
    return [Citation(number, hits[number - 1])] if best >= threshold else []


def recited(text: str, hits: Sequence[Hit], floor: float, margin: float) -> str:
    """``text`` with each sentence's ``[n]`` moved to the passage that backs it
    (:func:`better_backed`). The 1.5B often cites the neighbour of the passage it copied
    from ("covered for two years [2]" where [1] says so), and a person checking [2] finds
    nothing. Markers after a sentence's full stop ("... failed. [2][3]") count for it, and
    so does a sentence that only says where it looked ("This is in passage [3].").

    >>> hits = [Hit("a#0", "manual.pdf", 3, None, "Fittings are covered for two years.", 1.0),
    ...         Hit("b#0", "handbook.md", None, None, "Core hours are ten to three.", 0.9)]
    >>> recited("Fittings are covered for two years [2].", hits, 0.5, 0.2)
    'Fittings are covered for two years [1].'
    >>> recited("Fittings are covered for two years. [2]", hits, 0.5, 0.2)
    'Fittings are covered for two years. [1]'
    >>> recited("Fittings are covered for two years [1][2].", hits, 0.5, 0.2)
    'Fittings are covered for two years [1][2].'
    """
    pieces, cursor = sentences(text), 0
    for before, piece in zip(["", *pieces], pieces):
        cursor = text.index(piece, cursor)
        numbers = [int(n) for n in _CITE.findall(piece) if 1 <= int(n) <= len(hits)]
        # A piece that only says where it looked ("This is in the third passage [3].")
        # cites for the sentence before it.
        about = set(content_words(_CITE.sub("", piece))) - _ABOUT_SOURCES
        claim = piece if len(about) >= _CLAIM_WORDS else f"{before} {piece}"
        better = better_backed(claim, numbers, hits, floor, margin) if numbers else None
        if better is None:
            cursor += len(piece)
            continue
        moved = _cited_as(piece, better)
        text = text[:cursor] + moved + text[cursor + len(piece) :]
        cursor += len(moved)
    return text


def _cited_as(piece: str, number: int) -> str:
    """``piece`` with its first ``[n]`` made ``[number]`` where the model put it, and any
    other ``[n]`` dropped."""
    first = _CITE.search(piece)
    assert first is not None, "only a piece that cites is moved"
    return piece[: first.start()] + f"[{number}]" + _CITE.sub("", piece[first.end() :])


def better_backed(
    claim: str, numbers: Sequence[int], hits: Sequence[Hit], floor: float, margin: float
) -> int | None:
    """The number of the passage that backs ``claim`` instead of the passages ``numbers``
    it cites: one that holds at least ``floor`` of its content words and more than
    ``margin`` more of them than those do together (:func:`support`); None when the cited
    passages hold up, or the claim has too few words to tell passages apart ("Yes [1].")."""
    if not hits or len(content_words(_CITE.sub("", claim))) < _CLAIM_WORDS:
        return None
    scores = [support(claim, [hit.text]) for hit in hits]
    best = max(range(len(hits)), key=lambda n: (scores[n], -n))
    own = support(claim, [hits[n - 1].text for n in numbers]) if numbers else 0.0
    return best + 1 if scores[best] >= floor and scores[best] - own > margin else None


def yes_share(odds: Mapping[str, float]) -> float | None:
    """The probability of "yes" against "no" as a reply's first token, from the
    log-probabilities of its likeliest first tokens; None when neither is among them."""
    chance = {"yes": 0.0, "no": 0.0}
    for token, logprob in odds.items():
        word = token.strip().lower()
        if word in chance:
            chance[word] += math.exp(logprob)
    total = chance["yes"] + chance["no"]
    return chance["yes"] / total if total > 0 else None


def unbacked(
    answer: str, question: str, passages: Sequence[str], names: Sequence[str] = ()
) -> Withdrawal | None:
    """Why ``answer`` to ``question`` is a guess rather than something ``passages`` state, or
    None when it is not (see the module docstring).

    ``names`` are the passages' file names: an answer that names where it looked ("... is
    [3] (configuration.md)") and words about its sources ("as stated in the passage") say
    nothing about the question. A yes or no reply may repeat the question's words and add
    nothing else ("Yes, it is [1]."): it says something when it cites a passage; uncited
    ("No, the company does not pay into a pension plan."), it is a guess too.

    Values are command-line options (``--rebuild``), setting names (``RAG_TOP_K``),
    versions and numbers of two digits or more; a single digit is too often written out
    ("five") on one side to be compared.

    A question that asks for a price or for colours gets an answer holding an amount of
    money or a colour, or the answer is about something else ("It costs 22 kg.").

    >>> got = unbacked("The setting for dark mode is [3].", "Which setting turns dark mode on?", [])
    >>> got.reason, got.values
    (<Unbacked.SAYS_NOTHING: 'says nothing the question did not'>, ())
    >>> unbacked("Use --schedule [1].", "How do I schedule it?", ["Run ingest --rebuild."]).values
    ('--schedule',)
    >>> unbacked("It listens on 11,434 [1].", "Which port?", ["Ollama uses port 11434."]) is None
    True
    """
    plain = _CITE.sub("", answer)
    for name in {n for source in names for n in (source, source.rsplit("/", 1)[-1])}:
        plain = _named_pattern(name).sub("", plain)
    new = set(content_words(plain)) - set(content_words(question)) - _ABOUT_SOURCES
    # A number is news however short ("22 kg"), though content_words skips short words.
    new |= set(_NUMBER.findall(plain)) - set(_NUMBER.findall(question))
    # A yes or no adds the one thing asked, but only a passage it cites can back it.
    if not new and not (_YES_NO.match(plain) and _CITE.search(answer)):
        return Withdrawal(Unbacked.SAYS_NOTHING, (), answer)
    held = _values_text(" ".join([question, *passages]))
    made_up = [v for v in dict.fromkeys(_VALUE.findall(plain)) if _values_text(v) not in held]
    if made_up:
        return Withdrawal(Unbacked.UNKNOWN_VALUES, tuple(made_up), answer)
    lacking = [k for k, asks, gives in _KINDS if asks.search(question) and not gives.search(plain)]
    if lacking:  # one kind is enough to say
        return Withdrawal(Unbacked.WRONG_KIND, (lacking[0],), answer)
    return None


def _values_text(text: str) -> str:
    # "10,000" and "10000" are one number; code marks and case say nothing about a value.
    return _THOUSANDS.sub("", text.replace("`", "")).lower()


def is_refusal(text: str) -> bool:
    """True when an answer declines, near its start.

    The answer's *opening* is searched for :data:`REFUSAL`: the text before its first
    ``[n]`` citation, at most its first two sentences. That is where models decline
    ("I'm sorry, but the documents do not cover ..."); a remark after an answer that
    cites a passage ("... [1]. The documents do not mention HTTPS.") leaves it an
    answer. A phrase preceded in its sentence by *if*, *when*, *unless* or *says*
    describes a refusal; it is not one.

    >>> is_refusal("The context does not mention a CEO."), is_refusal("Use port 11434 [1].")
    (True, False)
    """
    if text.lstrip().startswith(NOT_COVERED):
        return True
    plain = _MARKUP.sub("", text).replace("\u2019", "'").replace("\u2018", "'")
    opening = _CITES.split(plain, maxsplit=1)[0]
    for sentence in sentences(opening)[:OPENING_SENTENCES]:
        for match in REFUSAL.finditer(sentence):
            if not _HEDGE.search(sentence[: match.start()]):
                return True
    return False


def sentences(text: str) -> list[str]:
    """``text`` split into sentences (at . ! ? or a line break), empty pieces dropped."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def support(sentence: str, passages: Sequence[str]) -> float:
    """Share of ``sentence``'s content words that ``passages`` contain (1.0 with none to check).

    >>> support("Ollama's port is 11434 [1].", ["Ollama listens on port 11434."])
    1.0
    >>> round(support("Ollama was written in Rust [1].", ["Ollama listens on port 11434."]), 2)
    0.33
    """
    words = content_words(_CITE.sub("", sentence))
    if not words:
        return 1.0
    found = {w for p in passages for w in content_words(p)}
    return sum(w in found for w in words) / len(words)
