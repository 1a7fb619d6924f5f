"""What the services' HTTP servers share: serving an app, health, not-found."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI, HTTPException

from bridge import stop_on_signals

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


class _Server(uvicorn.Server):
    """A uvicorn server that exits normally after a graceful stop on SIGINT/SIGTERM.

    uvicorn re-raises the signal once it has shut down, so the process would end
    "killed by SIGTERM"; a process supervisor should see a clean exit instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        stop_on_signals(self._stop)
        yield

    def _stop(self) -> None:
        self.should_exit = True


async def serve(application: FastAPI, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, then finish open requests and return."""
    config = uvicorn.Config(
        application, host=host, port=port, log_config=None, access_log=False, lifespan="off"
    )
    log.info("%s listening on http://%s:%d", application.title, host, port)
    await _Server(config).serve()
