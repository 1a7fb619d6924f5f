"""Serving the API with uvicorn (``ktb api``)."""

from __future__ import annotations

import uvicorn

from bridge.api.app import create_app
from bridge.observability.metrics import Metrics
from bridge.observability.telemetry import open_telemetry
from bridge.serving import server_config
from bridge.settings import Settings


def serve(settings: Settings, metrics: Metrics | None = None) -> None:
    """Serve the API on ``api_host:api_port`` until SIGINT/SIGTERM.

    ``/metrics`` on the API's port includes the Temporal SDK's metrics; with
    ``KTB_METRICS_PORT`` set the same registry is also served there.
    """
    with open_telemetry(settings, "api", metrics, sdk_metrics=True) as telemetry:
        config = server_config(
            create_app(settings, telemetry=telemetry),
            settings.api_host,
            settings.api_port,
            access_log=False,
            proxy_headers=True,
            lifespan="on",
        )
        uvicorn.Server(config).run()
