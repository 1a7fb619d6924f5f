"""``ktb dev``: Procfile lines with per-process environment, and where metrics are listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.dev.devstack import Child, DevStack, read_procfile, split_env
from bridge.errors import ConfigError
from bridge.settings import REPO_ROOT
from services.config import PORT_OFFSETS


def test_leading_assignments_are_the_process_environment():
    assert split_env(["KTB_METRICS_PORT=9101", "A_B=x=y", "ktb", "bridge", "K=v"]) == (
        {"KTB_METRICS_PORT": "9101", "A_B": "x=y"},
        ["ktb", "bridge", "K=v"],
    )
    assert split_env(["ktb", "api"]) == ({}, ["ktb", "api"])


def test_a_line_with_only_assignments_is_rejected(tmp_path: Path):
    procfile = tmp_path / "Procfile"
    procfile.write_text("# comment\nok: ktb api\nbad: KTB_METRICS_PORT=1\n")
    with pytest.raises(ConfigError, match=r"Procfile:3: expected `name: command`"):
        read_procfile(procfile)


def test_every_ktb_worker_and_the_bridge_get_their_own_metrics_port():
    ports = {}
    for name, args in read_procfile(REPO_ROOT / "Procfile"):
        env, command = split_env(args)
        port = Child(name, command, env).metrics_port
        if port is not None:
            ports[name] = port
    assert "bridge" in ports and "orders-worker" in ports
    assert len(set(ports.values())) == len(ports), ports
    assert all(not name.endswith("-server") for name in ports)


def test_endpoints_list_metrics_urls(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    class Stack:
        reused: list[str] = []

    dev = DevStack(data_dir=tmp_path, api_port=8181)
    dev.children = [
        Child("bridge", ["ktb", "bridge"], {"KTB_METRICS_PORT": "9101"}),
        Child("orders-server", ["python", "-m", "services.orders", "server"]),
        Child("api", ["ktb", "api"]),
    ]
    dev._print_endpoints(Stack())  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "bridge                 http://localhost:9101/metrics" in out
    assert "api                    http://localhost:8181/metrics" in out
    assert "orders-server          http" not in out


def test_endpoints_list_the_url_of_a_process_serving_at_an_offset_of_the_api_port(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    class Stack:
        reused: list[str] = []

    dev = DevStack(data_dir=tmp_path, api_port=8181)
    storefront = [
        args for name, args in read_procfile(REPO_ROOT / "Procfile") if name == "storefront"
    ]
    env, command = split_env(storefront[0])
    assert int(env["KTB_DEV_PORT_OFFSET"]) == PORT_OFFSETS["storefront"]
    dev.children = [Child("storefront", command, env)]
    dev._print_endpoints(Stack())  # type: ignore[arg-type]
    assert "  storefront     http://localhost:8187\n" in capsys.readouterr().out


def test_processes_get_the_registry_url_unless_there_is_none(tmp_path: Path):
    env = DevStack(data_dir=tmp_path, registry_port=18181)._env()
    assert env["KTB_SCHEMA_REGISTRY_URL"] == "http://127.0.0.1:18181/apis/ccompat/v7"
    assert "KTB_SCHEMA_REGISTRY_URL" not in DevStack(data_dir=tmp_path, registry_port=None)._env()


def test_the_registry_default_port_collides_with_no_other_default(tmp_path: Path):
    dev = DevStack(data_dir=tmp_path)
    services = {dev.api_port + offset for offset in PORT_OFFSETS.values()}
    metrics = {
        port
        for _, args in read_procfile(REPO_ROOT / "Procfile")
        if (port := Child("p", split_env(args)[1], split_env(args)[0]).metrics_port)
    }
    others = {dev.kafka_port, dev.kafka_port + 1, dev.temporal_port, dev.temporal_ui_port}
    assert dev.registry_port not in services | metrics | others | {dev.api_port}


def test_endpoints_list_the_registry(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    class Stack:
        reused: list[str] = ["registry"]

    DevStack(data_dir=tmp_path, registry_port=18181)._print_endpoints(Stack())  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "registry       http://127.0.0.1:18181/apis/ccompat/v7 (already running, reused)" in out
    DevStack(data_dir=tmp_path, registry_port=None)._print_endpoints(Stack())  # type: ignore[arg-type]
    assert "registry" not in capsys.readouterr().out
