"""``python -m tests.chaos.worker worker``: hosts the sequence-recording workflow of chaos runs."""

from __future__ import annotations

import asyncio
import sys

from bridge.observability import logs
from bridge.settings import Settings
from bridge.wiring import run_worker
from tests.chaos.harness import SEQ_QUEUE
from tests.workflows import Recorder


def main() -> None:
    """Run until SIGTERM."""
    if sys.argv[1:] != ["worker"]:
        sys.exit("usage: python -m tests.chaos.worker worker")
    settings = Settings()
    logs.setup(settings.log_level)
    asyncio.run(run_worker(settings, SEQ_QUEUE, [Recorder]))


if __name__ == "__main__":
    main()
