"""The orders worker: hosts ``OrderFulfillment`` on the ``orders`` task queue."""

from __future__ import annotations

from bridge.runtime import run_worker
from bridge.settings import Settings
from services.orders import TASK_QUEUE
from services.orders.workflows import OrderFulfillment


async def main(settings: Settings) -> None:
    """Run until SIGTERM."""
    await run_worker(settings, TASK_QUEUE, [OrderFulfillment])
