"""``python -m tests.chaos.worker worker``: hosts the sequence-recording and
window workflows of chaos runs (the window collector comes with ``run_worker``)."""

from __future__ import annotations

import asyncio
import sys

from bridge import Settings, run_worker, setup_logging
from tests.chaos.harness import SEQ_QUEUE
from tests.workflows import Recorder, WindowRun


def main() -> None:
    """Run until SIGTERM."""
    if sys.argv[1:] != ["worker"]:
        sys.exit("usage: python -m tests.chaos.worker worker")
    settings = Settings()
    setup_logging(settings.log_level)
    asyncio.run(run_worker(settings, SEQ_QUEUE, [Recorder, WindowRun]))


if __name__ == "__main__":
    main()
