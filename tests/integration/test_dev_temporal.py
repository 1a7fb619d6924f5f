"""The local stack's Temporal dev server restarted in place: ``make bench`` gives each
scenario an empty in-memory server this way, on the port its settings name."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from bridge.dev.stack import TemporalServer, free_port


async def test_an_in_memory_server_comes_back_empty_on_its_port(tmp_path: Path, uid: str) -> None:
    server = TemporalServer(tmp_path / "temporal", free_port(), headless=True, in_memory=True)
    server.start()
    try:
        await server.wait_ready()
        client = await Client.connect(server.address)
        await client.start_workflow("Idle", id=f"before-{uid}", task_queue=f"idle-{uid}")
        assert (await client.get_workflow_handle(f"before-{uid}").describe()).id == f"before-{uid}"

        await server.restart()

        client = await Client.connect(server.address)
        with pytest.raises(RPCError) as gone:
            await client.get_workflow_handle(f"before-{uid}").describe()
        assert gone.value.status == RPCStatusCode.NOT_FOUND
        await client.start_workflow("Idle", id=f"after-{uid}", task_queue=f"idle-{uid}")
        assert (await client.get_workflow_handle(f"after-{uid}").describe()).id == f"after-{uid}"
    finally:
        if server.service is not None:
            server.service.stop()
