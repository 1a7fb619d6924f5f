"""Start-up connections: wait out a server that is down, fail fast on one that answers wrongly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from bridge.dev.stack import free_port
from bridge.errors import ConfigError, TransientError
from bridge.temporal.client import connect_temporal


async def test_unreachable_temporal_is_retried_until_the_deadline(settings) -> None:
    quick = settings.model_copy(
        update={"temporal_address": f"localhost:{free_port()}", "connect_timeout_s": 1.0}
    )
    with pytest.raises(TransientError, match="unreachable"):
        await connect_temporal(quick)


async def test_a_port_that_answers_but_is_not_temporal_fails_as_configuration(settings) -> None:
    # Kafka's port accepts TCP but does not speak gRPC: no amount of waiting helps.
    wrong = settings.model_copy(
        update={"temporal_address": settings.kafka_bootstrap, "connect_timeout_s": 120.0}
    )
    with pytest.raises(ConfigError, match="cannot connect to Temporal"):
        await connect_temporal(wrong)


@contextlib.asynccontextmanager
async def counting_proxy(target: str) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP proxy to ``target`` on a free port; the list counts the bytes sent to it."""
    host, _, port = target.rpartition(":")
    sent = [0]

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                sent[0] += len(chunk) if up else 0
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(
            pipe(reader, upstream_writer, True), pipe(upstream_reader, writer, False)
        )

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], sent
    finally:
        server.close()


@pytest.mark.parametrize(("compression", "most_bytes"), [("none", None), ("gzip", 50_000)])
async def test_grpc_compression_setting_reaches_the_wire(
    settings, uid: str, compression: str, most_bytes: int | None
) -> None:
    # A large, repetitive input: gzip shrinks the start request to a few kilobytes, and
    # the server hands the input back byte for byte either way.
    data = {"order_id": uid, "note": "x" * 200_000}
    async with counting_proxy(settings.temporal_address) as (port, sent):
        client = await connect_temporal(
            settings.model_copy(
                update={
                    "temporal_address": f"127.0.0.1:{port}",
                    "temporal_grpc_compression": compression,
                }
            )
        )
        before = sent[0]
        handle = await client.start_workflow(
            "CompressionProbe", data, id=f"compression-{compression}-{uid}", task_queue=f"cp-{uid}"
        )
        request_bytes = sent[0] - before
        try:
            history = await handle.fetch_history()
            started = history.events[0].workflow_execution_started_event_attributes
            (payload,) = started.input.payloads
            assert client.data_converter.payload_converter.from_payload(payload) == data
        finally:
            await handle.terminate()
    if most_bytes is None:
        assert request_bytes > 200_000
    else:
        assert request_bytes < most_bytes
