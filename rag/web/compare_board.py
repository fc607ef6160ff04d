"""The chat's side of ``/compare``: the command, and the board behind the side-by-side columns.

:class:`CompareBoard` folds :func:`rag.compare.compare_stream` events into one
column per model, as the props of ``public/elements/Compare.jsx``.

>>> parse_compare_command("/compare phi-4-mini fallback:gpt-4o-mini How do I add files?")
(['phi-4-mini', 'fallback:gpt-4o-mini'], 'How do I add files?')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rag.compare import (
    CompareContext,
    CompareEvent,
    ModelDelta,
    ModelDone,
    ModelStarted,
    figures,
)
from rag.errors import RagError
from rag.retrieve import Hit


COMPARE_USAGE = (
    "Usage: `/compare MODEL_A MODEL_B your question` (or `/compare A,B,C your question`). "
    "Models are ids on the local endpoint or `endpoint:model`, e.g. `fallback:gpt-4o-mini`."
)


class CompareUsage(RagError):
    """A ``/compare`` command that does not name models and a question."""


def parse_compare_command(text: str) -> tuple[list[str], str] | None:
    """``(models, question)`` from ``/compare A B question`` or ``/compare A,B,C question``.

    None when ``text`` is not a ``/compare`` command; :class:`CompareUsage` (with
    the usage sentence) when it is one without two models and a question.

    >>> parse_compare_command("/compare a,b,c  which is best?")
    (['a', 'b', 'c'], 'which is best?')
    """
    words = text.strip().split(maxsplit=1)
    if not words or words[0].lower() != "/compare":
        return None
    rest = words[1] if len(words) > 1 else ""
    first, _, tail = rest.partition(" ")
    if "," in first:
        models, question = [m for m in first.split(",") if m], tail.strip()
    else:
        second, _, question = tail.strip().partition(" ")
        models, question = [m for m in (first, second) if m], question.strip()
    if len(models) < 2 or not question:
        raise CompareUsage(COMPARE_USAGE)
    if len(set(models)) < len(models):
        # Columns are keyed by model name: the same model twice would merge into one.
        raise CompareUsage(f"Name each model only once. {COMPARE_USAGE}")
    return models, question


@dataclass
class Column:
    """One model's side of a comparison as a UI shows it."""

    model: str
    endpoint: str = ""
    text: str = ""
    figures: str = ""  # "TTFT 0.42 s · 31.5 tokens/s · total 3.10 s" once done
    error: str = ""


class CompareBoard:
    """Folds :func:`compare_stream` events into one :class:`Column` per model, for a UI.

    >>> board = CompareBoard(["a", "b"])
    >>> board.apply(ModelDelta("a", "Hello")).text
    'Hello'
    >>> [c["status"] for c in board.props()["columns"]]
    ['waiting', 'waiting']
    """

    def __init__(self, models: Sequence[str]) -> None:
        self.columns = {m: Column(model=m) for m in models}
        self.hits: list[Hit] = []

    def apply(self, event: CompareEvent) -> Column | None:
        """Take one event; returns the column it changed (None for the shared context)."""
        if isinstance(event, CompareContext):
            self.hits = event.hits
            return None
        column = self.columns[event.model]
        if isinstance(event, ModelStarted):
            column.endpoint = f"{event.route.endpoint.name} ({event.route.model})"
        elif isinstance(event, ModelDelta):
            column.text += event.text
        elif isinstance(event, ModelDone):
            column.text, column.figures = event.text, figures(event)
        else:
            column.error = event.error
            column.text = event.partial or column.text
        return column

    def props(self) -> dict[str, list[dict[str, str]]]:
        """Every column as plain data, for a UI element that shows them side by side."""
        return {
            "columns": [
                {
                    "model": c.model,
                    "endpoint": c.endpoint,
                    "text": c.text,
                    "figures": c.figures,
                    "error": c.error,
                    "status": "done"
                    if c.figures or c.error
                    else "answering"
                    if c.endpoint
                    else "waiting",
                }
                for c in self.columns.values()
            ]
        }
