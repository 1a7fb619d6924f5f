"""Start-up connections: wait out a server that is down, fail fast on one that answers wrongly."""

from __future__ import annotations

import pytest

from bridge.dev.stack import free_port
from bridge.errors import ConfigError, TransientError
from bridge.temporal.client import connect_temporal


async def test_unreachable_temporal_is_retried_until_the_deadline(settings) -> None:
    quick = settings.model_copy(
        update={"temporal_address": f"localhost:{free_port()}", "connect_timeout_s": 1.0}
    )
    with pytest.raises(TransientError, match="unreachable"):
        await connect_temporal(quick)


async def test_a_port_that_answers_but_is_not_temporal_fails_as_configuration(settings) -> None:
    # Kafka's port accepts TCP but does not speak gRPC: no amount of waiting helps.
    wrong = settings.model_copy(
        update={"temporal_address": settings.kafka_bootstrap, "connect_timeout_s": 120.0}
    )
    with pytest.raises(ConfigError, match="cannot connect to Temporal"):
        await connect_temporal(wrong)
