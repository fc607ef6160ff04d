"""Export the answers people rated in the chat, so the ones rated bad can become eval questions.

    python -m rag.feedback export --json     # one JSON object per line

Each line holds the user, the question, the answer, its sources, the rating
(``up``/``down``) and the comment. Reads ``DATA_DIR/history.db`` read-only with
the standard ``sqlite3`` module: no chat needs to be running.

>>> rated_answers(settings)[0]["rating"]    # doctest: +SKIP
'down'
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from typing import Any

from rag.errors import RagError
from rag.settings import Settings, get_settings
from rag.web.history import AnswerRecord, history_path

QUERY = """
    SELECT f."value", f."comment", s."output", s."metadata", s."threadId", t."userIdentifier",
           (SELECT u."output" FROM steps u WHERE u."threadId" = s."threadId"
              AND u."type" = 'user_message' AND u."createdAt" <= s."createdAt"
            ORDER BY u."createdAt" DESC LIMIT 1)
    FROM feedbacks f JOIN steps s ON s."id" = f."forId" LEFT JOIN threads t ON t."id" = s."threadId"
    ORDER BY s."createdAt"
"""


class FeedbackUnreadable(RagError):
    """The history database cannot be read."""


def rated_answers(settings: Settings) -> list[dict[str, Any]]:
    """Every rated answer, oldest first; empty when there is no history yet."""
    path = history_path(settings)
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute(QUERY).fetchall()
    except sqlite3.DatabaseError as exc:
        raise FeedbackUnreadable(
            f"The chat history {path} cannot be read ({exc}); start the chat once, which keeps "
            "a damaged file aside, or point RAG_DATA_DIR at the right folder."
        ) from None
    return [_row(*row) for row in rows]


def _row(value: int, comment: str | None, output: str | None, metadata: str | None,
         thread: str, user: str | None, asked: str | None) -> dict[str, Any]:
    record = AnswerRecord.from_metadata(metadata)
    return {
        "user": user,
        "thread": thread,
        "question": record.question if record else asked or "",
        "answer": record.answer if record else output or "",
        "sources": list(record.sources) if record else [],
        "model": record.model if record else None,
        "rating": "up" if value else "down",
        "comment": comment or "",
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m rag.feedback export [--json]``."""
    parser = argparse.ArgumentParser(prog="python -m rag.feedback", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="print the rated answers")
    export.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    try:
        rows = rated_answers(get_settings())
    except RagError as exc:
        print(exc, file=sys.stderr)
        return 1
    for row in rows:
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(f"{row['rating']:>4}  {row['question']}  {row['comment']}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
