"""Temporal unreachable: the API answers 503 problems (never 500) and still produces events."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx

from bridge.settings import Settings
from tests.support import eventually, order_data, running_api


class CuttableProxy:
    """A TCP proxy to one address whose connections the test can cut at once."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.host, self.port = host, int(port)
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        """Listen on a free port; return ``host:port``."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
        """Refuse new connections and drop the open ones."""
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()


async def test_temporal_unreachable_is_503(settings: Settings, topics, uid):
    proxy = CuttableProxy(settings.temporal_address)
    s = settings.model_copy(
        update={
            "temporal_address": await proxy.start(),
            "provenance_topic": f"ktb.provenance-{uid}",
            "api_auth": False,
            "api_topics": {"com.example.order.placed": topics["orders"]},
            "routes_file": settings.routes_file.parent / f"no-routes-{uid}.yaml",
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
        assert ready.json()["checks"]["temporal"] != "ok"
        assert ready.json()["checks"]["kafka"] == "ok"
        # Producing needs only Kafka.
        produced = await http.post(
            "/events",
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
