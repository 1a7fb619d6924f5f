"""``free_port``: ports for the local stack's listeners, never the same one twice."""

from __future__ import annotations

import socket

from bridge.dev.processes import free_port


def test_no_port_is_handed_out_twice():
    # The kernel picks at random: 1,000 plain bind-to-0 calls repeated a port 39 times.
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


def test_a_handed_out_port_can_be_bound():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        assert s.getsockname()[1] == port
