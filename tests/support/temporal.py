"""Waiting on workflows the bridge starts, and reading what a ``Recorder`` noted."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from tests.support.waiting import eventually


async def workflow_result(client: Client, workflow_id: str, timeout: float = 60.0) -> Any:
    """Wait for a workflow the bridge is about to start, then for its result."""
    handle = client.get_workflow_handle(workflow_id)

    async def exists() -> bool:
        try:
            await handle.describe()
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True

    await eventually(exists, timeout)
    return await asyncio.wait_for(handle.result(), timeout)


async def received(handle: WorkflowHandle[Any, Any]) -> list[int] | None:
    """What a Recorder noted, or ``None`` while it does not exist yet."""
    try:
        return await handle.query("received")
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return None
        raise
