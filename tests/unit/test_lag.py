"""A group's lag per partition, from its committed offsets and the partitions' ends."""

from __future__ import annotations

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from bridge.kafka.topics import PartitionLag, partition_lags


def test_lag_counts_from_the_committed_offset_or_the_start_and_is_sorted() -> None:
    ends = {
        TopicPartition("b", 0): 7,
        TopicPartition("a", 1): 10,
        TopicPartition("a", 0): 5,
        TopicPartition("a", 2): 3,
    }
    committed = {
        TopicPartition("a", 0): OffsetAndMetadata(5, ""),
        TopicPartition("a", 1): OffsetAndMetadata(4, ""),
        TopicPartition("a", 2): OffsetAndMetadata(-1, ""),  # no offset for it
        TopicPartition("c", 0): OffsetAndMetadata(9, ""),  # not asked about
    }
    lags = partition_lags(committed, ends)
    assert lags == [
        PartitionLag("a", 0, 5, 5),
        PartitionLag("a", 1, 4, 10),
        PartitionLag("a", 2, None, 3),
        PartitionLag("b", 0, None, 7),
    ]
    assert [p.lag for p in lags] == [0, 6, 3, 7]
    assert partition_lags(committed, {}) == []
