"""Errors that carry a sentence for people.

Library code raises these with a message a user can act on; the CLIs print
the message and the chat app shows it as a chat message. Nothing above the
library needs to know where an error came from to explain it.
"""

from __future__ import annotations


class RagError(Exception):
    """Base class: ``str(error)`` is a complete sentence meant for the user."""


class NoDocuments(RagError):
    """The store is empty or missing: nothing has been ingested yet."""

    def __init__(self, docs_dir: str = "docs/") -> None:
        super().__init__(
            f"No documents ingested yet: put files into {docs_dir} and run "
            "`python -m ingest` (or drop a file into the chat)."
        )


class ModelMissing(RagError):
    """A model that set-up should have prepared is not on disk."""


class EndpointUnavailable(RagError):
    """No model server answered at the configured or discovered address.

    ``base_url`` names the server that did not answer (empty when none was found).
    """

    def __init__(self, message: str, base_url: str = "") -> None:
        super().__init__(message)
        self.base_url = base_url


class EndpointSilent(EndpointUnavailable):
    """The model server accepted the request but sent no text before the first-token wait ended.

    Unlike a refused connection, a server *is* running (perhaps overloaded, or
    still loading the model), so the sentence says that instead of what to start.
    Routing still counts it as down: the next route may answer.
    """


class EndpointError(RagError):
    """The model server answered, but with an error (unknown model, bad request, ...)."""


class StreamInterrupted(RagError):
    """The answer stream broke after it had started; the partial text is kept."""

    def __init__(self, message: str, partial: str = "") -> None:
        super().__init__(message)
        self.partial = partial


class IngestLocked(RagError):
    """Another process is writing the store; Chroma allows one writer only."""
