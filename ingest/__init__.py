"""Ingest: the docs folder into the chunk store, incrementally, crash-safely, at a bounded cost.

The stages, each testable with plain values:

- :mod:`ingest.scan`: which files to read (hidden and unsupported skipped, outside links refused);
- :mod:`ingest.loaders`: bytes to :class:`~ingest.document.Section` s, streamed, within
  the limits of :mod:`ingest.limits` (inflated size, text, chunks per file);
- :mod:`ingest.chunker`: sections to token-sized :class:`~rag.store.Chunk` s, one at a time;
- :mod:`ingest.writer`: a file's chunks spooled to disk, then embedded and stored in batches;
- :mod:`ingest.state` and :mod:`ingest.lock`: the per-file hash and intent log, the writer lock;
- :mod:`ingest.pipeline`: ``ingest(settings)``, which ties them together (``python -m ingest``);
- :mod:`ingest.uploads`: files dropped into the chat, saved safely and ingested.
"""
