"""Topics: created with their partition counts, grown to more, never shrunk (Kafka cannot).

``topic_partitions`` reads the partitions of an existing topic without creating it.

``ktb provision`` plans them from the routes file; ``ktb dev``, the tests and the chaos
harness create the ones they need. One code path does both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.structs import OffsetAndMetadata

from bridge import kafka
from bridge.errors import ConfigError, InvalidRequestError, TransientError
from bridge.routes import RoutesConfig
from bridge.settings import Settings

REDRIVES_TOPIC = "ktb.redrives"
"""Where DLQ redrives mark the letters they republished (``bridge.dlq.marks``)."""
PARKING_TOPIC = "ktb.parking"
"""The failure policies' state (``bridge.policies``): blocked keys and paused partitions."""
PARKED_SUFFIX = ".parked"
TOPIC_CONFIGS: dict[str, dict[str, str]] = {PARKING_TOPIC: {"cleanup.policy": "compact"}}
"""Configuration of the topics ktb creates for itself: the parking state keeps each
entry's latest value only."""


@dataclass
class ProvisionReport:
    """What provisioning changed."""

    created: dict[str, int] = field(default_factory=dict)
    grown: dict[str, tuple[int, int]] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    search_attributes: list[str] = field(default_factory=list)
    migrations: list[int] = field(default_factory=list)
    """Schema versions applied to the provenance database."""


def topic_plan(
    config: RoutesConfig, settings: Settings, min_partitions: int | None = None
) -> dict[str, int]:
    """Every topic of the deployment and its partition count.

    Dead-letter topics and ``ktb.redrives`` keep their configured count: their
    order does not matter and redrive reads them whole.
    """
    plan = config.topic_partitions()
    plan.setdefault(settings.provenance_topic, 3)
    if min_partitions is not None:
        plan = {
            name: count if name.endswith(".dlq") else max(count, min_partitions)
            for name, count in plan.items()
        }
    plan.setdefault(REDRIVES_TOPIC, 1)
    if any(r.on_failure != "dead_letter" for r in config.routes):
        plan.setdefault(PARKING_TOPIC, 1)
    for route in config.routes:
        if route.on_failure == "park_key":
            # Partition p of <topic>.parked holds what is parked of partition p of <topic>.
            plan[route.topic + PARKED_SUFFIX] = plan[route.topic]
    return plan


VISIBLE_TIMEOUT_S = 30.0


