"""The window collector: the workflow behind routes with ``debounce`` or ``batch``.

A route with ``debounce`` or ``batch`` does not start its workflow per event. The
bridge signals-with-start one collector per resolved workflow id (``ktb.Window``,
its id ``collector_id`` of the target's); the signal carries the event as a
``WindowEvent``. The collector keeps the events of the open window in its own
state, so a bridge that dies loses nothing: an offset is committed only once its
event is in the collector's history. It drops an event id it has seen (a record
redelivered after a kill or a rebalance), closes the window by its ``WindowPolicy``,
starts the target workflow as a child with every event of the window (one list of
signal-shaped messages, in offset order per partition), waits for that run to end,
and continues as new with what arrived meanwhile and the seen ids. Windows of one
workflow id therefore run one after another, each a new run of the same id: only
the collector starts that id again (``ALLOW_DUPLICATE``), and only once the run
before it has closed.

An idle collector stays open ``dedupe_for`` after its last window, recognising
redelivered ids, then completes; the next event starts a new one. The rules
(when a window closes, what it takes) are pure and live in ``bridge.flow``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from temporalio import workflow
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ChildWorkflowError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from bridge.flow import (
        BUSY_RETRY,
        WINDOW_SIGNAL,
        WINDOW_WORKFLOW,
        Window,
        WindowEvent,
        WindowKind,
        WindowState,
    )
    from bridge.observability.metrics import WINDOW_CLOSED


def _keyword_attributes(values: dict[str, str]) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [SearchAttributePair(SearchAttributeKey.for_keyword(k), v) for k, v in values.items()]
    )


@workflow.defn(name=WINDOW_WORKFLOW)
class WindowCollector:
    """Collects one workflow id's events into windows and starts a run per window."""

    @workflow.init
    def __init__(self, state: WindowState) -> None:
        self.window = Window(state)

    @workflow.signal(name=WINDOW_SIGNAL)
    def add(self, event: WindowEvent) -> None:
        """One event from the bridge; a repeated id is dropped."""
        if not self.window.add(event, workflow.now().timestamp()):
            workflow.logger.info("dropping repeated event %s", event.event_id)

    @workflow.query(name="ktb_window")
    def pending(self) -> list[str]:
        """The ids of the events in the open window."""
        return [p.event.event_id for p in self.window.pending]

    @workflow.run
    async def run(self, state: WindowState) -> None:
        """Wait for a window to close, deliver it, continue as new; complete when idle."""
        while True:
            if not self.window.pending:
                try:
                    await workflow.wait_condition(
                        lambda: bool(self.window.pending), timeout=self.window.dedupe_for_s
                    )
                except TimeoutError:
                    if self.window.pending:
                        continue  # an event came with the timer, in the same task
                    # Idle for dedupe_for: a signal arriving now fails this completion
                    # on the server and is handled by a replay of this task.
                    return
            now = workflow.now().timestamp()
            if not self.window.due(now):
                closes = self.window.closes_at() or now
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        self.window.full, timeout=max(closes - now, 0.001)
                    )
                continue
            await self._deliver(self.window.take())
            # Signals handled so far are in the window's state: nothing is left behind.
            workflow.continue_as_new(self.window.state())

    async def _deliver(self, events: list[WindowEvent]) -> None:
        """Start the target with ``events`` and wait for that run to end."""
        if not events:
            return
        first, latest = events[0], events[-1]
        target = latest.target
        while True:
            try:
                handle = await workflow.start_child_workflow(
                    target.workflow,
                    [e.message for e in events],
                    id=target.workflow_id,
                    task_queue=target.task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                    search_attributes=_keyword_attributes(first.search_attributes),
                    memo=dict(first.memo),
                )
                break
            except WorkflowAlreadyStartedError:
                # A run of the id not started by this collector is still open.
                await workflow.sleep(BUSY_RETRY)
        _count_window(latest.policy.kind, target.route, len(events))
        try:
            await handle
        except ChildWorkflowError as exc:
            # The run had the window's events; how it ended is its own business.
            workflow.logger.warning("window run %s ended: %s", target.workflow_id, exc.cause)


def _count_window(kind: WindowKind, route: str, size: int) -> None:
    if workflow.unsafe.is_replaying_history_events():
        return
    count: Callable[[str, str, int], None] | None = workflow.extern_functions().get(WINDOW_CLOSED)
    if count is not None:
        count(kind.value, route, size)


def with_collector(workflows: Iterable[type]) -> list[type]:
    """``workflows`` plus the window collector, for every worker a route may target.

    A worker built by hand runs it with ``workflow_runner=BRIDGE_RUNNER``
    (``bridge.temporal.sandbox``), as ``open_worker`` does.
    """
    listed = list(workflows)
    return listed if WindowCollector in listed else [*listed, WindowCollector]
