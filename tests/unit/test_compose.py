"""docker-compose.yml, the Dockerfile and deploy/, checked without a Docker engine.

The compose file is validated against the Compose Specification JSON schema (the
copy check-jsonschema ships and keeps current); every container command must
exist in the CLI or the services package, every ``KTB_*`` variable must be a
known setting, and the start-up order must rest on health checks.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import typer.main
import yaml

from bridge.cli.main import app
from bridge.settings import REPO_ROOT, Settings

COMPOSE = REPO_ROOT / "docker-compose.yml"
DEPLOY = REPO_ROOT / "deploy"
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SERVICES = ("orders", "inventory", "payments", "shipping", "notifications")
KTB_IMAGE = "${BRIDGE_IMAGE:-ktb:local}"
KTB_COMMANDS = {"provision", "bridge", "api"}
"""Services of the project's image that run a ``ktb`` command."""
SERVICE_MODULES = {f"{name}-{mode}" for name in SERVICES for mode in ("worker", "server")}
"""Services of the project's image that run ``python -m services.<name> <mode>``."""


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as Compose reads it (YAML anchors and merge keys resolved)."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    """The Compose Specification JSON schema."""
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text()
    )
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_errors(document: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every violation of ``schema``, as ``path: message``."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def interpolate(value: str) -> str:
    """``value`` as Compose would expand it with no variables set (defaults; ``x`` if required)."""

    def expand(match: re.Match[str]) -> str:
        operator, word = match.group(2), match.group(3)
        if operator in (":-", "-"):
            return word
        if operator in (":?", "?"):
            return "x"
        return ""

    return INTERPOLATION.sub(expand, value)


def ktb_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the project's own image; every one expected must be there,
    so a check over them cannot pass by checking nothing (the image renamed, a typo)."""
    found = {n: s for n, s in compose["services"].items() if s.get("image") == KTB_IMAGE}
    missing = sorted((KTB_COMMANDS | SERVICE_MODULES) - set(found))
    assert not missing, f"services not running the image {KTB_IMAGE!r}: {missing}"
    return found


def ktb_names_in(text: str) -> Iterator[str]:
    """``KTB_*`` names assigned (``NAME=``) or interpolated (``${NAME...}``) in ``text``."""
    yield from (m.group(1) for m in INTERPOLATION.finditer(text) if m.group(1).startswith("KTB_"))
    yield from re.findall(r"^[#\s]*(KTB_[A-Z0-9_]+)=", text, flags=re.MULTILINE)


def known_variables() -> set[str]:
    """Every ``KTB_*`` variable a ktb process reads."""
    known = {f"KTB_{name.upper()}" for name in Settings.model_fields}
    if importlib.util.find_spec("services.config") is not None:
        from services.config import ServicesConfig

        known |= {f"KTB_SERVICES_{name.upper()}" for name in ServicesConfig.model_fields}
    return known


# --- the Compose Specification ----------------------------------------------------------


