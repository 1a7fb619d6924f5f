"""What a closed workflow received: the history check behind ``workflow_closed``.

A signal or update that finds its workflow closed is a duplicate if the workflow had
received the event (a redelivery after a crash, an idempotent replay) and a dead
letter otherwise. The event id is in a bridge signal's payload and is the id of a
bridge update, so the run's history (and the runs it continued from) tells.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecutionDescription

from bridge.routes import Action, ActionKind

MAX_RUNS_SEARCHED = 20
"""Runs of a continue-as-new chain searched for an event a closed workflow received."""


async def received(
    client: Client, action: Action, target: WorkflowExecutionDescription, rpc_timeout: timedelta
) -> bool:
    """Whether a run of the workflow (this one, or one it continued from) received the
    event: its signal carrying the event id, or its update with the event id as id."""
    run_id: str | None = target.run_id
    for _ in range(MAX_RUNS_SEARCHED):
        if not run_id:
            return False
        handle = client.get_workflow_handle(action.workflow_id, run_id=run_id)
        previous: str | None = None
        async for item in handle.fetch_history_events(rpc_timeout=rpc_timeout):
            if item.HasField("workflow_execution_started_event_attributes"):
                previous = (
                    item.workflow_execution_started_event_attributes.continued_execution_run_id
                )
            elif await _carries_event(client, item, action):
                return True
        run_id = previous
    return False


async def _carries_event(client: Client, item: HistoryEvent, action: Action) -> bool:
    if action.kind is ActionKind.UPDATE_WITH_START:
        if item.HasField("workflow_execution_update_accepted_event_attributes"):
            accepted = item.workflow_execution_update_accepted_event_attributes
            return accepted.accepted_request.meta.update_id == action.event_id
        return False
    if not item.HasField("workflow_execution_signaled_event_attributes"):
        return False
    signalled = item.workflow_execution_signaled_event_attributes
    if signalled.signal_name != action.signal or not signalled.input.payloads:
        return False
    try:
        values = await client.data_converter.decode(list(signalled.input.payloads[:1]))
    except Exception:  # a payload we cannot read is not this event's
        return False
    first = values[0] if values else None
    return isinstance(first, dict) and first.get("event_id") == action.event_id
