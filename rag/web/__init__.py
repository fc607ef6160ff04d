"""The web-facing edges of Local RAG Chat, beside the chat glue in ``app.py``.

The library core (``rag`` without this package) is usable from a Python shell
and imports nothing from here. These modules turn its values into what a web
client sees: the chat's answering (``chat_reply``), Chainlit pieces (``chat_ui``)
and Markdown wording (``chat_text``), the compare board's props, history and
sign-in, the OpenAI-compatible HTTP API, the in-browser search page, the docs
folder watch's notices, and the guards that keep foreign pages and other users
out; ``chat_server`` adds them to Chainlit's server.
"""
