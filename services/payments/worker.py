"""``python -m services.payments worker``: the ``payments.*`` activities."""

from __future__ import annotations

from datetime import timedelta

from bridge import CircuitBreaker, FaultInterceptor, Metrics, Settings, run_worker
from services.config import ServicesConfig
from services.payments.activities import SCHEMA, CardGateway, Payments
from services.store import Store


def build(config: ServicesConfig, store: Store) -> Payments:
    """The activities object with the gateway behind its circuit breaker."""
    breaker = CircuitBreaker(
        "card-gateway",
        failure_threshold=config.gateway_failure_threshold,
        reset_timeout=timedelta(seconds=config.gateway_reset_s),
    )
    return Payments(store, CardGateway(), breaker)


async def main(settings: Settings) -> None:
    """Run until SIGTERM."""
    config = ServicesConfig()
    store = Store(config.database("payments", settings), SCHEMA)
    payments = build(config, store)
    metrics = Metrics()
    try:
        await run_worker(
            settings,
            config.payments_queue,
            [],
            [payments.charge, payments.confirm, payments.refund],
            metrics,
            interceptors=[FaultInterceptor(config.retry_scale)],
        )
    finally:
        store.close()
