"""The Temporal client of every ktb process: address, namespace, TLS/mTLS, API key.

The namespace is only ever read from settings; nothing in an event can choose it.
A process may start while Temporal is down (a restart, a deploy in the wrong
order): connecting, and starting its workers (``running_worker``), keep trying with
backoff until the start-up deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio.client import Client
from temporalio.client import Interceptor as ClientInterceptor
from temporalio.runtime import Runtime
from temporalio.service import GrpcCompression, RetryConfig, TLSConfig

from bridge.backoff import Backoff
from bridge.errors import ConfigError, TransientError
from bridge.observability.telemetry import shared_runtime
from bridge.settings import Settings

if TYPE_CHECKING:
    from temporalio.worker import Worker

T = TypeVar("T")
log = logging.getLogger("ktb")


# The bridge retries transient failures itself (pausing the partition), so each
# call gives up quickly instead of holding a slot through a long outage.
RPC_RETRY = RetryConfig(max_retries=4, max_interval_millis=1000, max_elapsed_time_millis=3000)
GRPC_COMPRESSION = {"none": GrpcCompression.NONE, "gzip": GrpcCompression.GZIP}
"""``KTB_TEMPORAL_GRPC_COMPRESSION``. The SDK gzips every request and answer unless told
otherwise; a start request of a few hundred bytes saves nothing by it on a local or
in-cluster link and costs both ends CPU: about 80 us of a caller's 670 per start here
(README, Performance)."""
ANSWERING_GRACE_S = 10.0
"""How long a Temporal port may accept connections while start-up still fails before the
failure counts as configuration rather than a server starting up."""
WORKER_START_POLL_S = 0.05
"""How often a starting worker is looked at: the SDK has no event for its start-up check."""


async def connect_temporal(
    settings: Settings,
    runtime: Runtime | None = None,
    interceptors: Sequence[ClientInterceptor] = (),
) -> Client:
    """A Temporal client for the configured address, namespace, TLS/mTLS and API key.

    The namespace comes from settings only; every action of this process runs in it.
    ``runtime`` and ``interceptors`` come from the process's ``Telemetry`` (SDK
    metrics, tracing); by default core logs only errors and nothing is traced.
    """
    return await until_temporal_answers(
        settings, "connect to", lambda: _connect(settings, runtime, interceptors)
    )


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings,
    task_queue: str,
    build: Callable[[Client], Worker],
    runtime: Runtime | None = None,
    interceptors: Sequence[ClientInterceptor] = (),
) -> AsyncIterator[Worker]:
    """``build(client)``'s worker of ``task_queue``, running once the SDK's start-up check
    (its namespace described) has passed; shut down on exit as by ``async with worker``.

    Temporal may go away between connecting and that check: the start is retried as
    connecting is, until the same deadline. Each try connects a client of its own,
    since core keeps a worker whose start failed registered on its client, and refuses
    a second worker of the same task queue there.
    """

    async def start() -> Worker:
        worker = build(await _connect(settings, runtime, interceptors))
        await worker.__aenter__()
        try:
            await _until_running(worker)
        except asyncio.CancelledError as cancel:
            await _exit_unstarted(worker, cancel)
            raise
        return worker

    what = f"start the worker of task queue {task_queue} on"
    async with contextlib.AsyncExitStack() as running:
        yield running.push_async_exit(await until_temporal_answers(settings, what, start))


async def _until_running(worker: Worker) -> None:
    """Return once ``worker`` has passed its start-up check. When the check fails, the
    SDK cancels this task (``async with worker`` does so for any failure of the run)."""
    while not worker.is_running:  # noqa: ASYNC110 (the SDK sets no event to wait on)
        await asyncio.sleep(WORKER_START_POLL_S)


async def _exit_unstarted(worker: Worker, cancel: asyncio.CancelledError) -> None:
    """Exit ``worker`` whose start was cancelled: by the SDK when its run failed, whose
    failure the exit raises in place of the cancel (and the SDK's cancel is taken back,
    so this task is not left counted as cancelling); otherwise, from outside, return
    and let the cancel go on."""
    try:
        await worker.__aexit__(type(cancel), cancel, cancel.__traceback__)
    except RuntimeError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()
        raise


async def until_temporal_answers(
    settings: Settings, what: str, attempt: Callable[[], Awaitable[T]]
) -> T:
    """``await attempt()``, tried again with backoff while Temporal is unreachable, until
    the start-up deadline (``KTB_CONNECT_TIMEOUT_S``); ``what`` names it in the log.

    A failure (core raises ``RuntimeError``) while nothing accepts connections at the
    address is waited out and, past the deadline, a ``TransientError``. One while the
    port answers is given ``ANSWERING_GRACE_S`` (a server starting up) and is then a
    ``ConfigError``: TLS, credentials or a namespace that does not exist, which waiting
    does not fix.
    """
    address = settings.temporal_address
    backoff = Backoff(
        settings.retry_initial_s, settings.retry_max_s, deadline_s=settings.connect_timeout_s
    )
    answering = Answering()
    while True:
        try:
            return await attempt()
        except RuntimeError as exc:
            accepts_tcp = await _accepts_tcp(address)
            if answering.refusing(accepts_tcp, time.monotonic()):
                raise ConfigError(f"cannot {what} Temporal at {address}: {exc}") from exc
            if backoff.exhausted:
                raise TransientError(f"Temporal at {address} is unreachable: {exc}") from exc
            delay = backoff.next()
            log.warning(
                "Temporal at %s %s, retrying to %s it in %.1fs",
                address,
                "refused" if accepts_tcp else "unreachable",
                what,
                delay,
            )
            await asyncio.sleep(delay)


@dataclass
class Answering:
    """Since when Temporal's port has accepted connections while start-up kept failing."""

    since: float | None = None

    def refusing(self, accepts_tcp: bool, now: float) -> bool:
        """Note a failed try at ``now``: whether the port has accepted connections longer
        than ``ANSWERING_GRACE_S`` meanwhile. A port that stops answering starts it over."""
        if not accepts_tcp:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since > ANSWERING_GRACE_S


