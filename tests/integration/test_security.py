"""Security against real services: SCRAM and mutual TLS on a broker of this module's own,
Temporal mTLS through a TLS frontend, and the namespace that event data cannot choose."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from bridge import kafka
from bridge.codec import SchemaCatalog
from bridge.dev.stack import KafkaBroker, free_port
from bridge.errors import ConfigError, KafkaAuthError
from bridge.kafka import ensure_topics
from bridge.settings import REPO_ROOT, Settings
from bridge.temporal.client import connect_temporal
from tests.certs import Certs, make_certs
from tests.conftest import StackInfo
from tests.support import Services, eventually, order_data, routes_config, running_bridge

USER = "ktb-bridge"
PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA with a localhost server certificate and a client certificate."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[KafkaBroker]:
    """A broker of this module's own with a SCRAM listener and a mutual-TLS listener."""
    data = tmp_path_factory.mktemp("secure-kafka")
    keystore = data / "server-keystore.pem"
    keystore.write_bytes(certs.server_key.read_bytes() + certs.server_cert.read_bytes())
    broker = KafkaBroker(
        data / "kafka",
        port=free_port(),
        controller_port=free_port(),
        sasl_port=free_port(),
        scram_users={USER: PASSWORD},
        ssl_port=free_port(),
        ssl_keystore=keystore,
        ssl_truststore=certs.ca,
    )
    broker.start()
    try:
        asyncio.run(broker.wait_ready(120))
        yield broker
    finally:
        assert broker.service is not None
        broker.service.stop()


def derived(base: Settings, **values: Any) -> Settings:
    """``base`` with ``values`` replaced, validated like settings read from the environment."""
    return Settings(**{**base.model_dump(), **values})


def scram_settings(
    broker: KafkaBroker, base: Settings, mechanism: str = "SCRAM-SHA-512", password: str = PASSWORD
) -> Settings:
    """The test settings pointed at the SCRAM listener."""
    return derived(
        base,
        kafka_bootstrap=broker.sasl_bootstrap,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username=USER,
        kafka_sasl_password=password,
    )


def mtls_settings(broker: KafkaBroker, base: Settings, certs: Certs, ca: Path) -> Settings:
    """The test settings pointed at the mutual-TLS listener."""
    return derived(
        base,
        kafka_bootstrap=broker.ssl_bootstrap,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=ca,
        kafka_ssl_certfile=certs.client_cert,
        kafka_ssl_keyfile=certs.client_key,
    )


async def round_trip(
    settings: Settings, catalog: SchemaCatalog, client: Client, topic: str
) -> None:
    """Create a topic, produce one event and read it back, all with ``settings``' clients."""
    assert await ensure_topics(settings, {topic: 1}) == [topic]
    services = Services(settings, catalog, client)
    await services.start()
    try:
        event_id = await services.produce(
            topic, "com.example.order.placed", order_data("o-1"), key="o-1"
        )
        records = await services.read(topic, 1, timeout=20)
    finally:
        await services.stop()
    assert [services.decode(r).id for r in records] == [event_id]


async def workflow_type(handle: WorkflowHandle[Any, Any]) -> str | None:
    """The workflow's type once it exists, ``None`` before."""
    try:
        return (await handle.describe()).workflow_type
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return None
        raise


# --- SASL SCRAM -------------------------------------------------------------------------


async def test_scram_sha_256_produces_and_consumes(
    secure_broker: KafkaBroker, settings: Settings, catalog: SchemaCatalog, client: Client, uid: str
) -> None:
    sasl = scram_settings(secure_broker, settings, "SCRAM-SHA-256")
    await round_trip(sasl, catalog, client, f"scram-{uid}")


async def test_bridge_consumes_and_commits_over_scram(
    secure_broker: KafkaBroker, settings: Settings, catalog: SchemaCatalog, client: Client, uid: str
) -> None:
    sasl = scram_settings(secure_broker, settings, "SCRAM-SHA-512")
    topic = f"orders-scram-{uid}"
    await ensure_topics(sasl, {topic: 1, f"{topic}.dlq": 1})
    config = routes_config(
        [
            {
                "name": "start",
                "topic": topic,
                "type": "com.example.order.placed",
                "action": "start",
                "workflow": "ScramProbe",
                "task_queue": f"scram-{uid}",
                "workflow_id": "scram-{data.order_id}",
            }
        ]
    )
    services = Services(sasl, catalog, client)
    await services.start()
    handle = client.get_workflow_handle(f"scram-{uid}")
    try:
        async with running_bridge(sasl, catalog, client, config):
            await services.produce(topic, "com.example.order.placed", order_data(uid), key=uid)

            async def started() -> bool:
                return await workflow_type(handle) == "ScramProbe"

            await eventually(started, timeout=30)

            async def committed() -> bool:
                return await services.committed(topic) == {0: 1}

            await eventually(committed, timeout=20)
    finally:
        await services.stop()
        with contextlib.suppress(RPCError):
            await handle.terminate(reason="test over")


async def test_wrong_password_fails_fast_naming_authentication(
    secure_broker: KafkaBroker, settings: Settings
) -> None:
    wrong = scram_settings(secure_broker, settings, password="not-the-password")
    producer = kafka.producer(wrong)
    started = time.monotonic()
    with pytest.raises(KafkaAuthError) as err:
        await asyncio.wait_for(kafka.start(producer, wrong), 20)
    assert time.monotonic() - started < 15
    message = err.value.message
    assert "Kafka authentication failed" in message
    assert USER in message and "SCRAM-SHA-512" in message
    assert secure_broker.sasl_bootstrap in message
    assert "not-the-password" not in message


