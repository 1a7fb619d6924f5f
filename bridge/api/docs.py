"""``/docs``: Swagger UI over ``/openapi.json``, from the ``fastapi-offline`` package's
copy of Swagger UI, so the page renders without reaching any other host."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = "/docs/assets"
SWAGGER_UI = Path(fastapi_offline.__file__).parent / "static"
"""Where the package keeps Swagger UI's bundle, stylesheet and icon."""


def install(app: FastAPI) -> None:
    """Serve Swagger UI's assets under ``/docs/assets`` and the page at ``/docs``."""
    app.mount(ASSETS, StaticFiles(directory=SWAGGER_UI), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Swagger UI; every URL it loads is this server's (no validator badge either:
        Swagger UI would fetch it from validator.swagger.io)."""
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
