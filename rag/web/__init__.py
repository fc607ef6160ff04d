"""The web-facing edges of Local RAG Chat, beside the chat glue in ``app.py``.

The library core (``rag`` without this package) is usable from a Python shell
and imports nothing from here. These modules turn its values into what a web
client sees: the chat's Markdown wording, the compare board's props, the
OpenAI-compatible HTTP API, and the socket guard that keeps foreign pages out.
"""
