"""Worker start-up while Temporal is away: the start is retried until Temporal answers,
and a namespace that does not exist on a server that answers is a configuration error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client

from bridge.dev.stack import TemporalServer, free_port
from bridge.errors import ConfigError
from bridge.observability.telemetry import open_telemetry
from bridge.settings import Settings
from bridge.wiring import open_worker
from tests.support.waiting import eventually
from tests.workflows import Noop


def retried(caplog: pytest.LogCaptureFixture, task_queue: str) -> Callable[[], Awaitable[bool]]:
    """Whether the worker of ``task_queue`` has logged a retry of its start."""

    async def check() -> bool:
        return f"retrying to start the worker of task queue {task_queue}" in caplog.text

    return check


async def test_a_worker_started_before_temporal_starts_once_it_answers(
    settings: Settings, uid: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ktb")
    port = free_port()
    local = settings.model_copy(update={"temporal_address": f"localhost:{port}"})
    server = TemporalServer(tmp_path / "temporal", port, headless=True, in_memory=True)
    queue = f"late-{uid}"

    async def start_temporal() -> None:
        await eventually(retried(caplog, queue))  # nothing answered the worker's first try
        server.start()
        await server.wait_ready()

    starting = asyncio.create_task(start_temporal())
    try:
        with open_telemetry(local, "worker") as telemetry:
            async with open_worker(local, telemetry, queue, [Noop]) as worker:
                await starting
                result = await worker.client.execute_workflow(
                    Noop.run, {"order_id": uid}, id=f"late-{uid}", task_queue=queue
                )
        assert result == uid
    finally:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        if server.service is not None:
            server.service.stop()


async def test_a_worker_waits_out_a_namespace_that_appears_within_the_grace(
    settings: Settings, client: Client, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The server answers but refuses the worker's start-up check (no such namespace):
    # each try connects anew, and the one after the namespace is registered runs. (Its
    # workflows wait for the frontend's namespace cache; the first test runs one.)
    caplog.set_level(logging.WARNING, logger="ktb")
    namespace = f"ns-{uid}"
    local = settings.model_copy(update={"temporal_namespace": namespace})
    queue = f"ns-{uid}"

    async def register() -> None:
        await eventually(retried(caplog, queue))
        await client.workflow_service.register_namespace(
            RegisterNamespaceRequest(
                namespace=namespace,
                workflow_execution_retention_period=Duration(seconds=86400),
            )
        )

    registering = asyncio.create_task(register())
    try:
        with open_telemetry(local, "worker") as telemetry:
            async with open_worker(local, telemetry, queue, [Noop]) as worker:
                await registering
                assert worker.is_running
                assert worker.client.namespace == namespace
    finally:
        registering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await registering


@pytest.mark.slow
async def test_a_namespace_that_never_appears_is_a_configuration_error(
    settings: Settings, uid: str
) -> None:
    # Past ANSWERING_GRACE_S (10 s) of a server answering and refusing, waiting stops.
    local = settings.model_copy(update={"temporal_namespace": f"missing-{uid}"})
    refused = pytest.raises(ConfigError, match=f"cannot start the worker of task queue q-{uid}")
    with open_telemetry(local, "worker") as telemetry, refused as err:
        async with open_worker(local, telemetry, f"q-{uid}", [Noop]):
            pass
    assert f"missing-{uid}" in err.value.message
