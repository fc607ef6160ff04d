"""Local RAG Chat library: retrieval, prompts and LLM endpoints, usable without Chainlit.

From a Python shell, after ``python -m ingest``::

    from rag.settings import get_settings
    from rag import retrieve
    hits = retrieve("How do I add my own files?", k=3, settings=get_settings())
    hits[0].source, hits[0].page        # ('user-guide.md', None)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily so `import rag` stays cheap
    from rag.retrieve import Hit


def retrieve(question: str, k: int | None = None, **kwargs: Any) -> list[Hit]:
    """Hybrid (dense + BM25) search of the ingested documents; see :mod:`rag.retrieve`."""
    from rag.retrieve import retrieve as _retrieve

    return _retrieve(question, k=k, **kwargs)


__all__ = ["retrieve"]
