"""``/healthz`` (alive), ``/readyz`` (Kafka, Temporal, the database, the indexer) and
``/metrics``."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from datetime import timedelta

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from temporalio.service import RPCError

from bridge.api import problems
from bridge.api.models import Alive, PausedView, Ready
from bridge.api.state import State
from bridge.errors import BridgeError
from bridge.policies import paused_partitions

router = APIRouter(tags=["operations"])
log = logging.getLogger("ktb.api")
CHECK_TIMEOUT_S = 3.0


@router.get("/healthz", summary="The process is alive", response_model=Alive)
async def healthz() -> Alive:
    """Always ``ok`` while the process serves requests."""
    return Alive(status="ok")


async def _kafka(state: State) -> str:
    try:
        metadata = await asyncio.wait_for(
            state.producer.client.fetch_all_metadata(), CHECK_TIMEOUT_S
        )
    except (KafkaError, TimeoutError) as exc:
        # Unauthenticated: the client's text (addresses, broker ids) goes to the log only.
        log.warning("readiness: Kafka unreachable: %s", exc or type(exc).__name__)
        return "unreachable"
    return "ok" if metadata.brokers() else "no brokers"


async def _temporal(state: State) -> str:
    try:
        healthy = await state.client.service_client.check_health(
            timeout=timedelta(seconds=CHECK_TIMEOUT_S)
        )
    except RPCError as exc:
        log.warning("readiness: Temporal unreachable: %s", exc.message)
        return "unreachable"
    return "ok" if healthy else "not serving"


@router.get(
    "/readyz",
    summary="Kafka, Temporal and the database answer; the indexer (if here) has caught up",
    response_model=Ready,
    responses=problems.responses(503),
)
async def readyz(request: Request, state: State) -> Response:
    """200 when every check passes, else a 503 problem listing the checks."""
    kafka, temporal, database, paused = await asyncio.gather(
        _kafka(state), _temporal(state), state.database.ping(), _paused(state)
    )
    checks = {"kafka": kafka, "temporal": temporal, "database": "ok" if database else "unreachable"}
    if state.indexer is not None:
        checks["provenance_index"] = state.indexer.state
    if all(v == "ok" for v in checks.values()):
        return JSONResponse(Ready(status="ready", checks=checks, paused=paused).model_dump())
    failing = ", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
    return problems.problem_response(
        request, 503, "not-ready", failing, checks=checks,
        paused=[p.model_dump() for p in paused],
    )  # fmt: skip


async def _paused(state: State) -> list[PausedView]:
    """The partitions bridges hold paused (``ktb.parking``); none when it cannot be read."""
    try:
        pauses = await asyncio.wait_for(paused_partitions(state.settings), CHECK_TIMEOUT_S)
    except (BridgeError, KafkaError, TimeoutError) as exc:
        log.warning("readiness: paused partitions not read: %s", exc or type(exc).__name__)
        return []
    return [PausedView.model_validate(asdict(p)) for p in pauses]


@router.get(
    "/metrics",
    summary="Prometheus metrics of this process",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(state: State) -> Response:
    """Every metric of the process's own registry (never the global one)."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
