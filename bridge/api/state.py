"""What the API's handlers share: settings, clients and indexes, built in the lifespan.

Routers reach it through the ``state`` and ``caller`` dependencies; nothing here
runs at import time.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated

from aiokafka import AIOKafkaProducer
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from bridge.api.auth import Caller, KeyRing
from bridge.api.index import IndexFollower, ProvenanceIndex
from bridge.codec import SchemaCatalog
from bridge.ingress import Ingress
from bridge.observability.metrics import Metrics
from bridge.routes import Router, RoutesConfig
from bridge.settings import Settings

log = logging.getLogger("ktb.api")

PRODUCED_LIMIT = 100_000
"""Event ids produced by this instance that it remembers (see ``ProducedEvents``)."""


@dataclass(frozen=True)
class ProducedEvent:
    """An event this API instance produced (or is producing: ``offset`` is ``None``)."""

    event_id: str
    type: str
    tenant_id: str | None
    key: str | None
    topic: str
    workflow_id: str | None
    partition: int | None = None
    offset: int | None = None


class ProducedEvents:
    """The ids this instance produced, newest kept; reserving an id is atomic in the loop."""

    def __init__(self, limit: int = PRODUCED_LIMIT) -> None:
        self.limit = limit
        self._items: OrderedDict[str, ProducedEvent] = OrderedDict()

    def get(self, event_id: str) -> ProducedEvent | None:
        """What this instance produced under ``event_id``."""
        return self._items.get(event_id)

    def put(self, item: ProducedEvent) -> None:
        """Remember (or update) an event."""
        self._items[item.event_id] = item
        self._items.move_to_end(item.event_id)
        if len(self._items) > self.limit:
            self._items.popitem(last=False)

    def forget(self, event_id: str) -> None:
        """Drop a reservation whose produce failed."""
        self._items.pop(event_id, None)


@dataclass
class ApiState:
    """Long-lived clients and indexes of one API process."""

    settings: Settings
    catalog: SchemaCatalog
    metrics: Metrics
    keys: KeyRing
    producer: AIOKafkaProducer
    client: Client
    index: ProvenanceIndex
    follower: IndexFollower
    ingress: Ingress | None
    """Decodes and routes events as the bridge does (no dispatcher: it plans only)."""
    topics: dict[str, str]
    produced: ProducedEvents = field(default_factory=ProducedEvents)

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


def get_state(request: Request) -> ApiState:
    """The ``ApiState`` of the app serving ``request``."""
    state: ApiState = request.app.state.ktb
    return state


bearer = HTTPBearer(auto_error=False, description="An API key; `ktb api-key` makes one")


def get_caller(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
) -> Caller:
    """Who is calling (401 problem for a missing or unknown key)."""
    return get_state(request).keys.authenticate(request.headers.get("authorization"))


State = Annotated[ApiState, Depends(get_state)]
CallerDep = Annotated[Caller, Depends(get_caller)]
