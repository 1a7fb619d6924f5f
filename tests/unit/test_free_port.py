"""``free_port``: ports for the local stack's listeners, never the same one twice."""

from __future__ import annotations

import errno
import socket

import pytest

from bridge.dev import processes
from bridge.dev.processes import _HANDED_OUT, ephemeral_start, free_port, pick_port
from bridge.errors import StackError


def test_no_port_is_handed_out_twice():
    # Random picks repeat: 1,000 plain bind-to-0 calls repeated a port 39 times.
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


def test_a_handed_out_port_can_be_bound():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        assert s.getsockname()[1] == port


def test_ports_come_from_below_the_range_outgoing_connections_take_theirs_from():
    # A port in the ephemeral range can be given to any outgoing connection between the
    # pick and the listener's bind: "Address already in use" at a broker's start-up.
    top = ephemeral_start()
    ports = [free_port() for _ in range(200)]
    assert all(10000 <= port < top for port in ports)


def test_the_ephemeral_range_is_read_from_the_kernel_or_assumed_where_there_is_none(tmp_path):
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("32768\t60999\n")
    assert ephemeral_start(range_file) == 32768
    assert ephemeral_start(tmp_path / "missing") == 49152
    range_file.write_text("")
    assert ephemeral_start(range_file) == 49152


def test_a_port_a_listener_holds_or_that_was_handed_out_is_skipped():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        held = listener.getsockname()[1]
        given = free_port()
        beyond = [free_port() for _ in range(3)]  # handed out here, so free now
        _HANDED_OUT.difference_update(beyond)
        assert pick_port([held, given, *beyond]) == beyond[0]


def test_no_room_below_the_ephemeral_range_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(processes, "ephemeral_start", lambda: 10500)
    with pytest.raises(StackError, match="ephemeral port range starts at 10500"):
        free_port()


def test_running_out_of_candidates_is_a_clear_error():
    with pytest.raises(StackError, match="no free TCP port"):
        pick_port([])


def test_a_host_without_ipv6_still_gets_ports(monkeypatch):
    real = socket.socket

    def ipv4_only(family=socket.AF_INET, *args, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(processes.socket, "socket", ipv4_only)
    port = free_port()
    with real() as s:
        s.bind(("127.0.0.1", port))
