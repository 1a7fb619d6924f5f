"""``python -m services.shipping worker``: the ``shipping.*`` activities."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge import Settings
from services.common import run_service_worker
from services.config import ServicesConfig
from services.shipping.activities import SCHEMA, Shipping
from services.store import Store


def activities(config: ServicesConfig, store: Store) -> list[Callable[..., Any]]:
    """The ``shipping.*`` activities over the shipping database."""
    return [Shipping(store).create_shipment]


async def main(settings: Settings) -> None:
    """Run until SIGTERM."""
    await run_service_worker(settings, "shipping", SCHEMA, activities)
