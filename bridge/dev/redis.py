"""Redis for the example storefront's shared cache in tests and benchmarks: Debian's
``redis-server`` on a port of its own, in memory only (it is never part of ``ktb dev``,
whose storefront keeps its cache in memory)."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from bridge.dev.processes import Service, free_port, port_open, tail
from bridge.errors import StackError


def redis_executable() -> str | None:
    """``redis-server`` on ``PATH``, or ``None`` when it is not installed."""
    return shutil.which("redis-server")


@contextlib.contextmanager
def redis_server(directory: Path, timeout: float = 30.0) -> Iterator[str]:
    """``redis-server`` on a free port with no persistence, until exit; yields its
    ``redis://`` URL. ``StackError`` when it is not installed or does not start."""
    executable = redis_executable()
    if executable is None:
        raise StackError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    service = Service(
        "redis",
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        directory / "redis.log",
    )  # fmt: skip
    service.start()
    try:
        deadline = time.monotonic() + timeout
        while not port_open(port):
            if not service.alive() or time.monotonic() > deadline:
                raise StackError(f"redis-server did not start:\n{tail(service.log)}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        service.stop()
