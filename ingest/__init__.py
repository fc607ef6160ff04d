"""Ingest: the docs folder into the chunk store, incrementally and crash-safely.

The stages, each testable with plain values:

- :mod:`ingest.scan`: which files to read (hidden and unsupported skipped, outside links refused);
- :mod:`ingest.loaders`: bytes to a :class:`~ingest.document.Document` (sections, page, heading);
- :mod:`ingest.chunker`: documents to token-sized :class:`~rag.store.Chunk` s;
- :mod:`ingest.state` and :mod:`ingest.lock`: the per-file hash and intent log, the writer lock;
- :mod:`ingest.pipeline`: ``ingest(settings)``, which ties them together (``python -m ingest``).
"""