async def test_bridge_command_exits_on_refused_credentials(
    secure_broker: KafkaBroker, stack: StackInfo, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTB_")}
    env.update(
        KTB_KAFKA_BOOTSTRAP=secure_broker.sasl_bootstrap,
        KTB_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KTB_KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
        KTB_KAFKA_SASL_USERNAME="intruder",
        KTB_KAFKA_SASL_PASSWORD="guess",
        KTB_TEMPORAL_ADDRESS=stack.temporal_address,
        KTB_ROUTES_FILE=str(REPO_ROOT / "routes.yaml"),
        KTB_GROUP_ID=f"refused-{tmp_path.name}",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "bridge",
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1
    text = stderr.decode()
    assert "Kafka authentication failed" in text
    assert "'intruder'" in text


# --- mutual TLS -------------------------------------------------------------------------


async def test_mutual_tls_produces_and_consumes(
    secure_broker: KafkaBroker,
    settings: Settings,
    catalog: SchemaCatalog,
    client: Client,
    certs: Certs,
    uid: str,
) -> None:
    tls = mtls_settings(secure_broker, settings, certs, certs.ca)
    await round_trip(tls, catalog, client, f"mtls-{uid}")


async def test_untrusted_broker_certificate_fails_clearly(
    secure_broker: KafkaBroker, settings: Settings, certs: Certs
) -> None:
    tls = mtls_settings(secure_broker, settings, certs, certs.other_ca)
    producer = kafka.producer(tls)
    with pytest.raises(KafkaAuthError, match="TLS handshake failed") as err:
        await asyncio.wait_for(kafka.start(producer, tls), 20)
    assert "certificate verify failed" in err.value.message


# --- Temporal ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tls_frontend(target: str, certs: Certs) -> AsyncIterator[int]:
    """A TLS endpoint requiring client certificates, relaying gRPC to ``target``."""
    host, _, port = target.rpartition(":")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    context.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_temporal_mutual_tls(settings: Settings, certs: Certs) -> None:
    async with tls_frontend(settings.temporal_address, certs) as port:
        secure = derived(
            settings,
            temporal_address=f"127.0.0.1:{port}",
            temporal_tls_ca=certs.ca,
            temporal_tls_cert=certs.client_cert,
            temporal_tls_key=certs.client_key,
            temporal_tls_server_name="localhost",
        )
        client = await connect_temporal(secure)
        assert client.namespace == "default"
        assert await client.service_client.check_health()
        # Without a client certificate the frontend refuses the handshake: the port
        # answers, so this is configuration, reported without waiting out the deadline.
        anonymous = derived(secure, temporal_tls_cert=None, temporal_tls_key=None)
        with pytest.raises(ConfigError, match="cannot connect to Temporal"):
            await asyncio.wait_for(connect_temporal(anonymous), 40)


NAMESPACED_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "namespaced",
    "namespace": "com.example.test",
    "fields": [
        {"name": "order_id", "type": "string"},
        {"name": "namespace", "type": "string"},
    ],
}


async def test_event_data_cannot_choose_the_namespace(
    settings: Settings, client: Client, uid: str, tmp_path: Path
) -> None:
    (tmp_path / "namespaced.avsc").write_text(json.dumps(NAMESPACED_SCHEMA))
    catalog = SchemaCatalog.from_dir(tmp_path)
    topic = f"namespaced-{uid}"
    await ensure_topics(settings, {topic: 1, f"{topic}.dlq": 1})
    config = routes_config(
        [
            {
                "name": "start",
                "topic": topic,
                "type": "com.example.test.namespaced",
                "action": "start",
                "workflow": "NamespaceProbe",
                "task_queue": f"ns-{uid}",
                "workflow_id": "ns-{data.order_id}",
            }
        ]
    )
    elsewhere = f"elsewhere-{uid}"
    bridge_client = await connect_temporal(settings)
    assert bridge_client.namespace == settings.temporal_namespace == "default"
    services = Services(settings, catalog, client)
    await services.start()
    handle = client.get_workflow_handle(f"ns-{uid}")
    try:
        async with running_bridge(settings, catalog, bridge_client, config):
            data = {"order_id": uid, "namespace": elsewhere}
            await services.produce(topic, "com.example.test.namespaced", data, key=uid)

            async def started() -> bool:
                return await workflow_type(handle) == "NamespaceProbe"

            await eventually(started, timeout=30)
        # The workflow runs in the configured namespace and got the field as plain data.
        first = await anext(aiter(handle.fetch_history_events()))
        payload = first.workflow_execution_started_event_attributes.input.payloads[0]
        assert json.loads(payload.data)["namespace"] == elsewhere
        other = await Client.connect(settings.temporal_address, namespace=elsewhere)
        with pytest.raises(RPCError) as err:
            await other.get_workflow_handle(f"ns-{uid}").describe()
        assert err.value.status is RPCStatusCode.NOT_FOUND
    finally:
        await services.stop()
        with contextlib.suppress(RPCError):
            await handle.terminate(reason="test over")
