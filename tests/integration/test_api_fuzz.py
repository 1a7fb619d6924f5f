"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis).

``ktb api`` runs as a separate process against the real Kafka and Temporal; every
operation gets generated valid and invalid requests. No response may be a 5xx,
and every response must match the documented status codes, content types and
schemas. The run is bounded by a fixed number of examples per operation.

Besides generated requests, every parameter that ends up in a Temporal
visibility query (or names a workflow or event) is sent explicitly with values
that query language cannot carry: control characters, quotes, backslashes,
over-long values. Schemathesis once found that a NUL in ``key`` reached the
visibility store's SQL and came back as a 503 with the store's error text;
such values must be refused (4xx) and no response may carry a server's own
error text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, example, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bridge.api.auth import hash_key
from bridge.dev.stack import free_port
from bridge.settings import REPO_ROOT, Settings
from bridge.temporal import visibility
from tests.support import eventually

KEY = "fuzz-key"
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10}
UNQUERYABLE = ["\x00", "\x01", "\x7f", "\x9f", "'", '"', "\\", "a\nb", "k" * 2000]
"""Values Temporal's visibility query language cannot carry safely."""
QUERIED = frozenset({"key", "type", "tenant", "event_id", "workflow_id"})
"""Parameters that reach a visibility query or name a workflow or event."""
SERVER_TEXT = ("SQL", "operation failed", "unrecognized token", "Temporal rejected", "Traceback")


def no_server_text(ctx: object, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """No answer carries a server's own error text (Temporal's, a visibility store's)."""
    for text in SERVER_TEXT:
        assert text not in response.text, f"{text!r} leaked: {response.text[:500]}"


def unqueryable_refused(
    ctx: object, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """A request carrying a value visibility cannot query is refused: a 4xx, not an outage."""
    values = {**(case.query or {}), **(case.path_parameters or {})}
    unsafe = [
        name
        for name, value in values.items()
        if name in QUERIED and isinstance(value, str) and not visibility.is_safe(value)
    ]
    if unsafe:
        assert 400 <= response.status_code < 500, (unsafe, response.status_code, response.text)


CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    no_server_text,
    unqueryable_refused,
]


@pytest.fixture
def api_process(
    settings: Settings, topics: dict[str, str], uid: str, tmp_path: Path
) -> Iterator[str]:
    """``ktb api`` as its own process with authentication on; yields its base URL."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        KTB_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        KTB_TEMPORAL_ADDRESS=settings.temporal_address,
        KTB_SCHEMAS_DIR=str(REPO_ROOT / "schemas"),
        KTB_ROUTES_FILE=str(tmp_path / "no-routes.yaml"),
        KTB_PROVENANCE_TOPIC=f"ktb.provenance-{uid}",
        KTB_DATABASE_URL=settings.database_url.get_secret_value(),
        KTB_API_AUTH="on",
        KTB_API_KEYS=json.dumps({hash_key(KEY): f"fuzz-{uid}"}),
        KTB_API_TOPICS=json.dumps({"com.example.order.placed": topics["orders"]}),
        KTB_API_WAIT_MAX_S="1",
        KTB_API_QUERY_TIMEOUT_S="0.5",
        KTB_API_MAX_BODY_BYTES="65536",
    )
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "api", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errors = [line for line in log.read_text().splitlines() if "unhandled error" in line]
        assert not errors, errors


async def test_fuzz_api_against_its_openapi(api_process: str) -> None:
    async def up() -> bool:
        async with httpx.AsyncClient() as http:
            try:
                return (await http.get(f"{api_process}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

    await eventually(up, 60)
    schema = schemathesis.openapi.from_url(f"{api_process}/openapi.json")
    auth = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient() as http:
        before = requests_by_status((await http.get(f"{api_process}/metrics")).text)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    # The fuzz run is synchronous: the API is another process, nothing here awaits meanwhile.
    for operation in operations:
        for mode, examples in EXAMPLES.items():
            if mode is GenerationMode.NEGATIVE and not has_inputs(operation):
                continue  # no request to an input-less operation is invalid
            fuzz(operation, mode, examples, api_process, auth)
    async with httpx.AsyncClient() as http:
        after = requests_by_status((await http.get(f"{api_process}/metrics")).text)
    answered = {status: n - before.get(status, 0.0) for status, n in after.items()}
    assert not any(status.startswith("5") and n for status, n in answered.items()), answered
    assert sum(answered.values()) > 200, answered


def has_inputs(operation: schemathesis.APIOperation) -> bool:
    """Whether the operation takes parameters or a body (so invalid requests exist)."""
    parts = (operation.path_parameters, operation.headers, operation.query, operation.body)
    return any(len(part) for part in parts)


def fuzz(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    examples: int,
    base_url: str,
    headers: dict[str, str],
) -> None:
    """Call one operation with generated requests and check every response."""
    checks = [*CONFORMANCE, negative_data_rejection]
    if mode is GenerationMode.POSITIVE:
        checks = CONFORMANCE

    @given(case=operation.as_strategy(generation_mode=mode, headers=headers))
    @hypothesis_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, timeout=15)
        case.validate_response(response, checks=checks)

    if mode is GenerationMode.POSITIVE:
        for case in unqueryable_cases(operation, headers):
            run = example(case=case)(run)
    run()


def unqueryable_cases(
    operation: schemathesis.APIOperation, headers: dict[str, str]
) -> list[schemathesis.Case]:
    """Explicit requests putting each ``UNQUERYABLE`` value in each ``QUERIED`` parameter."""
    path = {p.name for p in operation.path_parameters} & QUERIED
    query = {p.name for p in operation.query} & QUERIED
    cases = []
    for value in UNQUERYABLE:
        for name in sorted(path):
            cases.append(operation.Case(path_parameters={name: value}, headers=headers))
        for name in sorted(query):
            cases.append(operation.Case(query={name: value}, headers=headers))
            # The request schemathesis first found: a status filter and a NUL key.
            cases.append(operation.Case(query={"status": "running", name: value}, headers=headers))
    return cases


def requests_by_status(metrics_text: str) -> dict[str, float]:
    """``ktb_api_requests_total`` summed by status code."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("ktb_api_requests_total{"):
            labels, _, value = line.rpartition(" ")
            status = labels.split('status="', 1)[1].split('"', 1)[0]
            out[status] = out.get(status, 0.0) + float(value)
    return out
