"""``python -m services.payments worker``: the ``payments.*`` activities and ``SettlementBatch``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from bridge import CircuitBreaker, Settings
from services.common import run_service_worker
from services.config import ServicesConfig
from services.payments.activities import SCHEMA, CardGateway, Payments, Settlements
from services.payments.workflows import SettlementBatch
from services.store import Store


def build(config: ServicesConfig, store: Store) -> Payments:
    """The activities object with the gateway behind its circuit breaker."""
    breaker = CircuitBreaker(
        "card-gateway",
        failure_threshold=config.gateway_failure_threshold,
        reset_timeout=timedelta(seconds=config.gateway_reset_s),
    )
    return Payments(store, CardGateway(), breaker)


def activities(config: ServicesConfig, store: Store) -> list[Callable[..., Any]]:
    """The ``payments.*`` activities over the payments database."""
    payments = build(config, store)
    return [payments.charge, payments.confirm, payments.refund, Settlements(store).settle]


async def main(settings: Settings) -> None:
    """Run until SIGTERM."""
    await run_service_worker(settings, "payments", SCHEMA, activities, [SettlementBatch])
