"""A real Redis for tests (``bridge.dev.redis``), skipped loudly where it is not installed."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.dev.redis import redis_executable, redis_server

NOT_INSTALLED = (
    "redis-server is not installed (apt-get install redis-server; .ci/run does it as root): "
    "the storefront's Redis cache is NOT tested"
)


@contextlib.contextmanager
def real_redis(directory: Path) -> Iterator[str]:
    """A ``redis://`` URL of a server for the test; where ``redis-server`` is missing the
    test is skipped, with a warning as well as the skip reason so that the summary
    shows what went untested."""
    if redis_executable() is None:
        warnings.warn(NOT_INSTALLED, stacklevel=2)
        pytest.skip(NOT_INSTALLED)
    directory.mkdir(parents=True, exist_ok=True)
    with redis_server(directory) as url:
        yield url
