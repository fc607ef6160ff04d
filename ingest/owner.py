"""Who may write a collection on a Chroma server: the one data folder that owns it.

With ``CHROMA_HOST`` set, the file lock (:mod:`ingest.lock`) and the ingest state
only guard one data folder, yet two machines (two data folders) can point at the
same server collection. Their states would disagree with the collection, and the
second one's ingest would reset it and wipe the first one's chunks. So the
collection records its owner in its metadata: the data folder's owner id (made
once and kept in its ingest state), with host name and folder for messages.

- A collection that ingest creates is created with this folder's stamp; Chroma
  creates collections atomically, so of two first ingests at once one wins and
  the other is refused.
- An unowned collection (filled by an older version) is adopted by the first
  ingest that finds it. Chroma has no compare-and-set on metadata, so two first
  ingests from two folders started on one unowned collection in the same moment
  could both adopt it; adopt from one machine. Readers open collections without
  creating them, so no new unowned collection arises.
- A collection owned by another data folder is refused before anything is
  written, with :class:`CollectionOwned`, unless ``take_over`` is asked for
  (``python -m ingest --take-over``): then this folder becomes the owner, and the
  collection is rebuilt from this docs folder, since this state knows none of it.

The local store needs none of this: it lives inside the data folder, whose lock
already admits one writer.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ingest.state import IngestState
from rag.errors import RagError
from rag.settings import Settings
from rag.store import ChunkStore

_ID, _HOST, _FOLDER = "rag_owner", "rag_owner_host", "rag_owner_dir"


class CollectionOwned(RagError):
    """The server collection belongs to another data folder; nothing was written."""


@dataclass(frozen=True)
class Owner:
    """One data folder that may write a server collection, as stamped on it."""

    id: str
    host: str
    folder: str

    def metadata(self) -> dict[str, str]:
        """The collection metadata that names this owner."""
        return {_ID: self.id, _HOST: self.host, _FOLDER: self.folder}

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> Owner | None:
        """The owner a collection's metadata names, or ``None`` when it has none."""
        if not metadata.get(_ID):
            return None
        return cls(
            str(metadata[_ID]), str(metadata.get(_HOST, "?")), str(metadata.get(_FOLDER, "?"))
        )


def this_folder(settings: Settings, state: IngestState) -> Owner:
    """The owner identity of ``settings.data_dir``, made on first use and kept in its state."""
    owner_id = state.get_meta("owner_id")
    if owner_id is None:
        owner_id = uuid.uuid4().hex
        state.set_meta("owner_id", owner_id)
    return Owner(owner_id, socket.gethostname(), str(settings.data_dir.resolve()))


class Claim(Enum):
    """How an ingest came to write a server collection (see :func:`claim`)."""

    OWNED = "owned"  # this data folder created it or wrote it before
    ADOPTED = "adopted"  # it had no owner
    TAKEN_OVER = "taken over"  # another data folder owned it; --take-over was asked for


@dataclass(frozen=True)
class Claimed:
    """The outcome of :func:`claim`: how, and from whom when taken over."""

    how: Claim
    previous: Owner | None = None

    def notice(self) -> str | None:
        """The sentence for the ingest report, ``None`` when nothing is worth saying."""
        if self.how is Claim.ADOPTED:
            return "the collection had no owner; this data folder adopted it"
        if self.how is Claim.TAKEN_OVER and self.previous is not None:
            return (
                f"this data folder took the collection over from {self.previous.folder} on "
                f"{self.previous.host}; it was rebuilt from this docs folder"
            )
        return None


def claim(store: ChunkStore, me: Owner, *, take_over: bool = False) -> Claimed:
    """Make sure ``me`` owns the store's collection before anything is written to it.

    Raises :class:`CollectionOwned` when another data folder owns it and
    ``take_over`` is off; nothing is written then.
    """
    owner = Owner.from_metadata(store.metadata())
    if owner is not None and owner.id == me.id:
        if owner != me:  # same folder id, another host name or path: keep the message right
            store.update_metadata(me.metadata())
        return Claimed(Claim.OWNED)
    if owner is None:
        store.update_metadata(me.metadata())
        return Claimed(Claim.ADOPTED)
    if not take_over:
        raise CollectionOwned(refusal(store, owner))
    store.update_metadata(me.metadata())
    return Claimed(Claim.TAKEN_OVER, owner)


def refusal(store: ChunkStore, owner: Owner) -> str:
    """The sentence for an ingest refused because ``owner`` writes the collection."""
    name = store.settings.collection
    return (
        f"The collection {name!r} on the Chroma server {store.location} is written by the "
        f"ingest of {owner.folder} on {owner.host}, not by this data folder; nothing was "
        "written. Ingest from that machine, or set RAG_COLLECTION to another name to keep "
        "a collection of your own, or run python -m ingest --take-over to make this folder "
        "its owner (the collection is then rebuilt from this docs folder)."
    )
