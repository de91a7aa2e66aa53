"""A keyed record lands where the Java client and aiokafka's default partitioner put it: the
worker's tables find their keys by that placement, and a customer's records follow its table's
changelog only if both are placed alike."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from tracker.kafka.clients import partition_by_key


@given(st.binary(min_size=0, max_size=80), st.integers(min_value=1, max_value=64))
def test_a_key_is_placed_as_the_default_partitioner_places_it(key: bytes, count: int) -> None:
    partitions = list(range(count))
    expected = DefaultPartitioner()(key, partitions, partitions)
    assert partition_by_key(key, partitions, partitions) == expected
    assert partition_by_key(key, partitions, partitions) == expected  # and again, remembered


def test_a_record_without_a_key_goes_to_an_available_partition() -> None:
    assert partition_by_key(None, [0, 1, 2, 3], [2]) == 2
    assert partition_by_key(None, [0, 1], []) in (0, 1)
