"""The chat's wording: the welcome, the lines under an answer, upload and search summaries.

Plain functions from pipeline values to Markdown, so the chat app stays glue
and the sentences can be checked without a UI.

>>> hits_table([])
'No passage matched.'
"""

from __future__ import annotations

from collections.abc import Sequence

from rag.answer import AnswerDone, AnswerStart
from rag.catalog import Offer
from rag.grounding import content_words, sentences
from rag.mentions import EVERY_FILE, Scope
from rag.prompt import COMPACT, source_label, style_for
from rag.retrieve import Hit
from rag.routing import Kind, Provider, Reason, Route
from rag.settings import Settings

UPLOAD_KINDS = "PDF, Word (.docx), Markdown, HTML or text"
BETTER_MODELS = (
    "For better answers start Foundry Local (`foundry model run phi-4-mini`) or set "
    "LLM_BASE_URL to another OpenAI-compatible server such as Ollama."
)
SMALL_MODEL_NOTICE = (
    "Answers come from a small offline model built into this app, so expect short and "
    "sometimes wrong answers. " + BETTER_MODELS
)
EMBEDDED_NOTICE = "Answers come from the offline model built into this app. " + BETTER_MODELS


def welcome(settings: Settings, local: Provider | None = None, model: str = "") -> str:
    """The first message: what this is, what to do, where documents live, which model answers."""
    text = (
        "**Local RAG Chat** answers questions from your own documents. Each answer lists its "
        "sources (file and page), and the passages open beside the chat.\n\n"
        "- **Ask** a question in the box below.\n"
        f"- **Add a document:** drop a {UPLOAD_KINDS} file (up to {settings.upload_max_mb:g} MB) "
        f"into the chat. Files live in `{settings.docs_dir}`; {_after_changes(settings)}\n"
        "- **Switch models** with the settings button next to the input; the conversation "
        "is kept.\n"
        "- **Compare two models** on the same passages: `/compare MODEL_A MODEL_B your question`.\n"
        "- **Ask about one file:** type `@` and pick it (`@user-guide.md how do I start?`). "
        "Follow-up questions stay with that file until you mention others, or `@all` for "
        "every file again; `summarize @user-guide.md` reads it whole. `/files` lists the files."
    )
    if local is not None:
        text += f"\n\nAnswering with `{model}` at {local.endpoint.base_url}."
        if local.kind is Kind.EMBEDDED:
            small = style_for(local) is COMPACT
            text += f"\n\n{SMALL_MODEL_NOTICE if small else EMBEDDED_NOTICE}"
    return text


def _after_changes(settings: Settings) -> str:
    """What happens when the user changes the docs folder themselves."""
    if settings.watch:
        return "what you add, change or delete there is picked up by itself."
    return "after changing that folder yourself, run `python -m ingest`."


def folder_notice(summary: str) -> str:
    """The notice in every open chat after the watched docs folder was ingested.

    >>> folder_notice("2 files added, 1 updated")
    '**Your documents changed:** 2 files added, 1 updated.'
    """
    return f"**Your documents changed:** {summary}."


def opening(settings: Settings, offer: Offer) -> str:
    """The first message of a chat: the welcome, and what answers (or why nothing does yet)."""
    if offer.local is not None:
        return welcome(settings, offer.local, offer.default)
    note = f"**No local model server yet.** {offer.problem}"
    if offer.declared:
        note += f"\n\nUntil one runs, answers come from `{offer.default}`."
    return f"{welcome(settings)}\n\n{note}"


def switched(model: str) -> str:
    """The reply to a model picked in the settings."""
    return (
        f"Switched to `{model}`. It answers from your next message; "
        "the conversation so far is kept."
    )


def interrupted(partial: str, why: str) -> str:
    """A half-written answer, kept, with what went wrong under it."""
    return f"{partial}\n\n---\n*{why} The answer above is incomplete; ask again to retry.*"


def route_note(route: Route) -> str:
    """Why ``route`` answered, in words: ``code question (stack trace) -> LLM_CODE_MODEL on 'coder'``."""
    name = route.provider.name
    where = f"cloud fallback '{name}'" if not route.provider.on_premises else f"'{name}'"
    match route.reason:
        case Reason.PICKED:
            return "the picked model"
        case Reason.PINNED:
            return f"pinned to '{name}'"
        case Reason.CODE:
            return f"code question ({route.detail}) -> LLM_CODE_MODEL on '{name}'"
        case Reason.TOO_LARGE:
            return f"prompt too large for the local model ({route.detail}) -> {where}"
        case Reason.LOCAL_DOWN:
            return f"local endpoint down -> {where}"
        case Reason.CLOUD_FIRST:
            return f"cloud-first: '{name}'"
        case Reason.CLOUD_DOWN:
            return "cloud-first: cloud endpoint down -> local endpoint"


UNSUPPORTED_MARK = " ⚠"


def answer_text(start: AnswerStart, done: AnswerDone) -> str:
    """The finished answer as the chat shows it: unsupported sentences marked, then the footer."""
    text = done.text or "_The model returned an empty answer._"
    if done.withdrawn is not None:  # the draft streamed above this is replaced
        text += f"\n\n*{done.withdrawn.sentence()}*"
    for sentence in done.unsupported:
        text = text.replace(sentence, sentence + UNSUPPORTED_MARK, 1)
    return text + footer(start, done)


