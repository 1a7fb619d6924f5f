"""How a replay acts: starts answered from batched visibility lookups, and fresh ids.

A range the bridge already processed starts nothing in an idempotent replay: each
start would answer "duplicate". ``ReplayDispatcher`` gives that answer from
``KnownWorkflows``, one visibility query per batch of workflow ids, instead of a
start per record, and bounds the Temporal actions a replay runs at once.
``FreshIds`` gives a fresh replay's actions workflow ids of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from dataclasses import dataclass
from datetime import timedelta

from temporalio.api.workflowservice.v1 import ListWorkflowExecutionsRequest
from temporalio.client import Client
from temporalio.converter import PayloadConverter
from temporalio.service import RPCError, RPCStatusCode

from bridge.concurrency import ActionLimit
from bridge.dispatch import Dispatcher, Executor, Outcome, Result
from bridge.envelope import Event
from bridge.observability.metrics import Metrics
from bridge.routes import Action, ActionKind
from bridge.temporal import visibility
from bridge.temporal.attributes import TENANT_ID
from bridge.tenancy import check_owner

log = logging.getLogger("ktb.replay")

LOOKUP_BATCH = 250
MIN_LOOKUP_BATCH = 20
LOOKUP_WINDOW_S = 0.002
LOOKUP_QUERIES = 2


@dataclass(frozen=True)
class Known:
    """A workflow visibility lists: its latest run and the tenant it belongs to."""

    run_id: str
    tenant: str | None


_PAYLOADS = PayloadConverter.default


class KnownWorkflows:
    """Finds which workflow ids exist, many per visibility query (``WorkflowId IN (...)``).

    At most ``queries`` queries run at once. Ids asked for while they all run wait
    and go out together, up to ``batch`` per query, as soon as one returns: the
    batch grows with the server's latency instead of the number of queries (many
    small concurrent queries are what a visibility store answers slowest). With a
    query slot free, ids asked for within ``window_s`` of each other share a query.

    ``None`` means "not known to exist": the id is not listed or the query failed;
    callers fall back to the action. A query the server rejects halves the batch
    (the query may exceed the server's length limit); when even small batches are
    rejected, visibility cannot answer such queries and no more are made.
    """

    def __init__(
        self,
        client: Client,
        batch: int = LOOKUP_BATCH,
        window_s: float = LOOKUP_WINDOW_S,
        queries: int = LOOKUP_QUERIES,
    ) -> None:
        self.client = client
        self.batch = batch
        self.window_s = window_s
        self.queries = queries
        self.enabled = True
        self._waiting: dict[str, list[asyncio.Future[Known | None]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def lookup(self, workflow_id: str) -> Known | None:
        """The latest run of ``workflow_id`` and its tenant if visibility lists it."""
        if not self.enabled or not visibility.is_safe(workflow_id):
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Known | None] = loop.create_future()
        self._waiting.setdefault(workflow_id, []).append(future)
        if len(self._running) < self.queries:
            if len(self._waiting) >= self.batch:
                self._flush()
            elif self._timer is None:
                self._timer = loop.call_later(self.window_s, self._flush)
        # Otherwise the next query to return sends it.
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting and len(self._running) < self.queries:
            ids = list(itertools.islice(self._waiting, self.batch))
            task = asyncio.create_task(self._query({i: self._waiting.pop(i) for i in ids}))
            self._running.add(task)
            task.add_done_callback(self._query_done)

    def _query_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._flush()

    async def _listed(self, query: str, page_size: int) -> dict[str, Known]:
        """Workflow id -> latest run (and its tenant) of the executions ``query`` lists.

        The raw RPC rather than ``Client.list_workflows``, which decodes every
        execution's memo and search attributes: most of a replay's CPU when each
        row only needs its ids and one attribute.
        """
        found: dict[str, Known] = {}
        request = ListWorkflowExecutionsRequest(
            namespace=self.client.namespace, query=query, page_size=page_size
        )
        while True:
            page = await self.client.workflow_service.list_workflow_executions(request, retry=True)
            for info in page.executions:
                # Newest first: the first run listed is the one a start would meet.
                workflow_id = info.execution.workflow_id
                if workflow_id not in found:
                    tenant = info.search_attributes.indexed_fields.get(TENANT_ID.name)
                    found[workflow_id] = Known(
                        info.execution.run_id,
                        _PAYLOADS.from_payload(tenant, str) if tenant is not None else None,
                    )
            if not page.next_page_token:
                return found
            request.next_page_token = page.next_page_token

    async def _query(self, waiting: dict[str, list[asyncio.Future[Known | None]]]) -> None:
        found: dict[str, Known] = {}
        try:
            if self.enabled:
                ids = ",".join(f"'{workflow_id}'" for workflow_id in waiting)
                found = await self._listed(f"WorkflowId IN ({ids})", len(waiting) + 10)
        except RPCError as exc:
            if exc.status is RPCStatusCode.INVALID_ARGUMENT:
                # Half the rejected query, not the current batch: concurrent queries
                # rejected together shrink it once.
                self.batch = min(self.batch, len(waiting) // 2)
                if self.batch < MIN_LOOKUP_BATCH:
                    self.enabled = False
            log.debug("workflow lookup failed (%s); acting on these records instead", exc)
        finally:
            for workflow_id, futures in waiting.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(workflow_id))


class ReplayDispatcher(Dispatcher):
    """The live dispatcher with a bound on Temporal actions and, for idempotent
    replays, one shortcut.

    At most ``actions`` actions run at once, however many records are in flight (a
    fixed ``ActionLimit``).
    A start whose route rejects duplicate ids and ignores duplicates answers
    "duplicate" for any id that already exists, running or closed: with
    ``lookups`` on, such ids are found by batched visibility queries, so a range
    the bridge already processed costs one query per batch instead of one start
    per record. Ids visibility does not list yet go through the normal start.
    """

    def __init__(
        self,
        client: Client,
        actions: int,
        lookups: bool = True,
        known: KnownWorkflows | None = None,
        rpc_timeout: timedelta = timedelta(seconds=10),
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(client, rpc_timeout, ActionLimit(actions), metrics)
        self.known = known or KnownWorkflows(client)
        self.lookups = lookups

    async def execute(
        self, action: Action, event: Event, closed: asyncio.Event | None = None
    ) -> Result:
        """Answer known duplicates from visibility; carry out everything else as live."""
        if (
            self.lookups
            and action.kind is ActionKind.START
            and action.window is None
            and action.id_reuse_policy == "reject_duplicate"
            and action.on_duplicate == "ignore"
        ):
            known = await self.known.lookup(action.workflow_id)
            if known is not None:
                check_owner(
                    known.tenant,
                    event.tenant_id,
                    workflow_id=action.workflow_id,
                    event_id=action.event_id,
                )
                return self._result(Outcome.DUPLICATE, action, known.run_id, "already exists")
        return await super().execute(action, event, closed)


class FreshIds:
    """A fresh replay's executor: every action reaches the workflow id its route builds
    plus the replay's suffix (``-replay-<generation>``), so the processes run again
    beside the ones the bridge started, which nothing touches. Dry runs show the
    suffixed ids too (``inner`` is then ``DryRun``).
    """

    def __init__(self, inner: Executor, suffix: str) -> None:
        self.inner = inner
        self.suffix = suffix

    async def execute(
        self, action: Action, event: Event, closed: asyncio.Event | None = None
    ) -> Result:
        """Carry out ``action`` on the replay's own workflow id."""
        renamed = dataclasses.replace(action, workflow_id=action.workflow_id + self.suffix)
        return await self.inner.execute(renamed, event, closed)
