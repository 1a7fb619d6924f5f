"""``ktb dev``: Kafka, Temporal, PostgreSQL, the Schema Registry and the Procfile's
processes as one foreground tree."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.dev.postgres import POSTGRES_PORT, database_url
from bridge.dev.processes import stop_group
from bridge.dev.registry import REGISTRY_PORT, registry_url
from bridge.dev.stack import LocalStack
from bridge.errors import ConfigError
from bridge.kafka import ensure_topics
from bridge.routes import RoutesConfig
from bridge.settings import Settings

STOP_TIMEOUT = 20.0


def read_procfile(path: Path) -> list[tuple[str, list[str]]]:
    """``name: command`` lines (Procfile format); ``#`` starts a comment.

    A command may start with ``NAME=value`` words, as in a shell: they are set in
    that process's environment only (``KTB_METRICS_PORT=9101 ktb bridge``).
    """
    procs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, command = line.partition(":")
        args = shlex.split(command) if sep else []
        if not name.strip() or not split_env(args)[1]:
            raise ConfigError(f"{path}:{n}: expected `name: command`")
        procs.append((name.strip(), args))
    return procs


def split_env(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading ``NAME=value`` words of a command, and the command after them."""
    env: dict[str, str] = {}
    for i, word in enumerate(args):
        name, sep, value = word.partition("=")
        if not sep or not name.isidentifier():
            return env, args[i:]
        env[name] = value
    return env, []


@dataclass
class Child:
    """A Procfile process with its output prefixed by its name."""

    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    """Set for this process only, over the stack's environment."""
    proc: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None

    def url(self, api_port: int) -> str | None:
        """Where it serves HTTP, when the Procfile sets its ``KTB_DEV_PORT_OFFSET`` (the
        example services' ports are the API port plus an offset)."""
        offset = self.env.get("KTB_DEV_PORT_OFFSET", "")
        return f"http://localhost:{api_port + int(offset)}" if offset.isdigit() else None

    @property
    def metrics_port(self) -> int | None:
        """The port its ``/metrics`` is served on, when the Procfile sets one."""
        port = self.env.get("KTB_METRICS_PORT", "0")
        return int(port) if port.isdigit() and int(port) > 0 else None

    async def start(self, env: dict[str, str], width: int) -> None:
        """Start the process in its own session and relay its output."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            env={**env, **self.env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self.pump = asyncio.create_task(self._relay(width))

    async def _relay(self, width: int) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            sys.stdout.write(f"{self.name:>{width}} | {line.decode(errors='replace')}")
            sys.stdout.flush()

    async def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after a deadline."""
        if self.proc is None or self.proc.returncode is not None:
            return
        await stop_group(self.proc, STOP_TIMEOUT)
        if self.pump is not None:
            await asyncio.gather(self.pump, return_exceptions=True)


@dataclass
class DevStack:
    """The whole local stack for development."""

    data_dir: Path
    kafka_port: int = 9092
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    api_port: int = 8080
    postgres_port: int = POSTGRES_PORT
    registry_port: int | None = REGISTRY_PORT
    """The Schema Registry's port; ``None``: no registry."""
    procfile: Path | None = Path("Procfile")
    children: list[Child] = field(default_factory=list)

    def _env(self) -> dict[str, str]:
        bindir = str(Path(sys.executable).parent)
        env = dict(os.environ)
        env.update(
            PATH=bindir + os.pathsep + env.get("PATH", ""),
            KTB_KAFKA_BOOTSTRAP=f"localhost:{self.kafka_port}",
            KTB_TEMPORAL_ADDRESS=f"localhost:{self.temporal_port}",
            KTB_DATA_DIR=str(self.data_dir),
            KTB_DATABASE_URL=database_url(self.postgres_port),
            KTB_API_PORT=str(self.api_port),
            KTB_API_AUTH="off",
            KTB_CONSOLE_TEMPORAL_UI_URL=f"http://localhost:{self.temporal_ui_port}",
            KTB_LOG_FORMAT="console",
            # Only the processes whose Procfile line sets a port serve /metrics.
            KTB_METRICS_PORT="0",
            PYTHONUNBUFFERED="1",
        )
        if self.registry_port is not None:
            env["KTB_SCHEMA_REGISTRY_URL"] = registry_url(self.registry_port)
        return env

    async def run(self) -> int:
        """Start everything, wait for a signal or a child to die, stop everything."""
        procs = read_procfile(self.procfile) if self.procfile else []
        routes_file = Settings().routes_file
        config = RoutesConfig.load(routes_file) if routes_file.exists() else None
        stack = LocalStack(
            self.data_dir,
            kafka_port=self.kafka_port,
            temporal_port=self.temporal_port,
            temporal_ui_port=self.temporal_ui_port,
            registry_port=self.registry_port,
            postgres_port=self.postgres_port,
            search_attributes=config.search_attributes() if config else {},
        )
        what = (
            "Kafka, Temporal, PostgreSQL and the Schema Registry"
            if self.registry_port
            else "Kafka, Temporal and PostgreSQL"
        )
        print(f"ktb dev: starting {what} (state in {self.data_dir})", flush=True)
        await stack.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        code = 0
        try:
            if config is not None:
                await ensure_topics(
                    Settings(kafka_bootstrap=stack.kafka_bootstrap), config.topic_partitions()
                )
            env = self._env()
            width = max([len(n) for n, _ in procs] + [8])
            for name, command in procs:
                child_env, args = split_env(command)
                child = Child(name, args, child_env)
                await child.start(env, width)
                self.children.append(child)
            self._print_endpoints(stack)
            waits: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
            waits += [asyncio.create_task(c.proc.wait()) for c in self.children if c.proc]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for child in self.children:
                if child.proc and child.proc.returncode not in (None, 0):
                    print(f"ktb dev: {child.name} exited with {child.proc.returncode}", flush=True)
                    code = 1
            for task in waits:
                task.cancel()
        finally:
            print("ktb dev: stopping", flush=True)
            for child in reversed(self.children):
                await child.stop()
            stack.stop()
        return code

    def _print_endpoints(self, stack: LocalStack) -> None:
        reused = set(stack.reused)

        def note(name: str) -> str:
            return " (already running, reused)" if name in reused else ""

        lines = [
            f"  kafka          localhost:{self.kafka_port}{note('kafka')}",
            f"  temporal       localhost:{self.temporal_port}{note('temporal')}",
            f"  temporal ui    http://localhost:{self.temporal_ui_port}",
            f"  postgres       {database_url(self.postgres_port)}{note('postgres')}",
        ]
        if self.registry_port is not None:
            url = registry_url(self.registry_port)
            lines.append(f"  registry       {url}{note('registry')}")
        names = {c.name for c in self.children}
        if "api" in names:
            lines.append(f"  http api       http://localhost:{self.api_port}  (auth off)")
            lines.append(f"  console        http://localhost:{self.api_port}/console")
            lines.append(f"  api docs       http://localhost:{self.api_port}/docs")
        served = [(c.name, c.url(self.api_port)) for c in self.children]
        lines += [f"  {name:<14} {where}" for name, where in served if where]
        lines += [f"  process        {c.name}" for c in self.children]
        metrics = [(c.name, c.metrics_port) for c in self.children if c.metrics_port]
        if "api" in names:
            metrics.append(("api", self.api_port))
        lines += [
            f"  metrics        {name:<22} http://localhost:{port}/metrics" for name, port in metrics
        ]
        print("ktb dev: up\n" + "\n".join(lines), flush=True)
