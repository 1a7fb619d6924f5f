"""What the API's handlers share: settings, clients and the read model, built in the lifespan.

Routers reach it through the ``state`` and ``caller`` dependencies; nothing here
runs at import time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from aiokafka import AIOKafkaProducer
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from bridge.api.auth import CSRF_HEADER, SESSION_COOKIE, Caller, KeyRing
from bridge.codec import SchemaCatalog
from bridge.ingress import Ingress
from bridge.observability.metrics import Metrics
from bridge.routes import Router, RoutesConfig
from bridge.settings import Settings
from bridge.store import Database, Indexer, ProvenanceStore

log = logging.getLogger("ktb.api")


@dataclass
class ApiState:
    """Long-lived clients of one API process."""

    settings: Settings
    catalog: SchemaCatalog
    metrics: Metrics
    keys: KeyRing
    producer: AIOKafkaProducer
    client: Client
    database: Database
    store: ProvenanceStore
    """Provenance lookups and the ids ``POST /events`` took, shared by every replica."""
    indexer: Indexer | None
    """The indexer running in this process (``KTB_API_INDEXER``), if any."""
    ingress: Ingress | None
    """Decodes and routes events as the bridge does (no dispatcher: it plans only)."""
    topics: dict[str, str]

    @property
    def router(self) -> Router | None:
        """The bridge's routes, when the API has a routes file."""
        return self.ingress.router if self.ingress is not None else None

    def topic_for(self, event_type: str) -> str | None:
        """The topic ``POST /events`` produces ``event_type`` to."""
        return self.topics.get(event_type)


def topic_map(settings: Settings, config: RoutesConfig | None) -> dict[str, str]:
    """Event type → topic: ``api_topics`` first, else the first route for the type."""
    out: dict[str, str] = {}
    if config is not None:
        for route in config.routes:
            out.setdefault(route.type, route.topic)
    out.update(settings.api_topics)
    return out


async def get_state(request: Request) -> ApiState:
    """The ``ApiState`` of the app serving ``request``.

    Dependencies are ``async`` though they never wait: FastAPI runs a plain ``def``
    dependency on a worker thread, a thread hop per request for nothing."""
    return state_of(request)


def state_of(request: Request) -> ApiState:
    """The ``ApiState`` of the app serving ``request`` (for code outside dependencies)."""
    state: ApiState = request.app.state.ktb
    return state


bearer = HTTPBearer(auto_error=False, description="An API key; `ktb api-key` makes one")
session_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    description="The console's session (`POST /session`); state-changing requests made "
    f"with it also send `{CSRF_HEADER}`",
)


async def get_caller(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
    _session: Annotated[str | None, Security(session_cookie)] = None,
) -> Caller:
    """Who is calling: the bearer key, else the session cookie (401 problem for a missing
    or unknown key or an ended session, 403 for a cookie request without its CSRF token)."""
    return state_of(request).keys.authenticate(
        request.headers.get("authorization"),
        request.cookies.get(SESSION_COOKIE),
        request.method,
        request.headers.get(CSRF_HEADER),
    )


State = Annotated[ApiState, Depends(get_state)]
CallerDep = Annotated[Caller, Depends(get_caller)]
