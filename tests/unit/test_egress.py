"""The publish activity splits Kafka's produce errors into retried and never retried."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import errors as kafka_errors
from aiokafka.structs import RecordMetadata
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from bridge.codec import SchemaCatalog
from bridge.sdk.egress import Publisher, PublishRequest, event_id_for
from bridge.settings import REPO_ROOT

TYPE = "com.example.order.failed"
DATA = {"order_id": "o-1", "step": "charge_payment", "reason": "declined"}


class FailingProducer:
    """Raises ``errors`` one by one, then accepts; records every send."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, **record: Any) -> RecordMetadata:
        self.sent.append({"topic": topic, **record})
        if self.errors:
            raise self.errors.pop(0)
        return RecordMetadata(topic, 0, None, 7, 0, None, 0)


def publisher(producer: FailingProducer) -> Publisher:
    catalog = SchemaCatalog.from_dir(REPO_ROOT / "schemas")
    return Publisher(producer, catalog, "tests")  # type: ignore[arg-type]


def request() -> PublishRequest:
    return PublishRequest(topic="orders.outcomes", type=TYPE, data=DATA, name="outcome", key="o-1")


@pytest.mark.parametrize(
    "error",
    [
        kafka_errors.MessageSizeTooLargeError("The message is 2000000 bytes when serialized"),
        kafka_errors.RecordListTooLargeError(),
        kafka_errors.TopicAuthorizationFailedError("orders.outcomes"),
        kafka_errors.ClusterAuthorizationFailedError(),
        kafka_errors.InvalidTopicError(),
        kafka_errors.PolicyViolationError(),
    ],
)
async def test_permanent_errors_fail_at_once_naming_topic_and_error(error):
    producer = FailingProducer(error)
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(publisher(producer).publish, request())
    failure = raised.value
    assert failure.non_retryable
    assert failure.type == type(error).__name__
    assert "orders.outcomes" in failure.message
    assert type(error).__name__ in failure.message
    [details] = failure.details
    assert details["topic"] == "orders.outcomes"
    assert details["size_bytes"] > 0
    assert details["kafka_error"] == type(error).__name__
    assert len(producer.sent) == 1


async def test_too_large_names_the_records_size():
    producer = FailingProducer(kafka_errors.MessageSizeTooLargeError())
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(publisher(producer).publish, request())
    sent = producer.sent[0]
    size = len(sent["key"]) + len(sent["value"]) + sum(len(k) + len(v) for k, v in sent["headers"])
    assert f"the record is {size} bytes, more than Kafka accepts" in raised.value.message
    assert raised.value.details[0]["size_bytes"] == size


@pytest.mark.parametrize(
    "error",
    [
        kafka_errors.KafkaTimeoutError(),
        kafka_errors.RequestTimedOutError(),
        kafka_errors.NotLeaderForPartitionError(),
        kafka_errors.NotEnoughReplicasError(),
        kafka_errors.KafkaConnectionError(),
        kafka_errors.UnknownTopicOrPartitionError(),
    ],
)
async def test_transient_errors_are_retried_with_the_same_ce_id(error):
    producer = FailingProducer(error)
    activity = publisher(producer).publish
    env = ActivityEnvironment()
    with pytest.raises(ApplicationError) as raised:
        await env.run(activity, request())
    assert not raised.value.non_retryable
    published = await env.run(activity, request())  # the retry
    info = env.info
    assert published.ce_id == event_id_for(
        info.workflow_id, info.workflow_run_id, info.activity_id, "outcome"
    )
    first, retry = producer.sent
    assert dict(first["headers"])["ce_id"] == dict(retry["headers"])["ce_id"]
    assert dict(retry["headers"])["ce_id"] == published.ce_id.encode()
