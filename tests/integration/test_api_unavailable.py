"""Temporal unreachable: the API answers 503 problems (never 500) and still produces events."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx

from bridge.settings import Settings
from tests.support import eventually, order_data, routes_config, running_api, write_routes


class CuttableProxy:
    """A TCP proxy to one address; while cut it drops every connection it gets."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.host, self.port = host, int(port)
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.open = True
        self.dropped = 0

    async def start(self) -> str:
        """Listen on a free port; return ``host:port``."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        """Stop listening."""
        self.cut()
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            self.dropped += 1
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)
        self.writers += [writer, upstream_writer]
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()

    def cut(self) -> None:
        """Drop the open connections and every new one until ``resume``."""
        self.open = False
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    def resume(self) -> None:
        """Proxy new connections again."""
        self.open = True


async def test_temporal_unreachable_is_503(settings: Settings, topics, uid, tmp_path, caplog):
    proxy = CuttableProxy(settings.temporal_address)
    config = routes_config(
        [
            {
                "name": "start",
                "topic": topics["orders"],
                "type": "com.example.order.placed",
                "action": "start",
                "workflow": "KtbApiTestNobody",
                "task_queue": f"nobody-{uid}",
                "workflow_id": f"down-{uid}-{{data.order_id}}",
            }
        ]
    )
    s = settings.model_copy(
        update={
            "temporal_address": await proxy.start(),
            "provenance_topic": f"ktb.provenance-{uid}",
            "api_auth": False,
            "routes_file": write_routes(tmp_path / "routes.yaml", config),
        }
    )
    async with running_api(s) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        assert (await http.get("/processes", params={"key": f"k-{uid}"})).status_code == 200
        proxy.cut()

        async def unavailable() -> httpx.Response:
            response = await http.get("/processes", params={"key": f"k-{uid}"})
            assert response.status_code == 503, response.text
            return response

        listing = await eventually(unavailable)
        assert listing.headers["content-type"] == "application/problem+json"
        assert listing.json()["type"] == "urn:ktb:problem:temporal-unavailable"
        process = await http.get(f"/processes/wf-{uid}")
        assert process.status_code == 503
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["temporal"] == "unreachable"
        assert ready.json()["checks"]["kafka"] == "ok"
        # Producing needs only Kafka; a wait that Temporal cannot serve ends in 202.
        produced = await http.post(
            "/events?wait=1",
            content=json.dumps(
                {
                    "id": f"e-{uid}",
                    "type": "com.example.order.placed",
                    "source": "tests",
                    "data": order_data(f"o-{uid}"),
                }
            ),
            headers={"Content-Type": "application/cloudevents+json"},
        )
        assert produced.status_code == 202, produced.text
        assert produced.json()["produced"]["topic"] == topics["orders"]
        assert produced.json()["workflow_id"] == f"down-{uid}-o-{uid}"
        assert f"waiting for the process of e-{uid}" in caplog.text
    await proxy.stop()


async def stream_messages(http: httpx.AsyncClient, path: str, out: list[tuple[str, dict]]) -> None:
    """Read a process stream to its end into ``out`` as ``(event, data)`` pairs."""
    async with http.stream("GET", path) as response:
        assert response.status_code == 200
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                out.append((kind, json.loads(line.removeprefix("data: "))))


async def test_a_stream_rides_out_a_short_outage_and_reports_a_long_one(
    settings: Settings, client, uid
):
    proxy = CuttableProxy(settings.temporal_address)
    s = settings.model_copy(
        update={
            "temporal_address": await proxy.start(),
            "provenance_topic": f"ktb.provenance-{uid}",
            "api_auth": False,
            "api_stream_interval_s": 0.1,
            "api_stream_outage_s": 3.0,
            "api_query_timeout_s": 0.3,
            "routes_file": settings.routes_file.parent / f"no-routes-{uid}.yaml",
        }
    )
    # No worker polls this task queue: the workflows stay running until terminated.
    handles = [
        await client.start_workflow(
            "KtbApiTestNobody", id=f"idle-{uid}-{n}", task_queue=f"nobody-{uid}"
        )
        for n in (1, 2)
    ]
    async with running_api(s) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        short: list[tuple[str, dict]] = []
        reading = asyncio.create_task(
            stream_messages(http, f"/processes/idle-{uid}-1/stream", short)
        )

        async def running() -> bool:
            return [kind for kind, _ in short] == ["state"]

        await eventually(running)
        proxy.cut()

        async def noticed() -> bool:
            return proxy.dropped > 0

        await eventually(noticed)
        proxy.resume()
        await handles[0].terminate(reason="test")
        await asyncio.wait_for(reading, 30)
        assert [(kind, data["status"]) for kind, data in short] == [
            ("state", "running"),
            ("state", "terminated"),
        ]

        long: list[tuple[str, dict]] = []
        reading = asyncio.create_task(
            stream_messages(http, f"/processes/idle-{uid}-2/stream", long)
        )

        async def running_too() -> bool:
            return [kind for kind, _ in long] == ["state"]

        await eventually(running_too)
        proxy.cut()
        await asyncio.wait_for(reading, 60)
        kind, data = long[-1]
        assert kind == "error" and data["status"] == 503
    await proxy.stop()
    await handles[1].terminate(reason="test")
