"""The public surface of ``bridge``: pinned, resolvable and light to import."""

from __future__ import annotations

import inspect
import subprocess
import sys

import bridge
import bridge.sdk

PUBLIC = [
    # the pipeline, in data-flow order
    "RecordLike",
    "Event",
    "KafkaRecord",
    "SchemaCatalog",
    "decode_record",
    "encode_event",
    "Action",
    "ActionKind",
    "Router",
    "RoutesConfig",
    "Dispatcher",
    "Outcome",
    "Result",
    "Ingress",
    "Settings",
    # errors
    "BridgeError",
    "ConfigError",
    "PermanentError",
    "TransientError",
    # the workflow SDK: workflows driven by the bridge
    "BridgeWorkflow",
    "EventDedupe",
    "publish",
    "trigger",
    # the workflow SDK: sagas
    "Compensation",
    "Saga",
    "SagaEvents",
    "SagaOutcome",
    # the workflow SDK: the fault taxonomy of activities
    "AuthorizationError",
    "CircuitBreaker",
    "CircuitOpenError",
    "DatabaseError",
    "ExternalServiceError",
    "Fault",
    "FaultInterceptor",
    "NetworkError",
    "Retry",
    "ValidationError",
    "retry_policy",
    # the workflow SDK: the publishing activity
    "PublishRequest",
    "Published",
    "Publisher",
    # running a process
    "open_worker",
    "run_worker",
    "stop_on_signals",
    "Metrics",
    "Telemetry",
    "open_telemetry",
    "setup_logging",
    "kafka",
]


def test_the_public_surface_is_pinned() -> None:
    assert bridge.__all__ == PUBLIC


def test_every_public_name_resolves_and_is_documented() -> None:
    for name in bridge.__all__:
        value = getattr(bridge, name)
        assert value is not None, name
        assert inspect.getdoc(value), f"bridge.{name} has no docstring"
    assert set(bridge.__all__) <= set(dir(bridge))


def test_the_workflow_sdk_is_reexported_whole() -> None:
    assert set(bridge.sdk.__all__) <= set(bridge.__all__)
    for name in bridge.sdk.__all__:
        assert getattr(bridge, name) is getattr(bridge.sdk, name), name


def test_importing_bridge_leaves_the_composition_roots_unloaded() -> None:
    # Workflow code imports bridge (passed through the sandbox): it must not pull in
    # the consumer, the HTTP API or replay, nor depend on their import order.
    probe = (
        "import sys, bridge; "
        "loaded = [m for m in ('bridge.wiring', 'bridge.api', 'bridge.replay', 'fastapi') "
        "if m in sys.modules]; "
        "print(','.join(loaded))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == ""
