"""The public surface of ``bridge``: pinned, resolvable, light to import, used by the examples."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bridge
import bridge.sdk
from bridge.settings import REPO_ROOT

SERVICES = REPO_ROOT / "services"

PUBLIC = [
    # the pipeline, in data-flow order
    "RecordLike",
    "Event",
    "KafkaRecord",
    "SchemaCatalog",
    "decode_record",
    "decode_consumed",
    "encode_event",
    "Decoder",
    "open_decoder",
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
    "server_config",
    "whole_stdio",
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


def _loaded_after(imports: str, modules: list[str]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has loaded after ``imports``."""
    probe = f"import sys; {imports}; print(','.join(m for m in {modules!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return [m for m in done.stdout.strip().split(",") if m]


def test_importing_bridge_leaves_the_composition_roots_unloaded() -> None:
    # Workflow code imports bridge (passed through the sandbox): it must not pull in
    # the consumer, the HTTP API or replay, nor depend on their import order.
    roots = ["bridge.wiring", "bridge.api", "bridge.replay", "fastapi"]
    assert _loaded_after("import bridge", [*roots, "bridge.kafka", "temporalio"]) == []
    # A public name loads its own module (and what that needs), not the whole surface.
    assert _loaded_after("from bridge import BridgeWorkflow", [*roots, "bridge.ingress"]) == []


def test_the_api_process_never_loads_the_worker_machinery() -> None:
    # `ktb api` starts and reads replays and lookups but runs no worker: its start-up
    # does not pay for the SDK's worker and sandbox.
    imports = "import bridge.cli.main, bridge.api.server, bridge.wiring"
    assert _loaded_after(imports, ["bridge.api.app", "temporalio.worker"]) == ["bridge.api.app"]


def test_a_bridge_process_never_loads_the_api_or_the_database_driver() -> None:
    # Every process wires through bridge.wiring; the API (FastAPI, every router and its
    # pydantic models) and the provenance store (asyncpg) load in the functions that wire
    # them, about 27 MiB a bridge never uses.
    api = ["bridge.api", "bridge.api.app", "fastapi", "bridge.store", "asyncpg"]
    assert _loaded_after("import bridge.cli.main, bridge.wiring", api) == []
    wired = "import bridge.wiring as w; w.session_signer(w.Settings())"
    assert _loaded_after(wired, api) == api


def _imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in ``path``; ``names`` empty for ``import x``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module or "", [alias.name for alias in node.names]


def test_services_import_only_the_public_surface() -> None:
    sources = sorted(SERVICES.rglob("*.py"))
    assert sources, f"no sources under {SERVICES}"
    wrong = []
    for path in sources:
        where = path.relative_to(REPO_ROOT)
        for line, module, names in _imports(path):
            if module.startswith("bridge."):
                wrong.append(f"{where}:{line}: {module}")
            elif module == "bridge":
                wrong += [f"{where}:{line}: bridge.{n}" for n in names if n not in bridge.__all__]
    assert wrong == [], "services/ must import bridge's public surface only:\n" + "\n".join(wrong)
