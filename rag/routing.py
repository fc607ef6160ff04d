"""Which endpoint and model answer a question, in the order to try them.

The answer pipeline asks :func:`plan_routes` for an ordered list of
:class:`Route` and tries them in turn: a route whose endpoint is down is
skipped for the next one (before the first token only).

This first version only knows the local endpoint; cloud fallback and
task-type routing extend it here without touching the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from rag.llm import Endpoint
from rag.settings import Settings


@dataclass(frozen=True)
class Route:
    """One endpoint and model to try, and why it was chosen (shown to the user)."""

    endpoint: Endpoint
    model: str
    reason: str = "local endpoint"


def plan_routes(
    question: str,
    settings: Settings,
    *,
    local: Endpoint,
    model: str,
    prompt_tokens: int = 0,
) -> list[Route]:
    """Routes to try for ``question``, best first.

    ``local`` is the discovered local endpoint and ``model`` the model the user
    picked on it; ``prompt_tokens`` is the size of the untrimmed prompt, so a
    prompt too large for the local model can go elsewhere.
    """
    return [Route(endpoint=local, model=model)]
