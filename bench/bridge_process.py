"""Benchmark child processes (``spawn``, ``Child``), and the bridge as one of them.

``BridgeProcess`` runs ``ktb bridge`` with settings from ``KTB_*`` variables. Its
Prometheus endpoint (``KTB_METRICS_PORT``) is on, as in a deployment, so the benchmark
can read what is buffered and how long actions took; ``psutil`` reads its resident memory
and CPU time.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.common import cpu_seconds, stack_env
from bridge.dev.processes import stop_group, tail
from bridge.dev.stack import free_port
from bridge.settings import REPO_ROOT, Settings

MIB = 1024 * 1024
Scrape = dict[str, list[tuple[dict[str, str], float]]]
"""A scrape of a metrics endpoint: every sample by sample name, ``[(labels, value), ...]``."""


def log_tail(log: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a child process's log, introduced by its path."""
    return f"last lines of {log}:\n{tail(log, lines)}"


async def spawn(
    args: Sequence[str], env: Mapping[str, str], log: Path
) -> asyncio.subprocess.Process:
    """``python -m <args>`` from the checkout with ``env``, its output appended to ``log``,
    in a session of its own (``bridge.dev.processes.stop_group`` stops its whole group)."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", *args,
            env=dict(env), cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip


class ChildError(RuntimeError):
    """A ``Child`` exited or did not come up; the message ends with its log."""


class Child:
    """A ``spawn``ed child process of a benchmark (``proc`` once started), with its log."""

    name = "child process"
    """What messages call it."""
    error: type[RuntimeError] = ChildError
    """What ``pid`` and ``check`` raise."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self.proc is None:
            raise self.error(f"the {self.name} is not started")
        return self.proc.pid

    def check(self) -> None:
        """Raise ``error`` if the process has exited, with its exit code and log."""
        if self.proc is None:
            raise self.error(f"the {self.name} is not started")
        if self.proc.returncode is not None:
            raise self.error(self._failure(f"exited ({self.proc.returncode})"))

    def _failure(self, what: str) -> str:
        return f"the {self.name} {what}; {log_tail(self.log)}"


class BridgeProcessError(ChildError):
    """The bridge process exited or did not come up; the message ends with its log."""


class BridgeProcess(Child):
    """One ``run_bridge`` child process of a benchmark, with its log file."""

    name = "bridge process"
    error = BridgeProcessError

    def __init__(
        self,
        settings: Settings,
        routes_file: Path,
        log: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(log)
        self.settings = settings
        self.routes_file = routes_file
        self.extra_env = env or {}
        self.port = free_port()
        self._http = httpx.AsyncClient(timeout=5.0)

    async def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait until its metrics endpoint answers."""
        env = stack_env(
            self.settings,
            KTB_GROUP_ID=self.settings.group_id,
            KTB_ROUTES_FILE=str(self.routes_file),
            KTB_SHUTDOWN_TIMEOUT_S="5",
            KTB_METRICS_PORT=str(self.port),
            KTB_METRICS_HOST="127.0.0.1",
            **self.extra_env,
        )
        self.proc = await spawn(["bridge", "bridge"], env, self.log)
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            try:
                await self.metrics()
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise BridgeProcessError(self._failure("did not come up")) from None
            await asyncio.sleep(0.2)

    def rss_mib(self) -> float:
        """Resident memory of the bridge process, in MiB."""
        return float(psutil.Process(self.pid).memory_info().rss) / MIB

    def cpu_seconds(self) -> float:
        """User plus system CPU time the bridge process has used."""
        return cpu_seconds(self.pid)

    async def metrics(self) -> Scrape:
        """Every sample the bridge exports, by sample name: ``[(labels, value), ...]``."""
        response = await self._http.get(f"http://127.0.0.1:{self.port}/metrics")
        response.raise_for_status()
        out: Scrape = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return out

    async def gauge(self, name: str) -> float:
        """The value of an unlabelled gauge."""
        samples = (await self.metrics()).get(name, [])
        return samples[0][1] if samples else 0.0

    async def total(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
        return sample_total(await self.metrics(), name, **labels)

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (finish, commit), SIGKILL after ``timeout`` seconds."""
        await self._http.aclose()
        if self.proc is not None:
            await stop_group(self.proc, timeout)


def sample_total(scrape: Scrape, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples in ``scrape`` whose labels include ``labels`` (0 when
    none)."""
    return sum(v for found, v in scrape.get(name, []) if labels.items() <= found.items())


def histogram_quantile(buckets: list[tuple[dict[str, str], float]], q: float) -> float:
    """Estimate a quantile (0-1) from Prometheus ``_bucket`` samples, as PromQL does."""
    points = sorted((float(labels["le"]), value) for labels, value in buckets if "le" in labels)
    if not points or points[-1][1] <= 0:
        return float("nan")
    total = points[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in points:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound
