"""Replays as Temporal workflows: they survive worker crashes and report progress.

``ReplayWorkflow`` runs one activity, ``ktb.replay_range``, which reads the plan
in chunks with the same ``ReplayRunner`` as a foreground ``ktb replay`` and
heartbeats its checkpoint: the next offset per partition plus the report of every
record before it. An attempt that follows a crash (heartbeat timeout) resumes
from the last heartbeat, so every record is counted exactly once. Every few
seconds the activity also signals its checkpoint to the workflow, whose
``ktb_replay_status`` query returns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from temporalio.client import (
        Client,
        WorkflowExecutionStatus,
        WorkflowFailureError,
        WorkflowQueryFailedError,
    )
    from temporalio.converter import value_to_type
    from temporalio.exceptions import ApplicationError
    from temporalio.service import RPCError, RPCStatusCode

    from bridge.errors import BridgeError
    from bridge.observability.metrics import Metrics
    from bridge.observability.telemetry import open_telemetry
    from bridge.replay.plan import ReplayPlan
    from bridge.replay.report import ReplayCheckpoint, ReplayReport
    from bridge.replay.runner import ReplayRunner, replay_ingress
    from bridge.settings import Settings
    from bridge.temporal.client import running_worker

log = logging.getLogger("ktb.replay")

REPLAY_WORKFLOW = "ktb.Replay"
REPLAY_ACTIVITY = "ktb.replay_range"
PROGRESS_SIGNAL = "ktb_replay_progress"
STATUS_QUERY = "ktb_replay_status"
MEMO_KEY = "ktb_replay"
ID_PREFIX = "ktb-replay-"


@dataclass
class ReplayJob:
    """The replay workflow's input: a resolved plan and how closely to watch it."""

    plan: ReplayPlan
    heartbeat_timeout_s: float = 30.0
    progress_interval_s: float = 10.0
    timeout_s: float = 86400.0


@dataclass
class ReplayStatus:
    """A replay as ``GET /replays/{id}`` and ``ktb replay-status`` show it."""

    replay_id: str
    state: str
    """``running``, ``completed``, ``failed``, ``canceled``, ``terminated`` or ``timed_out``."""
    topic: str
    mode: str
    dry_run: bool
    generation: str
    tenant: str | None
    total: int
    done: int
    report: ReplayReport | None
    error: str | None = None


@workflow.defn(name=REPLAY_WORKFLOW)
class ReplayWorkflow:
    """Runs the replay activity to the end; answers progress queries meanwhile."""

    def __init__(self) -> None:
        self._progress: ReplayCheckpoint | None = None

    @workflow.run
    async def run(self, job: ReplayJob) -> ReplayReport:
        """Replay the plan; the activity resumes from its last heartbeat if a worker dies."""
        report: ReplayReport = await workflow.execute_activity(
            REPLAY_ACTIVITY,
            job,
            start_to_close_timeout=timedelta(seconds=job.timeout_s),
            heartbeat_timeout=timedelta(seconds=job.heartbeat_timeout_s),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=30),
            ),
            result_type=ReplayReport,
        )
        return report

    @workflow.signal(name=PROGRESS_SIGNAL)
    def progress(self, checkpoint: ReplayCheckpoint) -> None:
        """The activity's latest checkpoint."""
        self._progress = checkpoint

    @workflow.query(name=STATUS_QUERY)
    def status(self) -> ReplayCheckpoint | None:
        """The latest checkpoint the activity reported, if any yet."""
        return self._progress


