"""Ratings only on one's own answers: the ownership check Chainlit's feedback routes lack.

Chainlit's ``PUT /feedback`` and ``DELETE /feedback`` take any message or feedback
id from any signed-in user: Ben could rate, or erase the rating of, an answer in
Ana's chat. :func:`guard_feedback` puts two routes of the same shape in front of
Chainlit's. Each finds the chat the message belongs to (a message's step row
names its thread; a feedback row names its message), requires the caller to be
that chat's author (Chainlit's own :func:`is_thread_author`: 401 otherwise, 404
for an unknown chat), and then hands the request to Chainlit's handler, so what a
rating does stays Chainlit's.
"""

from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request

from rag.web.front_routes import put_first

# Chainlit is imported where it is used, so importing this module does not load it. No
# ``from __future__ import annotations``: FastAPI reads the routes' parameter types from
# the objects themselves, imported inside feedback_router().

_STEP_THREAD = 'SELECT "threadId" FROM steps WHERE "id" = :id'
_FEEDBACK_THREAD = (
    'SELECT s."threadId" FROM feedbacks f JOIN steps s ON s."id" = f."forId" WHERE f."id" = :id'
)


async def _thread_of(query: str, row_id: str) -> str:
    """The chat (thread id) ``query`` finds for ``row_id``; 404 when there is none."""
    from chainlit.data import get_data_layer

    layer = get_data_layer()
    if layer is None:
        raise HTTPException(
            status_code=400, detail="Chat history is off, so there is nothing to rate."
        )
    rows = await layer.execute_sql(query=query, parameters={"id": row_id})
    if not isinstance(rows, list) or not rows or not rows[0].get("threadId"):
        raise HTTPException(status_code=404, detail="That message is not in any saved chat.")
    return str(rows[0]["threadId"])


async def _require_author(user: Any, thread_id: str) -> None:
    from chainlit.data.acl import is_thread_author

    if user is None:
        raise HTTPException(status_code=401, detail="Sign in to rate answers.")
    await is_thread_author(user.identifier, thread_id)


def feedback_router() -> APIRouter:
    """``PUT`` and ``DELETE /feedback`` that check ownership, then run Chainlit's handlers."""
    from chainlit.server import UserParam, delete_feedback, update_feedback
    from chainlit.types import DeleteFeedbackRequest, UpdateFeedbackRequest

    router = APIRouter()

    @router.put("/feedback")
    async def rate(request: Request, update: UpdateFeedbackRequest, current_user: UserParam) -> Any:
        thread_id = await _thread_of(_STEP_THREAD, update.feedback.forId)
        if update.feedback.threadId not in (None, thread_id):
            raise HTTPException(status_code=401, detail="That message is not in this chat.")
        await _require_author(current_user, thread_id)
        return await update_feedback(request, update, current_user)

    @router.delete("/feedback")
    async def unrate(
        request: Request, payload: DeleteFeedbackRequest, current_user: UserParam
    ) -> Any:
        await _require_author(current_user, await _thread_of(_FEEDBACK_THREAD, payload.feedbackId))
        return await delete_feedback(request, payload, current_user)

    return router


def guard_feedback(app: FastAPI) -> None:
    """Put the checked feedback routes ahead of Chainlit's own (once, also on a reload)."""
    put_first(app, feedback_router(), "rag_feedback_routes")