def footer(start: AnswerStart, done: AnswerDone) -> str:
    """Lines under the answer: its cited sources (or the closest matches when the documents do
    not cover it), who answered when it was not the picked local model, and what was left out
    to fit the context window."""
    lines = [_sources_line(start, done)]
    if done.citations_moved:
        lines.append(
            "*A citation was moved to the passage that holds its sentence's words "
            "(the model cited another one).*"
        )
    if done.unsupported:
        lines.append(
            f"*{UNSUPPORTED_MARK.strip()} marks {len(done.unsupported)} sentence(s) that the cited "
            "passages do not back; check them against the sources.*"
        )
    route = done.route
    if route is not None and route.answered_elsewhere:
        lines.append(
            f"*Answered by `{route.model}` at {route.provider.name} ({route_note(route)}).*"
        )
    if start.dropped_hits or start.dropped_history:
        lines.append(
            f"*To fit the model's context window, {start.dropped_hits} passage(s) and "
            f"{start.dropped_history} earlier message(s) were left out.*"
        )
    return "\n\n" + "\n\n".join(line for line in lines if line)


def _sources_line(start: AnswerStart, done: AnswerDone) -> str:
    if done.refused:
        if not start.hits:
            return ""
        labels = (f"[{n}] {source_label(h)}" for n, h in enumerate(start.hits, start=1))
        return "**Closest matches (not sources):** " + " · ".join(labels)
    if done.sources:
        labels = " · ".join(f"[{c.number}] {source_label(c.hit)}" for c in done.sources)
        if done.sources_inferred:
            return f"**Source (matched by its words; the answer cites none):** {labels}"
        return f"**Sources:** {labels}"
    return (
        "*This answer cites no passage, so it lists no sources; the passages searched are in "
        "the document search step above.*"
    )


def highlighted(passage: str, answer: str, threshold: float) -> str:
    """``passage`` as Markdown with the sentences that back ``answer`` in bold."""
    said = set(content_words(answer))
    marked = []
    # Line breaks inside a passage are the source's layout (a PDF's lines), not sentences.
    for sentence in sentences(" ".join(passage.split())):
        words = content_words(sentence)
        shared = sum(w in said for w in words)
        # Two shared words at least: a heading such as "Sick days" backs nothing by itself.
        backs = shared >= 2 and shared / len(words) >= threshold
        marked.append(f"**{sentence}**" if backs else sentence)
    return " ".join(marked)


def files_list(sources: Sequence[str]) -> str:
    """The reply to ``/files``: each ingested file as it can be mentioned."""
    if not sources:
        return "No files are ingested yet."
    names = "\n".join(f"- `@{mention_name(s)}`" for s in sources)
    return (
        f"**{len(sources)} ingested file(s).** Mention one to ask about it alone "
        f"(`@name your question`), or ask to `summarize @name`:\n\n{names}"
    )


def mention_name(source: str) -> str:
    """How to mention ``source`` in the chat: its path, quoted when it holds a space."""
    return f'"{source}"' if " " in source else source


SEARCH_STEP = "document search"
# Files a collapsed search step names at most; the step's output lists them all.
NAMED_IN_STEP = 2


def search_name(scope: Scope | None) -> str:
    """The search step's name, which the chat shows even collapsed: where it searched.

    >>> search_name(Scope("q", ("handbook.md",)))
    'document search in handbook.md'
    >>> search_name(Scope("q", ("a.md", "b.md", "c.md")))
    'document search in a.md, b.md and 1 more'
    >>> search_name(Scope("q", every_file=True))
    'document search in every file'
    """
    if scope is None or not (scope.sources or scope.every_file):
        return SEARCH_STEP
    if scope.every_file:
        return f"{SEARCH_STEP} in every file"
    shown = ", ".join(scope.sources[:NAMED_IN_STEP])
    more = len(scope.sources) - NAMED_IN_STEP
    return f"{SEARCH_STEP} in {shown}" + (f" and {more} more" if more > 0 else "")


def scope_note(scope: Scope) -> str:
    """The search step's first line when the question's files were chosen: which, and why.

    >>> scope_note(Scope("and for part-timers?", ("handbook.md",), carried=True))
    'Searched only `handbook.md`, as in your earlier question. Mention other files to change this, or `@all` to search every file.'
    """
    if scope.every_file:
        return "Searched every file (`@all`)."
    if not scope.sources:
        return ""
    names = ", ".join(f"`{s}`" for s in scope.sources)
    if scope.carried:
        return (
            f"Searched only {names}, as in your earlier question. Mention other files to "
            f"change this, or `@{EVERY_FILE}` to search every file."
        )
    return f"Searched only {names}."


def hits_table(hits: Sequence[Hit]) -> str:
    """The retrieval step's output: one line per passage, best first."""
    if not hits:
        return "No passage matched."
    return "\n".join(
        f"{n}. **{source_label(h)}** (score {h.score:.3f}) {h.text[:140].strip()}…"
        for n, h in enumerate(hits, start=1)
    )
