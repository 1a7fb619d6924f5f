"""``python -m services.<name> server`` as its own process: HTTP over the service's SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from bridge.dev.stack import free_port
from bridge.settings import REPO_ROOT
from tests.support import eventually


def start_server(
    service: str, port: int, data_dir: Path, log: Path, **extra_env: str
) -> subprocess.Popen[bytes]:
    """The service's HTTP server as a separate process on ``port``."""
    env = dict(os.environ)
    env.update(
        KTB_DATA_DIR=str(data_dir),
        **{f"KTB_SERVICES_{service.upper()}_PORT": str(port)},
        KTB_LOG_FORMAT="console",
        **extra_env,
    )
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{service}", "server"],
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM the process group; its exit code."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    return proc.wait(timeout=30)


async def test_inventory_server_process_serves_and_stops_on_sigterm(tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    proc = start_server("inventory", port, tmp_path, log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def healthy() -> bool:
                assert proc.poll() is None, log.read_text()
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(healthy, timeout=60)
            put = await http.put("/stock/sku-9", json={"available": 7})
            assert put.json() == {"sku": "sku-9", "available": 7}
            assert (await http.get("/stock/sku-9")).json() == {"sku": "sku-9", "available": 7}
            assert (await http.put("/stock/sku-9", json={"available": -1})).status_code == 422
            assert (await http.get("/reservations/nobody")).status_code == 404
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()
    assert (tmp_path / "services" / "inventory.db").exists()


async def test_storefront_process_gets_ready_answers_partially_and_stops_on_sigterm(
    settings, topics, tmp_path
):
    # Ready once its invalidation consumer is live; with the API down its dashboards
    # are partial answers, not errors.
    port = free_port()
    env = {
        "KTB_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "KTB_TEMPORAL_ADDRESS": settings.temporal_address,
        "KTB_SERVICES_OUTCOME_TOPIC": topics["outcomes"],
        "KTB_API_PORT": str(free_port()),
        "KTB_API_AUTH": "off",
    }
    log = tmp_path / "storefront.log"
    proc = start_server("storefront", port, tmp_path, log, **env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def ready() -> bool:
                assert proc.poll() is None, log.read_text()
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, timeout=60)
            # The API is not running: a dashboard is a partial answer, not an error.
            answer = await http.get("/customers/c-1/dashboard")
            assert answer.status_code == 200
            assert answer.json()["partial"] is True and "processes" in answer.json()["errors"]
            assert answer.headers["cache-status"] == "storefront; fwd=miss"
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()
