"""What the services' HTTP servers share: serving an app, health, not-found."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI, HTTPException

log = logging.getLogger("services.http")


def app(title: str) -> FastAPI:
    """A FastAPI app with ``GET /healthz``."""
    application = FastAPI(title=title)

    @application.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

    return application


def not_found(what: str) -> HTTPException:
    """A 404 naming what was looked for."""
    return HTTPException(status_code=404, detail=f"{what} not found")


async def serve(application: FastAPI, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's own handlers)."""
    config = uvicorn.Config(
        application, host=host, port=port, log_config=None, access_log=False, lifespan="off"
    )
    log.info("%s listening on http://%s:%d", application.title, host, port)
    await uvicorn.Server(config).serve()