def test_compose_file_follows_the_compose_specification(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    assert schema_errors(compose, compose_schema) == []


def test_the_schema_check_catches_mistakes(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["bridge"]["depends_on"]["kafka"]["condition"] = "whenever"
    broken["services"]["api"]["healthcheck"]["retries"] = [5]
    broken["services"]["bridge"]["replicas_typo"] = 2
    errors = schema_errors(broken, compose_schema)
    assert any(e.startswith("services.bridge.depends_on") for e in errors), errors
    assert any(e.startswith("services.api.healthcheck.retries") for e in errors), errors
    assert any("replicas_typo" in e for e in errors), errors


# --- what runs --------------------------------------------------------------------------


def test_the_stack_has_every_part(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {
        "kafka", "kafka-2", "kafka-3", "postgres", "temporal", "temporal-ui", "provision",
        "registry-db", "registry", "bridge", "api", "prometheus", "grafana",
        *(f"{name}-{mode}" for name in SERVICES for mode in ("worker", "server")),
    }  # fmt: skip
    assert expected <= set(services)
    assert services["bridge"]["deploy"]["replicas"] == 2
    assert services["bridge"]["environment"]["KTB_GROUP_ID"] == "ktb-bridge"
    assert services["temporal"]["image"].startswith("temporalio/auto-setup:")
    assert services["temporal"]["environment"]["DB"] == "postgres12"
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert services["postgres"]["image"].startswith("postgres:")
    for name in ("kafka", "kafka-2", "kafka-3"):
        assert services[name]["image"].startswith("apache/kafka:")


def test_the_project_image_runs_the_bridge_the_api_and_every_service(
    compose: dict[str, Any],
) -> None:
    assert set(ktb_services(compose)) == KTB_COMMANDS | SERVICE_MODULES
    renamed = json.loads(json.dumps(compose))
    renamed["services"]["bridge"]["image"] = "ktb:renamed"
    with pytest.raises(AssertionError, match=r"\['bridge'\]"):
        ktb_services(renamed)


def test_the_schema_registry_keeps_its_state_in_postgres(compose: dict[str, Any]) -> None:
    services = compose["services"]
    registry = services["registry"]
    assert interpolate(registry["image"]) == "apicurio/apicurio-registry:3.3.3"
    env = registry["environment"]
    # Durable: SQL storage on the compose Postgres, not the image's in-memory default.
    assert (env["APICURIO_STORAGE_KIND"], env["APICURIO_STORAGE_SQL_KIND"]) == (
        "sql",
        "postgresql",
    )
    database = env["APICURIO_DATASOURCE_URL"].rsplit("/", 1)[1]
    assert env["APICURIO_DATASOURCE_URL"] == f"jdbc:postgresql://postgres:5432/{database}"
    assert (
        env["APICURIO_DATASOURCE_USERNAME"] == services["postgres"]["environment"]["POSTGRES_USER"]
    )
    # Its database is created by a one-shot before it starts, and only when missing.
    creator = services["registry-db"]
    assert creator["restart"] == "no"
    script = creator["command"][-1]
    assert f"datname = '{database}'" in script and f"CREATE DATABASE {database}" in script
    assert creator["environment"]["PGHOST"] == "postgres"
    assert registry["depends_on"]["registry-db"]["condition"] == "service_completed_successfully"
    # Healthy only when the Confluent-compatible API answers 200.
    probe = " ".join(registry["healthcheck"]["test"])
    assert "/dev/tcp/127.0.0.1/8080" in probe and "GET /apis/ccompat/v7/subjects" in probe
    assert "' 200 '" in probe


def test_every_ktb_container_reads_the_registry(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    port = next(int(p.split(":")[1]) for p in services["registry"]["ports"])
    for name, service in ktb_services(compose).items():
        url = interpolate(service["environment"]["KTB_SCHEMA_REGISTRY_URL"])
        assert url == f"http://registry:{port}/apis/ccompat/v7", name
        monkeypatch.setenv("KTB_SCHEMA_REGISTRY_URL", url)
        assert Settings().schema_registry_url == url
        if services[name].get("restart") != "no":
            assert services[name]["depends_on"]["registry"]["condition"] == "service_healthy"


def test_ktb_has_its_own_database_on_the_compose_postgres(compose: dict[str, Any]) -> None:
    services = compose["services"]
    creator = services["ktb-db"]
    assert creator["restart"] == "no" and creator["environment"]["PGHOST"] == "postgres"
    script = creator["command"][-1]
    assert "datname = 'ktb'" in script and "CREATE DATABASE ktb" in script
    # Provisioning migrates the schema, so it waits for the database to exist.
    assert services["provision"]["depends_on"]["ktb-db"]["condition"] == (
        "service_completed_successfully"
    )
    user = services["postgres"]["environment"]["POSTGRES_USER"]
    # Only the containers that use the database get its URL (it carries the password).
    with_url = {
        name
        for name, service in ktb_services(compose).items()
        if "KTB_DATABASE_URL" in service["environment"]
    }
    assert with_url == {"provision", "api"}
    for name in with_url:
        url = services[name]["environment"]["KTB_DATABASE_URL"]
        assert url.endswith(f"{user}:${{POSTGRES_PASSWORD}}@postgres:5432/ktb}}"), name


def test_one_broker_by_default_three_with_the_cluster_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    brokers = {n: s for n, s in services.items() if s["image"].startswith("apache/kafka:")}
    assert [n for n, s in brokers.items() if not s.get("profiles")] == ["kafka"]
    assert sorted(n for n, s in brokers.items() if "cluster" in s.get("profiles", [])) == [
        "kafka-2",
        "kafka-3",
    ]
    envs = [s["environment"] for s in brokers.values()]
    assert sorted(e["KAFKA_NODE_ID"] for e in envs) == [1, 2, 3]
    assert len({e["CLUSTER_ID"] for e in envs}) == 1
    assert {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in envs} == {"1@kafka:9093"}
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    for name, broker in brokers.items():
        assert f"PLAINTEXT://{name}:9092" in broker["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        assert broker["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_every_ktb_command_exists_in_the_cli(compose: dict[str, Any]) -> None:
    commands: dict[str, click.Command] = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    missing = []
    checked = set()
    for name, service in ktb_services(compose).items():
        command = [interpolate(str(part)) for part in service["command"]]
        if command[0] != "ktb":
            continue
        checked.add(name)
        sub = commands.get(command[1])
        if sub is None:
            missing.append(f"{name}: ktb {command[1]}")
            continue
        # Parsing the arguments checks option names and types without running anything.
        sub.make_context(command[1], command[2:])
    assert missing == [], f"compose services whose ktb command does not exist: {missing}"
    assert checked == KTB_COMMANDS


def test_every_service_module_exists(compose: dict[str, Any]) -> None:
    missing = []
    checked = set()
    for name, service in ktb_services(compose).items():
        command = service["command"]
        if command[0] == "ktb":
            continue
        checked.add(name)
        assert command[:2] == ["python", "-m"], f"{name}: {command}"
        module, mode = command[2], command[3]
        assert mode in ("worker", "server"), f"{name}: {command}"
        if importlib.util.find_spec(f"{module}.{mode}") is None:
            missing.append(f"{name}: {module}.{mode}")
    assert missing == [], f"compose services whose module does not exist: {missing}"
    assert checked == SERVICE_MODULES


def test_every_ktb_variable_is_a_known_setting() -> None:
    referenced: dict[str, set[str]] = {}
    for path in (COMPOSE, DEPLOY / "env.example", DEPLOY / "ktb.env.example"):
        for name in ktb_names_in(path.read_text()):
            referenced.setdefault(name, set()).add(path.name)
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    for name in re.findall(r"\b(KTB_[A-Z0-9_]+)=", dockerfile):
        referenced.setdefault(name, set()).add("Dockerfile")
    compose = yaml.safe_load(COMPOSE.read_text())
    for service in compose["services"].values():
        for name in service.get("environment", {}):
            if name.startswith("KTB_"):
                referenced.setdefault(name, set()).add("docker-compose.yml")
    assert len(referenced) > 10
    unknown = {name: sorted(where) for name, where in referenced.items()}
    unknown = {n: w for n, w in unknown.items() if n not in known_variables()}
    assert unknown == {}, f"KTB_* variables that are not settings: {unknown}"


def test_container_settings_parse(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = set()
    for name, service in ktb_services(compose).items():
        with monkeypatch.context() as env:
            for key, value in service.get("environment", {}).items():
                raw = str(value)
                if key.startswith("KTB_") and ":?" not in raw:
                    env.setenv(key, interpolate(raw))
            settings = Settings()
        assert settings.kafka_bootstrap == "kafka:9092", name
        assert settings.temporal_address == "temporal:7233", name
        # Prometheus scrapes from another container: /metrics must not be loopback-only.
        assert settings.metrics_host == "0.0.0.0", name
        assert settings.metrics_port == 9464, name
        parsed.add(name)
    assert parsed == KTB_COMMANDS | SERVICE_MODULES


def test_example_security_settings_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    # A deployment uncomments the examples of both files (addresses in .env, the rest
    # in deploy/ktb.env).
    lines = [
        *(DEPLOY / "env.example").read_text().splitlines(),
        *(DEPLOY / "ktb.env.example").read_text().splitlines(),
    ]
    assigned = [re.match(r"^#\s*(KTB_[A-Z0-9_]+)=(.*)$", line) for line in lines]
    values = {m.group(1): m.group(2) for m in assigned if m}
    assert "KTB_KAFKA_SASL_MECHANISM" in values and "KTB_TEMPORAL_API_KEY" in values
    assert "KTB_SCHEMA_REGISTRY_URL" in values and "KTB_SCHEMA_REGISTRY_PASSWORD" in values
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_client_options == {"client.id": "ktb-eu-1"}
    assert settings.kafka_ssl_locations == [Path("/run/secrets")]
    assert settings.schema_registry_url is not None
    assert settings.schema_registry_url.startswith("https://")
    assert settings.schema_registry_password is not None
    assert settings.schema_registry_ca_file == "/run/secrets/registry-ca.pem"


# --- start-up order -------------------------------------------------------------------


def test_start_up_order_rests_on_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, spec in depends.items():
            condition = spec["condition"]
            assert condition in ("service_healthy", "service_completed_successfully"), name
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits on {target}'s health"
            else:
                assert services[target].get("restart") == "no", f"{target} must be one-shot"
            if not service.get("profiles"):
                assert not services[target].get("profiles"), f"{name} needs profiled {target}"
    for name in ktb_services(compose):
        if services[name].get("restart") != "no":
            assert "healthcheck" in services[name], f"{name} has no health check"
    for name in ("bridge", "api", *(f"{s}-worker" for s in SERVICES)):
        waits = services[name]["depends_on"]
        assert waits["provision"]["condition"] == "service_completed_successfully", name
        assert waits["temporal"]["condition"] == "service_healthy", name
        assert waits["kafka"]["condition"] == "service_healthy", name


def test_topics_come_from_configuration(compose: dict[str, Any]) -> None:
    command = compose["services"]["provision"]["command"]
    assert command[:2] == ["ktb", "provision"]
    assert command[command.index("--partitions") + 1] == "${PARTITIONS:-6}"
    assert "PARTITIONS=" in (DEPLOY / "env.example").read_text()


def test_secrets_have_no_defaults(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for secret in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "KTB_API_KEYS"):
        uses = [m for m in INTERPOLATION.finditer(text) if m.group(1) == secret]
        assert uses, secret
        assert all(m.group(2) == ":?" for m in uses), f"{secret} must be required, not defaulted"


# --- mounts, metrics, dashboards --------------------------------------------------------


def test_mounts_exist_and_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    binds, volumes = set(), set()
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (REPO_ROOT / source).exists(), f"{name} mounts missing {source}"
                binds.add(source)
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
                volumes.add(source)
    assert "./deploy/grafana/dashboards" in binds and "postgres" in volumes


def test_host_ports_do_not_collide(compose: dict[str, Any]) -> None:
    published = [
        str(port).split(":")[0]
        for service in compose["services"].values()
        for port in service.get("ports", [])
    ]
    assert len(published) == len(set(published))
    assert "ports" not in compose["services"]["bridge"]  # two replicas cannot share a port


def test_prometheus_scrapes_every_metrics_endpoint(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scraped: set[str] = set()
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            scraped |= {f"{name}:{sd['port']}" for name in sd["names"]}
        for static in job.get("static_configs", []):
            scraped |= set(static["targets"])
    expected = {"api:8080", "temporal:8000"}
    # The API serves /metrics on its HTTP port; provision and the servers serve none.
    for name, service in ktb_services(compose).items():
        port = service.get("environment", {}).get("KTB_METRICS_PORT")
        if port and "-server" not in name and name not in ("provision", "api"):
            expected.add(f"{name}:{port}")
    assert {"bridge:9464", "orders-worker:9464", "notifications-worker:9464"} <= expected
    assert expected <= scraped


def test_grafana_provisions_the_dashboards_folder(compose: dict[str, Any]) -> None:
    mounts = dict(m.split(":")[:2] for m in compose["services"]["grafana"]["volumes"])
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "ktb.yml").read_text()
    )["providers"][0]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert (DEPLOY / "grafana" / "dashboards").is_dir()
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]


# --- the image ------------------------------------------------------------------------


def test_image_is_small_pinned_and_unprivileged() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert bases and all(b.startswith("python:") and b.endswith("-slim") for b in bases)
    assert "-c constraints.txt" in dockerfile
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for needed in ("schemas", "routes.yaml"):
        assert re.search(rf"^COPY {needed}\b", dockerfile, flags=re.MULTILINE), needed
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".ktb", "tests"} <= set(ignored)
