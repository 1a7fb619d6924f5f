"""``/console``: the operator console, a page of this package's own HTML, CSS and
JavaScript that calls the same API as every other client.

Every ``/console/...`` path answers the one page; the page's script reads the path
and shows the matching view (``/console/events/{id}``, ``/console/processes/{id}``,
``/console/dlq/{topic}``, ``/console/replays/{id}``), so a link can be pasted into
an incident channel. Its assets are served from ``/console/assets``. The page's
Content-Security-Policy allows this origin's scripts, styles and requests only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
ASSETS = "/console/assets"
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


def page() -> HTMLResponse:
    """The console's one page."""
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=HEADERS)


@router.get("/console")
async def console_root() -> HTMLResponse:
    """The overview."""
    return page()


@router.get("/console/{path:path}")
async def console_view(path: str) -> HTMLResponse:
    """Any other view of the console: the page's script reads the path."""
    return page()


def install(app: FastAPI) -> None:
    """Serve the assets (mounted first: the views' catch-all must not take their paths)
    and the page."""
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="console-assets")
    app.include_router(router)
