"""Moved to :mod:`ingest.uploads`, which knows the loaders' file types (``rag`` must not import
``ingest``). This alias keeps ``app.py`` and ``rag/chat_text.py`` working until they import
from there; then it is deleted.
"""

from ingest.uploads import (  # noqa: F401
    MAX_STEM_CHARS,
    SavedUpload,
    UploadRejected,
    sanitize_filename,
    save_upload,
)
