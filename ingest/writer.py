"""Writing chunks: spooled per file, then embedded and stored in batches across files.

A file's chunks go first into a :class:`ChunkSpool`, an unnamed temporary file
next to the store: the chunk limit and every loader error are known before
anything is embedded or the store is touched, and memory never holds a whole
file's chunks. The :class:`BatchWriter` then embeds and writes them
``batch_size`` at a time, small files sharing a batch and a large file spanning
several, under the intent log of :mod:`ingest.state`:

1. embed the batch (a kill here costs nothing to repair);
2. mark the files whose first chunks are in it ``pending`` (one transaction),
   deleting their old chunks;
3. write the batch in one add;
4. mark the files whose last chunk was in it ``done``.

A file killed between its first and last batch stays ``pending``, and the next
run deletes its partial chunks and ingests it again.

>>> import tempfile
>>> spool = ChunkSpool("guide.md", "ab12", Path(tempfile.mkdtemp()))
>>> spool.append(Chunk(id="guide.md#0", source="guide.md", index=0, text="Hello", heading="Intro"))
>>> len(spool), [(c.id, c.text, c.heading, c.file_sha256) for c in spool]
(1, [('guide.md#0', 'Hello', 'Intro', 'ab12')])
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.report import Failure, IngestReport
from ingest.state import IngestState
from rag.store import Chunk, ChunkStore, chunk_id


class ChunkSpool:
    """One file's chunks on disk, in order, between chunking and embedding.

    The file has no name (it vanishes with the process, even after SIGKILL);
    each line is one chunk as JSON.
    """

    def __init__(self, source: str, file_sha256: str, folder: Path) -> None:
        self.source = source
        self.file_sha256 = file_sha256
        folder.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile("w+", encoding="utf-8", dir=folder)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, chunk: Chunk) -> None:
        """Add the next chunk of the file (``chunk.index`` counts up from 0)."""
        record = [chunk.index, chunk.page, chunk.heading, chunk.text, chunk.ocr]
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._count += 1

    def __iter__(self) -> Iterator[Chunk]:
        """The chunks in the order they were appended."""
        self._file.flush()
        self._file.seek(0)
        for line in self._file:
            index, page, heading, text, ocr = json.loads(line)
            yield Chunk(
                id=chunk_id(self.source, index),
                source=self.source,
                index=index,
                text=text,
                page=page,
                heading=heading,
                file_sha256=self.file_sha256,
                ocr=ocr,
            )

    def close(self) -> None:
        """Delete the spooled chunks."""
        self._file.close()


@dataclass
class PreparedFile:
    """A new or changed file, loaded and chunked into its spool, waiting to be written."""

    source: str
    sha256: str
    spool: ChunkSpool
    had_state: bool  # the state knew it: old chunks may exist and must be deleted
    was_ingested: bool  # it had chunks before: reported as updated, not added
    warnings: tuple[str, ...]
    started: bool = False  # marked pending, its old chunks deleted
    finished: bool = False  # its last chunk is in the batch


class BatchWriter:
    """Embeds and writes the chunks of prepared files ``batch_size`` at a time; see the module."""

    def __init__(
        self,
        store: ChunkStore,
        state: IngestState,
        report: IngestReport,
        embed: Callable[[Sequence[str]], np.ndarray],
        batch_size: int,
    ) -> None:
        self.store = store
        self.state = state
        self.report = report
        self.embed = embed
        self.batch_size = batch_size
        self._chunks: list[Chunk] = []
        self._files: list[PreparedFile] = []  # files with chunks in the batch, in order

    def write(self, prepared: PreparedFile) -> None:
        """Queue every chunk of ``prepared``; full batches are written on the way."""
        self._files.append(prepared)
        try:
            for chunk in prepared.spool:
                self._chunks.append(chunk)
                if len(self._chunks) >= self.batch_size:
                    self.flush()
                    self._files.append(prepared)
            prepared.finished = True
        finally:
            prepared.spool.close()
        if not self._chunks:  # its last chunk filled the batch just written
            self.flush()

    def flush(self) -> None:
        """Embed and write the batch, then mark the files it finished ``done``."""
        files, self._files = self._files, []
        chunks, self._chunks = self._chunks, []
        if chunks:
            self._write(files, chunks)
        done = [p for p in files if p.finished and p.started]
        if done:
            self.state.mark_done(*((p.source, p.sha256, len(p.spool)) for p in done))
        for p in done:
            (self.report.updated if p.was_ingested else self.report.added).append(p.source)
            self.report.warnings.extend(Failure(p.source, w) for w in p.warnings)

    def _write(self, files: list[PreparedFile], chunks: list[Chunk]) -> None:
        """Embed ``chunks``; mark the files starting in them pending; replace their chunks."""
        vectors = self.embed([c.embedded_text() for c in chunks])
        new = [p for p in files if not p.started]
        if new:
            self.state.set_meta("dirty", "1")
            self.state.mark_pending(*(p.source for p in new))
            for p in new:
                p.started = True
                if p.had_state:  # a repaired source's chunks are already gone
                    self.store.delete_source(p.source)
        self.store.add(chunks, vectors)