class ReplayActivities:
    """The replay activity with the long-lived clients it needs."""

    def __init__(self, settings: Settings, client: Client, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics or Metrics()

    @activity.defn(name=REPLAY_ACTIVITY)
    async def replay_range(self, job: ReplayJob) -> ReplayReport:
        """Replay the plan from the last heartbeat (or its start); heartbeat the checkpoint."""
        info = activity.info()
        checkpoint: ReplayCheckpoint | None = None
        if info.heartbeat_details:
            checkpoint = value_to_type(ReplayCheckpoint, info.heartbeat_details[0])
            log.info(
                "replay %s resumes at attempt %d from %s",
                info.workflow_id, info.attempt, checkpoint.positions,
            )  # fmt: skip
        try:
            async with replay_ingress(
                self.settings, job.plan.request, self.metrics, self.client
            ) as ingress:
                runner = ReplayRunner(self.settings, ingress, job.plan, checkpoint)
                reporter = asyncio.create_task(self._report(runner, job, info.workflow_id))
                try:
                    return await runner.run()
                finally:
                    reporter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reporter
        except BridgeError as exc:
            if exc.transient:
                raise
            # Bad input or configuration: retrying the same plan cannot help.
            raise ApplicationError(
                exc.message, type=type(exc).__name__, non_retryable=True
            ) from exc

    async def _report(self, runner: ReplayRunner, job: ReplayJob, workflow_id: str | None) -> None:
        """Heartbeat the checkpoint often; signal it to the workflow now and then.

        Signals run in their own task: a slow signal must never delay a heartbeat.
        """
        signals = asyncio.create_task(self._signal_progress(runner, job, workflow_id))
        try:
            while True:
                activity.heartbeat(runner.checkpoint())
                await asyncio.sleep(job.heartbeat_timeout_s / 4)
        finally:
            signals.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await signals

    async def _signal_progress(
        self, runner: ReplayRunner, job: ReplayJob, workflow_id: str | None
    ) -> None:
        handle = self.client.get_workflow_handle(workflow_id or "")
        sent: list[int] | None = None
        while True:
            checkpoint = runner.checkpoint()
            if checkpoint.positions != sent:
                try:
                    await handle.signal(PROGRESS_SIGNAL, checkpoint)
                    sent = checkpoint.positions
                except RPCError as exc:  # progress is advisory; the heartbeat is what counts
                    log.warning("could not report replay progress: %s", exc.message)
            await asyncio.sleep(job.progress_interval_s)


# --- starting and inspecting replays -----------------------------------------------------


def new_replay_id() -> str:
    """A fresh replay (workflow) id."""
    return ID_PREFIX + uuid.uuid4().hex[:12]


def _summary(plan: ReplayPlan) -> dict[str, Any]:
    request = plan.request
    return {
        "topic": request.topic,
        "mode": request.mode.value,
        "dry_run": request.dry_run,
        "generation": request.generation,
        "tenant": request.tenant,
        "total": plan.total,
    }


async def start_replay(
    client: Client, settings: Settings, plan: ReplayPlan, replay_id: str | None = None
) -> str:
    """Start the replay workflow for a resolved plan; return its id."""
    replay_id = replay_id or new_replay_id()
    job = ReplayJob(
        plan,
        heartbeat_timeout_s=settings.replay_heartbeat_timeout_s,
        progress_interval_s=settings.replay_progress_interval_s,
        timeout_s=settings.replay_timeout_s,
    )
    await client.start_workflow(
        REPLAY_WORKFLOW,
        job,
        id=replay_id,
        task_queue=settings.replay_task_queue,
        memo={MEMO_KEY: _summary(plan)},
    )
    return replay_id


async def replay_status(
    client: Client, replay_id: str, query_timeout_s: float = 2.0
) -> ReplayStatus | None:
    """Where a replay is; ``None`` if there is no replay with that id."""
    handle = client.get_workflow_handle(replay_id, result_type=ReplayReport)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return None
        raise
    if description.workflow_type != REPLAY_WORKFLOW:
        return None
    summary: dict[str, Any] = (await description.memo()).get(MEMO_KEY) or {}
    total = int(summary.get("total", 0))
    status = description.status or WorkflowExecutionStatus.RUNNING
    report: ReplayReport | None = None
    done = 0
    error: str | None = None
    if status is WorkflowExecutionStatus.COMPLETED:
        report = await handle.result()
        done = total
    else:
        checkpoint = await _checkpoint(client, handle, description, query_timeout_s)
        if checkpoint is not None:
            report, done = checkpoint.report, checkpoint.done
        if status is WorkflowExecutionStatus.FAILED:
            try:
                await handle.result()
            except WorkflowFailureError as exc:
                error = _root_message(exc)
    return ReplayStatus(
        replay_id=replay_id,
        state=status.name.lower(),
        topic=str(summary.get("topic", "")),
        mode=str(summary.get("mode", "")),
        dry_run=bool(summary.get("dry_run", False)),
        generation=str(summary.get("generation", "")),
        tenant=summary.get("tenant"),
        total=total,
        done=done,
        report=report,
        error=error,
    )


async def _checkpoint(
    client: Client, handle: Any, description: Any, timeout_s: float
) -> ReplayCheckpoint | None:
    """The workflow's latest progress; without a worker to answer, the last heartbeat."""
    try:
        found: ReplayCheckpoint | None = await handle.query(
            STATUS_QUERY,
            result_type=ReplayCheckpoint,
            rpc_timeout=timedelta(seconds=timeout_s),
        )
        if found is not None:
            return found
    except (RPCError, WorkflowQueryFailedError) as exc:
        log.debug("replay status query failed (%s); using the last heartbeat", exc)
    return await last_heartbeat(client, description)


async def last_heartbeat(client: Client, description: Any) -> ReplayCheckpoint | None:
    """The checkpoint of the replay activity's last heartbeat the server holds, if any."""
    for pending in description.raw_description.pending_activities:
        if pending.heartbeat_details.payloads:
            values = await client.data_converter.decode(pending.heartbeat_details.payloads)
            if values:
                checkpoint: ReplayCheckpoint = value_to_type(ReplayCheckpoint, values[0])
                return checkpoint
    return None


def _root_message(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc)


async def run_replay_worker(settings: Settings, metrics: Metrics | None = None) -> None:
    """Poll the replay task queue until SIGTERM/SIGINT (``/metrics`` on ``KTB_METRICS_PORT``)."""
    # Here, not at the top: wiring imports the API, whose replay router imports this module
    # (and the API, which starts and reads replays, never loads the worker machinery).
    from temporalio.worker import Worker

    from bridge.temporal.sandbox import BRIDGE_RUNNER
    from bridge.wiring import stop_on_signals

    with open_telemetry(settings, "replay-worker", metrics) as telemetry:

        def build(client: Client) -> Worker:
            activities = ReplayActivities(settings, client, telemetry.metrics)
            return Worker(
                client,
                task_queue=settings.replay_task_queue,
                workflows=[ReplayWorkflow],
                activities=[activities.replay_range],
                workflow_runner=BRIDGE_RUNNER,
                interceptors=telemetry.worker_interceptors(),
            )

        stop = asyncio.Event()
        stop_on_signals(stop.set)
        async with running_worker(
            settings,
            settings.replay_task_queue,
            build,
            telemetry.runtime,
            telemetry.client_interceptors,
        ):
            log.info("replay worker polling task queue %s", settings.replay_task_queue)
            await stop.wait()
