"""The chat's wording: the welcome, the lines under an answer, upload and search summaries.

Plain functions from pipeline values to Markdown, so the chat app stays glue
and the sentences can be checked without a UI.

>>> hits_table([])
'No passage matched.'
"""

from __future__ import annotations

from collections.abc import Sequence

from ingest.pipeline import IngestReport
from rag.answer import AnswerDone, AnswerStart, answered_elsewhere
from rag.llm import Endpoint
from rag.prompt import source_label
from rag.retrieve import Hit
from rag.settings import Settings
from rag.uploads import SavedUpload

UPLOAD_KINDS = "PDF, Word (.docx), Markdown, HTML or text"


def welcome(settings: Settings, endpoint: Endpoint | None = None, model: str = "") -> str:
    """The first message: what this is, what to do, where documents live, which model answers."""
    text = (
        "**Local RAG Chat** answers questions from your own documents. Each answer lists its "
        "sources (file and page), and the passages open beside the chat.\n\n"
        "- **Ask** a question in the box below.\n"
        f"- **Add a document:** drop a {UPLOAD_KINDS} file (up to {settings.upload_max_mb:g} MB) "
        f"into the chat. Files live in `{settings.docs_dir}`; after changing that folder "
        "yourself, run `python -m ingest`.\n"
        "- **Switch models** with the settings button next to the input; the conversation "
        "is kept.\n"
        "- **Compare two models** on the same passages: `/compare MODEL_A MODEL_B your question`."
    )
    if endpoint is not None:
        text += f"\n\nAnswering with `{model}` at {endpoint.base_url}."
        if endpoint.notice:
            text += f"\n\n{endpoint.notice}"
    return text


def footer(start: AnswerStart, done: AnswerDone) -> str:
    """Lines under the answer: sources, who answered when it was not the picked local model,
    and what was left out to fit the context window."""
    lines = []
    if start.hits:
        labels = (f"[{n}] {source_label(h)}" for n, h in enumerate(start.hits, start=1))
        lines.append("**Sources:** " + " · ".join(labels))
    route = done.route
    if answered_elsewhere(route):
        lines.append(f"*Answered by `{route.model}` at {route.endpoint.name} ({route.reason}).*")
    if start.dropped_hits or start.dropped_history:
        lines.append(
            f"*To fit the model's context window, {start.dropped_hits} passage(s) and "
            f"{start.dropped_history} earlier message(s) were left out.*"
        )
    return "\n\n" + "\n\n".join(lines) if lines else ""


def hits_table(hits: Sequence[Hit]) -> str:
    """The retrieval step's output: one line per passage, best first."""
    if not hits:
        return "No passage matched."
    return "\n".join(
        f"{n}. **{source_label(h)}** (score {h.score:.3f}) {h.text[:140].strip()}…"
        for n, h in enumerate(hits, start=1)
    )


def upload_summary(
    saved: Sequence[SavedUpload], report: IngestReport | None, problems: Sequence[str]
) -> str:
    """What happened to each dropped file, in sentences."""
    failed = {f.path: f.error for f in report.failed} if report else {}
    lines = []
    for s in saved:
        if s.name in failed:
            lines.append(f"**{s.uploaded_as}** was saved but could not be read: {failed[s.name]}")
        elif report is None:
            continue
        elif s.already_present:
            lines.append(f"**{s.uploaded_as}** is already in the knowledge base (as `{s.name}`).")
        elif s.renamed:
            lines.append(
                f"Added **{s.uploaded_as}** as `{s.name}`, because a different file already had "
                "that name."
            )
        else:
            lines.append(f"Added **{s.name}** to the knowledge base.")
    lines.extend(problems)
    if report is not None and any(not s.already_present and s.name not in failed for s in saved):
        lines.append(f"{report.chunks} passages are searchable now; ask about them.")
    return "\n\n".join(lines)