async def _connect(
    settings: Settings, runtime: Runtime | None, interceptors: Sequence[ClientInterceptor]
) -> Client:
    """One try at connecting the client ``connect_temporal`` describes."""
    return await Client.connect(
        settings.temporal_address,
        **temporal_connect_options(settings),
        retry_config=RPC_RETRY,
        runtime=runtime or shared_runtime(settings.temporal_runtime_threads),
        interceptors=list(interceptors),
    )


async def _accepts_tcp(address: str, timeout: float = 2.0) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc}") from exc


def temporal_tls(settings: Settings) -> TLSConfig | bool | None:
    """TLS for the Temporal client: ``TLSConfig``, ``False`` (plaintext) or ``None`` (SDK default).

    TLS is on when asked for, when a CA, client certificate or server name is set,
    and by the SDK's own default when an API key is set.
    """
    cert, key = settings.temporal_tls_cert, settings.temporal_tls_key
    if (cert is None) != (key is None):
        raise ConfigError("KTB_TEMPORAL_TLS_CERT and KTB_TEMPORAL_TLS_KEY must be set together")
    files_or_name = (settings.temporal_tls_ca, cert, settings.temporal_tls_server_name)
    if settings.temporal_tls is False:
        if any(files_or_name):
            raise ConfigError("Temporal TLS files are set but KTB_TEMPORAL_TLS is false")
        return False
    if not any(files_or_name):
        return True if settings.temporal_tls else None
    return TLSConfig(
        server_root_ca_cert=(
            _read_bytes(settings.temporal_tls_ca, "Temporal server CA")
            if settings.temporal_tls_ca
            else None
        ),
        client_cert=_read_bytes(cert, "Temporal client certificate") if cert else None,
        client_private_key=_read_bytes(key, "Temporal client key") if key else None,
        domain=settings.temporal_tls_server_name,
    )


def temporal_connect_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``Client.connect`` besides the address: namespace, TLS, API
    key, and the gRPC compression (``GRPC_COMPRESSION``)."""
    api_key = settings.temporal_api_key
    options: dict[str, Any] = {
        "namespace": settings.temporal_namespace,
        "api_key": api_key.get_secret_value() if api_key else None,
        "grpc_compression": GRPC_COMPRESSION[settings.temporal_grpc_compression],
    }
    tls = temporal_tls(settings)
    if tls is not None:
        options["tls"] = tls
    return options