async def provision_topics(
    settings: Settings,
    plan: Mapping[str, int],
    replication_factor: int,
    report: ProvisionReport,
    *,
    grow: bool = True,
) -> None:
    """Create missing topics and (``grow``) grow existing ones to the planned counts."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        # Describing a topic by name would auto-create it on brokers that allow
        # that, with the broker's default partition count: list first.
        existing = sorted(set(plan) & set(await admin.list_topics()))
        current = {
            t["topic"]: len(t["partitions"])
            for t in (await admin.describe_topics(existing) if existing else [])
            if t["error_code"] == 0
        }
        missing = [
            NewTopic(
                name,
                num_partitions=count,
                replication_factor=replication_factor,
                topic_configs=TOPIC_CONFIGS.get(name, {}),
            )
            for name, count in plan.items()
            if name not in current
        ]
        if missing:
            result = await admin.create_topics(missing)
            for name, code, *_ in result.topic_errors:
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise ConfigError(f"creating topic {name} failed with Kafka error code {code}")
                report.created[name] = plan[name]
        growing = {n: c for n, c in plan.items() if grow and n in current and current[n] < c}
        if growing:
            result = await admin.create_partitions(
                {n: NewPartitions(total_count=c) for n, c in growing.items()}
            )
            for name, code, *_ in result.topic_errors:
                if code != 0:
                    raise ConfigError(
                        f"growing topic {name} to {growing[name]} partitions failed "
                        f"with Kafka error code {code}"
                    )
            report.grown.update({n: (current[n], c) for n, c in growing.items()})
        report.unchanged += [n for n in plan if n in current and n not in growing]
        provisioned = {n: plan[n] for n in [*report.created, *growing]}
        await _until_visible(admin, provisioned)
        await _until_served(settings, provisioned)
    except KafkaError as exc:
        raise TransientError(f"provisioning topics at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        await admin.close()


async def _until_visible(
    admin: AIOKafkaAdminClient, counts: Mapping[str, int], timeout_s: float = VISIBLE_TIMEOUT_S
) -> None:
    """Wait until the broker's metadata lists every topic with its planned partitions.

    The controller acknowledges new topics and partitions before every broker's
    metadata shows them: a bridge started right after provisioning would be
    assigned the old partitions.
    """
    deadline = time.monotonic() + timeout_s
    while counts:
        described = await admin.describe_topics(list(counts))
        seen = {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}
        lagging = {n: c for n, c in counts.items() if seen.get(n, 0) < c}
        if not lagging:
            return
        if time.monotonic() > deadline:
            raise TransientError(
                "the broker does not list the provisioned partitions yet: "
                + ", ".join(f"{n} ({seen.get(n, 0)} of {c})" for n, c in lagging.items())
            )
        await asyncio.sleep(0.1)


async def _until_served(settings: Settings, counts: Mapping[str, int]) -> None:
    """Wait until the leader of every provisioned partition takes requests for it.

    A broker lists a new partition, leader and all, a moment before that leader serves
    it: a producer writing then is refused (``NOT_LEADER_OR_FOLLOWER``), retries and
    logs each refusal. Each partition's end offset is asked of its leader, which
    answers only once it serves the partition; the reader retries until then.
    """
    if not counts:
        return
    reader = kafka.consumer(settings, retry_backoff_ms=20)
    await kafka.start(reader, settings)
    try:
        await reader.end_offsets(
            [TopicPartition(topic, p) for topic, count in counts.items() for p in range(count)]
        )
    finally:
        await kafka.stop_consumer(reader)


async def topic_partitions(settings: Settings, topic: str) -> list[int]:
    """The partitions of an existing topic; ``InvalidRequestError`` if there is no such topic."""
    admin = kafka.admin(settings)
    try:
        await admin.start()
        # Every topic, not this one by name: naming an unknown topic makes a broker
        # with auto.create.topics.enable create it.
        described = await admin.describe_topics()
    except KafkaError as exc:
        raise TransientError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        await admin.close()
    for entry in described:
        if entry["topic"] == topic and entry["error_code"] == 0 and entry["partitions"]:
            return sorted(p["partition"] for p in entry["partitions"])
    raise InvalidRequestError(f"topic {topic!r} does not exist", topic=topic)


@dataclass(frozen=True)
class PartitionLag:
    """How far a consumer group is behind on one partition."""

    topic: str
    partition: int
    committed: int | None
    """The group's committed offset; ``None`` if it committed none."""
    end: int

    @property
    def lag(self) -> int:
        """Records from the committed offset (the start, without one) to the end."""
        return self.end - (self.committed or 0)


async def consumer_lag(settings: Settings, group: str, topics: list[str]) -> list[PartitionLag]:
    """``group``'s lag on every partition of the existing ones among ``topics``."""
    admin = kafka.admin(settings)
    try:
        await admin.start()
        described = await admin.describe_topics()
        committed = await admin.list_consumer_group_offsets(group)
    except KafkaError as exc:
        raise TransientError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        await admin.close()
    tps = [
        TopicPartition(entry["topic"], p["partition"])
        for entry in described
        if entry["topic"] in topics and entry["error_code"] == 0
        for p in entry["partitions"]
    ]
    if not tps:
        return []
    reader = kafka.consumer(settings)
    await kafka.start(reader, settings)
    try:
        ends = await reader.end_offsets(tps)
    except KafkaError as exc:
        raise TransientError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        await kafka.stop_consumer(reader)
    return partition_lags(committed, ends)


def partition_lags(
    committed: Mapping[TopicPartition, OffsetAndMetadata], ends: Mapping[TopicPartition, int]
) -> list[PartitionLag]:
    """The lag on every partition of ``ends`` (end offsets) given a group's ``committed``
    offsets (as ``list_consumer_group_offsets`` answers), by topic and partition."""
    return sorted(
        (
            PartitionLag(
                tp.topic,
                tp.partition,
                committed[tp].offset if tp in committed and committed[tp].offset >= 0 else None,
                int(end),
            )
            for tp, end in ends.items()
        ),
        key=lambda x: (x.topic, x.partition),
    )


async def ensure_topics(settings: Settings, topics: Mapping[str, int]) -> list[str]:
    """Create the missing topics with the given partition counts (replication 1, as on
    the local stack); return the created ones. Existing topics are left as they are."""
    report = ProvisionReport()
    await provision_topics(settings, topics, 1, report, grow=False)
    return list(report.created)
