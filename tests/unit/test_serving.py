"""How ktb's HTTP servers are configured (``bridge.serving``)."""

from __future__ import annotations

import httpx

import bridge
from bridge.serving import KEEP_ALIVE_S, server_config


def test_a_server_keeps_idle_connections_longer_than_its_clients_pools_do():
    config = server_config(object(), "127.0.0.1", 8080, lifespan="off")
    # httpx drops an idle pooled connection after its keep-alive expiry: the server must
    # not close one first, or a request sent in that moment reads no answer.
    expiry = httpx.Limits().keepalive_expiry
    assert expiry is not None
    assert config.timeout_keep_alive == KEEP_ALIVE_S > expiry
    assert KEEP_ALIVE_S > 60  # nginx's and most load balancers' upstream idle time
    assert (config.host, config.port, config.lifespan, config.log_config) == (
        "127.0.0.1", 8080, "off", None,
    )  # fmt: skip


def test_services_reach_it_from_the_public_surface():
    assert bridge.server_config is server_config
