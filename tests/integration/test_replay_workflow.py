"""Replay workflows: ``ktb replay --background`` on a replay worker killed mid-way."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from temporalio.client import Client

from bridge.replay import last_heartbeat, replay_status
from bridge.settings import REPO_ROOT, Settings
from tests.integration.test_replay import produce_orders, route_count, start_route
from tests.support import eventually, routes_config, write_routes


def worker_env(settings: Settings, routes_file: Path, task_queue: str) -> dict[str, str]:
    """Environment of the replay CLI and worker processes of one test."""
    env = dict(os.environ)
    env.update(
        KTB_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        KTB_TEMPORAL_ADDRESS=settings.temporal_address,
        KTB_ROUTES_FILE=str(routes_file),
        KTB_SCHEMAS_DIR=str(REPO_ROOT / "schemas"),
        KTB_REPLAY_TASK_QUEUE=task_queue,
        KTB_REPLAY_HEARTBEAT_TIMEOUT_S="1",
        KTB_REPLAY_PROGRESS_INTERVAL_S="0.2",
        KTB_REPLAY_CONCURRENCY="4",
        KTB_LOG_FORMAT="console",
    )
    return env


def replay_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``ktb replay-worker`` as its own process group (so it can be SIGKILLed)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "replay-worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the process group and reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=30)


async def test_replay_workflow_resumes_from_its_heartbeat_after_the_worker_is_killed(
    services, topics, settings, client: Client, uid, tmp_path
) -> None:
    n = 200
    route = f"wf-{uid}"
    prefix = f"rw-{uid}-"
    config = routes_config([start_route(route, topics["orders"], f"none-{uid}", prefix)])
    routes_file = write_routes(tmp_path / "routes.yaml", config)
    env = worker_env(settings, routes_file, f"ktb-replay-{uid}")
    await produce_orders(services, topics["orders"], [f"o{i}" for i in range(n)])

    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "replay", "--topic", topics["orders"], "--from", "0",
        "--mode", "fresh", "--rate", "80", "--background",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(cli.communicate(), 60)
    assert cli.returncode == 0, err.decode()
    replay_id = out.decode().strip()
    log = tmp_path / "worker.log"
    first = replay_worker(env, log)
    try:
        handle = client.get_workflow_handle(replay_id)

        async def heartbeat_with_progress() -> int:
            checkpoint = await last_heartbeat(client, await handle.describe())
            assert checkpoint is not None and 0 < checkpoint.done < n, checkpoint
            return checkpoint.done

        at_kill = await eventually(heartbeat_with_progress, timeout=60, interval=0.1)
        stop(first, signal.SIGKILL)
        status = await replay_status(client, replay_id)
        assert status is not None and status.state == "running"
        second = replay_worker(env, log)
        try:

            async def completed() -> bool:
                current = await replay_status(client, replay_id)
                assert current is not None and current.state != "failed", current
                return current.state == "completed"

            await eventually(completed, timeout=120, interval=0.5)
        finally:
            stop(second)
    finally:
        stop(first, signal.SIGKILL)

    status = await replay_status(client, replay_id)
    assert status is not None and status.report is not None
    report = status.report
    assert status.done == status.total == n
    # Every record counted exactly once, although some were acted on twice: the ones
    # the first worker did after its last heartbeat are duplicates the second time.
    assert report.read == n
    assert report.started + report.duplicates == n
    assert report.started >= at_kill
    assert status.generation and status.mode == "fresh"
    assert re.search(r"replay \S+ resumes at attempt \d+ from \[", log.read_text())

    async def one_workflow_per_record() -> bool:
        return await route_count(client, route) == n

    await eventually(one_workflow_per_record, timeout=60, interval=0.5)
