"""Serving the API with uvicorn (``ktb api``)."""

from __future__ import annotations

import uvicorn

from bridge.api.app import create_app
from bridge.metrics import Metrics
from bridge.settings import Settings


def serve(settings: Settings, metrics: Metrics | None = None) -> None:
    """Serve the API on ``api_host:api_port`` until SIGINT/SIGTERM."""
    config = uvicorn.Config(
        create_app(settings, metrics=metrics),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        lifespan="on",
    )
    uvicorn.Server(config).run()
