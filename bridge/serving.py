"""How every ktb HTTP server is served with uvicorn (the API, the services, the tests').

An idle connection stays open ``KEEP_ALIVE_S``: longer than the clients in front of a
server keep one in their pools (httpx 5 s, the storefront's and the tests' client; 60 s
for nginx's and most load balancers' upstream pools). With uvicorn's default of 5 s, the
same as httpx's, a client could send a request on a connection in the moment the server
closed it as idle, and read no answer (``httpx.ReadError``) for a request the server
never saw.
"""

from __future__ import annotations

from typing import Any

import uvicorn

KEEP_ALIVE_S = 75


def server_config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` on ``host:port``: ktb's logging (none of
    uvicorn's own), ``KEEP_ALIVE_S``, and ``options`` on top."""
    return uvicorn.Config(
        app, host=host, port=port, log_config=None, timeout_keep_alive=KEEP_ALIVE_S, **options
    )
