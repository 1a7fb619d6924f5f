"""Apache Kafka (KRaft, single node) for the local stack, from Maven Central jars.

The jars come through jgo's pure-Python resolver and are cached under the user's
cache directory; the broker runs on the system Java (17 or newer, ``bridge.dev.java``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bridge.dev.java import java_executable
from bridge.dev.processes import Service, quiet, tail
from bridge.errors import StackError

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.25.3"
# kafka_2.13's POM lets a transitive kafka-clients 3.x win mediation, so the
# clients jar is pinned to the broker's version explicitly.
KAFKA_ENDPOINT = "+".join(
    [
        f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}",
        f"org.apache.kafka:kafka-clients:{KAFKA_VERSION}",
        f"org.apache.logging.log4j:log4j-core:{LOG4J_VERSION}",
        # Kafka 4 logs through slf4j-api 2.0.x; this is log4j2's binding for slf4j 2.
        f"org.apache.logging.log4j:log4j-slf4j2-impl:{LOG4J_VERSION}",
    ]
)
MIN_JAVA = 17
# C1 only: a broker on a developer's machine shares its cores with Temporal, the bridge
# and the tests. With C2 on, the broker's optimizing compiler took as many cycles as its
# request handlers for minutes after start-up (0.10 against 0.12 of a core at 90 records
# a second), in bursts of half a core; the request handlers cost the same without it.
JVM_OPTIONS = ("-Xms128m", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1")

LOG4J2_PROPERTIES = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.clients.name = org.apache.kafka
logger.clients.level = WARN
"""


def kafka_classpath() -> list[Path]:
    """Resolve (once, then from cache) the broker jars plus log4j2."""
    import jgo

    try:
        env = jgo.build(KAFKA_ENDPOINT)
    except Exception as exc:  # jgo raises plain exceptions for network/POM problems
        raise StackError(f"could not resolve Kafka {KAFKA_VERSION} from Maven: {exc}") from exc
    jars = sorted(env.all_jars)
    if not any(j.name.startswith(f"kafka_2.13-{KAFKA_VERSION}") for j in jars):
        raise StackError(f"Kafka {KAFKA_VERSION} jars missing from {env.path}")
    return jars


def new_cluster_id(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id as Kafka's ``Uuid.randomUuid`` makes one.

    Base64url of 16 random bytes, drawn again while it starts with ``-``: such an id
    reads as an option on the storage tool's command line (1 draw in 64).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass
class KafkaBroker:
    """A single-node KRaft broker+controller on ``port`` with its data under ``data_dir``.

    With ``sasl_port`` set it also listens there with SASL_PLAINTEXT and SCRAM-SHA-256/512,
    accepting the ``scram_users`` (name to password) created when storage is formatted.
    With ``ssl_port`` set it also listens there with TLS, presenting ``ssl_keystore`` (PEM:
    private key and certificate chain) and requiring client certificates signed by a CA
    in ``ssl_truststore`` (PEM).
    """

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    sasl_port: int | None = None
    scram_users: dict[str, str] = field(default_factory=dict)
    ssl_port: int | None = None
    ssl_keystore: Path | None = None
    ssl_truststore: Path | None = None
    service: Service | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients use."""
        return f"localhost:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """The bootstrap address of the SASL_PLAINTEXT (SCRAM) listener."""
        if self.sasl_port is None:
            raise StackError("this broker has no SASL listener (sasl_port is not set)")
        return f"localhost:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        """The bootstrap address of the SSL (mutual TLS) listener."""
        if self.ssl_port is None:
            raise StackError("this broker has no SSL listener (ssl_port is not set)")
        return f"localhost:{self.ssl_port}"

    def _listener_props(self) -> dict[str, str]:
        listeners = [f"PLAINTEXT://localhost:{self.port}"]
        protocols = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
        props: dict[str, str] = {}
        if self.sasl_port is not None:
            listeners.append(f"SASL_PLAINTEXT://localhost:{self.sasl_port}")
            protocols.append("SASL_PLAINTEXT:SASL_PLAINTEXT")
            props["sasl.enabled.mechanisms"] = ",".join(SCRAM_MECHANISMS)
            # The broker's own side of SCRAM needs a login module but no credentials:
            # the users' salted credentials live in the metadata log.
            jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            for m in SCRAM_MECHANISMS:
                props[f"listener.name.sasl_plaintext.{m.lower()}.sasl.jaas.config"] = jaas
        if self.ssl_port is not None:
            if self.ssl_keystore is None or self.ssl_truststore is None:
                raise StackError("an SSL listener needs ssl_keystore and ssl_truststore (PEM)")
            listeners.append(f"SSL://localhost:{self.ssl_port}")
            protocols.append("SSL:SSL")
            props.update(
                {
                    "ssl.keystore.type": "PEM",
                    "ssl.keystore.location": str(self.ssl_keystore),
                    "ssl.truststore.type": "PEM",
                    "ssl.truststore.location": str(self.ssl_truststore),
                    "ssl.client.auth": "required",
                }
            )
        return {
            "listeners": ",".join([*listeners, f"CONTROLLER://localhost:{self.controller_port}"]),
            "advertised.listeners": ",".join(listeners),
            "listener.security.protocol.map": ",".join(protocols),
            **props,
        }

    def _write_config(self) -> Path:
        logs = self.data_dir / "logs"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"localhost:{self.controller_port}",
            **self._listener_props(),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": "3",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
        }
        conf = self.data_dir / "server.properties"
        conf.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        return conf

    def start(self) -> None:
        """Format storage on first use, then start the broker."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        java = java_executable(MIN_JAVA, "Kafka")
        classpath = os.pathsep.join(str(j) for j in kafka_classpath())
        conf = self._write_config()
        log4j = f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}"
        base = [java, "-cp", classpath, log4j]
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = new_cluster_id()
            scram = [
                arg
                for name, password in self.scram_users.items()
                for mechanism in SCRAM_MECHANISMS
                for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
            ]
            fmt = subprocess.run(
                [*base, "kafka.tools.StorageTool", "format", "--standalone",
                 f"--cluster-id={cluster_id}", "-c", str(conf), *scram],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            if fmt.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
        self.service = Service(
            "kafka",
            [*base, f"-Xmx{self.heap}", *JVM_OPTIONS, "kafka.Kafka", str(conf)],
            self.data_dir / "kafka.log",
        )
        self.service.start()

    async def wait_ready(self, timeout: float = 90.0) -> None:
        """Until a metadata request answers; error with the log tail otherwise."""
        await wait_kafka(self.bootstrap, timeout, self.service)


async def wait_kafka(bootstrap: str, timeout: float, service: Service | None = None) -> None:
    """Poll a Kafka metadata request until it succeeds or ``timeout`` passes."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    with quiet("aiokafka"):
        while time.monotonic() < deadline:
            if service is not None and not service.alive():
                raise StackError(f"Kafka exited during start-up:\n{tail(service.log)}")
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
            try:
                await admin.start()
                await admin.list_topics()
                return
            except (TimeoutError, KafkaError, OSError) as exc:
                last = exc
            finally:
                with contextlib.suppress(KafkaError, OSError):
                    await admin.close()
            await asyncio.sleep(0.5)
    log = tail(service.log) if service else ""
    raise StackError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s ({last})\n{log}")
