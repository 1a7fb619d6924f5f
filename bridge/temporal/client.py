"""The Temporal client of every ktb process: address, namespace, TLS/mTLS, API key.

The namespace is only ever read from settings; nothing in an event can choose it.
A process may start while Temporal is down (a restart, a deploy in the wrong
order): connecting keeps trying with backoff until the start-up deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.client import Interceptor as ClientInterceptor
from temporalio.runtime import Runtime
from temporalio.service import RetryConfig, TLSConfig

from bridge.backoff import Backoff
from bridge.errors import ConfigError, TransientError
from bridge.observability.telemetry import shared_runtime
from bridge.settings import Settings

log = logging.getLogger("ktb")


# The bridge retries transient failures itself (pausing the partition), so each
# call gives up quickly instead of holding a slot through a long outage.
# How long a Temporal port may accept connections while the client still fails
# before the failure counts as configuration rather than a server starting up.
ANSWERING_GRACE_S = 10.0
RPC_RETRY = RetryConfig(max_retries=4, max_interval_millis=1000, max_elapsed_time_millis=3000)


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
    # A process may start while Temporal is down (a restart, a deploy in the wrong
    # order): keep trying with backoff until the start-up deadline.
    backoff = Backoff(
        settings.retry_initial_s, settings.retry_max_s, deadline_s=settings.connect_timeout_s
    )
    answering_since: float | None = None
    while True:
        try:
            return await Client.connect(
                settings.temporal_address,
                **temporal_connect_options(settings),
                retry_config=RPC_RETRY,
                runtime=runtime or shared_runtime(),
                interceptors=list(interceptors),
            )
        except RuntimeError as exc:
            if await _accepts_tcp(settings.temporal_address):
                # Something answers yet the client cannot connect: past a server's
                # start-up, that is a TLS, credential or namespace problem, which
                # waiting does not fix.
                answering_since = answering_since or time.monotonic()
                if time.monotonic() - answering_since > ANSWERING_GRACE_S:
                    raise ConfigError(
                        f"cannot connect to Temporal at {settings.temporal_address}: {exc}"
                    ) from exc
            else:
                answering_since = None
            if backoff.exhausted:
                raise TransientError(
                    f"Temporal at {settings.temporal_address} is unreachable: {exc}"
                ) from exc
            delay = backoff.next()
            log.warning(
                "Temporal at %s unreachable, retrying in %.1fs", settings.temporal_address, delay
            )
            await asyncio.sleep(delay)


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
    """Keyword arguments of ``Client.connect`` besides the address: namespace, TLS, API key."""
    api_key = settings.temporal_api_key
    options: dict[str, Any] = {
        "namespace": settings.temporal_namespace,
        "api_key": api_key.get_secret_value() if api_key else None,
    }
    tls = temporal_tls(settings)
    if tls is not None:
        options["tls"] = tls
    return options
