"""Our routes ahead of Chainlit's: the one way this app adds HTTP routes to Chainlit's server.

Chainlit answers every GET it does not know with its web app (a catch-all route at
the end of the list), and some of its own routes are replaced by checked ones, so
ours must come *first*. app.py runs again on a reload, so adding must replace the
routes added before rather than stack a second copy.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI


def put_first(app: FastAPI, router: APIRouter, key: str) -> None:
    """Put ``router``'s routes at the front of ``app``'s, replacing those last added under
    ``key`` (a name per caller, kept in ``app.state``)."""
    previous = getattr(app.state, key, [])
    existing = [r for r in app.router.routes if all(r is not p for p in previous)]
    # The router's own route objects go in directly: include_router() may wrap them
    # (FastAPI 0.16x), and then their place in the list is not theirs to keep.
    added = list(router.routes)
    app.router.routes[:] = added + existing
    setattr(app.state, key, added)
