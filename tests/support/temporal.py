"""Waiting on workflows the bridge starts, counting them in visibility, and reading what a
``Recorder`` noted.

Visibility lists a start a moment after the start is answered: ``count_is`` is read
until it holds, and ``runs_listed`` waits for the latest runs before it checks.
"""

from __future__ import annotations

import asyncio
from collections import Counter
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


async def count(client: Client, query: str) -> int:
    """Executions (open or closed) that visibility lists for ``query`` now."""
    return (await client.count_workflows(query)).count


async def count_is(client: Client, query: str, expected: int) -> bool:
    """Whether visibility lists ``expected`` executions for ``query`` now."""
    return await count(client, query) == expected


async def listed_runs(client: Client, prefix: str) -> list[tuple[str, str]]:
    """(workflow id, run id) of every execution (open or closed) whose id starts with
    ``prefix``, as visibility lists them now."""
    return [
        (wf.id, wf.run_id)
        async for wf in client.list_workflows(f"WorkflowId STARTS_WITH '{prefix}'")
    ]


def _per_id(runs: list[tuple[str, str]]) -> dict[str, int]:
    return dict(Counter(workflow_id for workflow_id, _ in runs))


async def runs_per_id(client: Client, prefix: str) -> dict[str, int]:
    """Executions (open or closed) per workflow id starting with ``prefix``."""
    return _per_id(await listed_runs(client, prefix))


async def runs_listed(
    client: Client, prefix: str, expected: dict[str, int], timeout: float = 20.0
) -> None:
    """Check that visibility lists exactly ``expected`` executions per id under ``prefix``,
    once it lists the latest run of every id of ``expected`` (a later run of an id, a
    duplicate, is then in the listing too)."""
    latest = {
        (await client.get_workflow_handle(workflow_id).describe()).run_id
        for workflow_id in expected
    }

    async def caught_up() -> list[tuple[str, str]]:
        runs = await listed_runs(client, prefix)
        assert latest <= {run_id for _, run_id in runs}, runs
        return runs

    found = _per_id(await eventually(caught_up, timeout))
    assert found == expected, found
