"""The one checkpoint order (agents/batches.py): outputs, then state, then the producer, then the
offsets; and the one factory of Kafka clients (tracker/kafka/clients.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from agents.batches import Checkpoint, acked_batches
from tracker.kafka import clients
from tracker.settings import Settings


class Stage:
    """A stage as every stage is written: its outputs first, its state last."""

    def __init__(self, steps: list[str], fail_at: str = "") -> None:
        self.steps = steps
        self.fail_at = fail_at

    async def handle(self, batch: Sequence[int]) -> None:
        for step in ("outputs", "state"):
            if step == self.fail_at:
                raise RuntimeError(f"{step} failed")
            self.steps.append(step)


def checkpoint(steps: list[str], fail_at: str = "") -> Checkpoint[int]:
    async def producer() -> None:
        if fail_at == "producer":
            raise RuntimeError("producer failed")
        steps.append("producer")

    async def commit(batch: Sequence[int]) -> None:
        steps.append(f"commit {list(batch)}")

    return Checkpoint(commit, producer)


def test_a_batch_ends_with_outputs_then_state_then_producer_then_offsets() -> None:
    steps: list[str] = []
    asyncio.run(checkpoint(steps).run([1, 2], Stage(steps).handle))
    assert steps == ["outputs", "state", "producer", "commit [1, 2]"]


@pytest.mark.parametrize("fail_at", ["outputs", "state", "producer"])
def test_no_offset_is_committed_when_a_step_before_fails(fail_at: str) -> None:
    steps: list[str] = []
    with pytest.raises(RuntimeError, match=fail_at):
        asyncio.run(checkpoint(steps, fail_at).run([1], Stage(steps, fail_at).handle))
    assert not [step for step in steps if step.startswith("commit")]


class BufferedWrite:
    """A table write as Faust buffers it: a future message whose channel publishes it."""

    def __init__(self, key: str, steps: list[str]) -> None:
        self.message = self
        self.channel = self
        self.key = key
        self.steps = steps

    async def publish_message(self, message: BufferedWrite, wait: bool = True) -> None:
        self.steps.append(f"send {message.key}")


class FakeStream:
    """A Faust stream: batches to take, acknowledgements, and the app's producer with its
    buffer of table writes."""

    def __init__(self, batches: list[list[int]], steps: list[str]) -> None:
        self._batches = batches
        self.steps = steps
        self.app = self
        self.producer = self
        self.buffer = self
        self.pending: asyncio.Queue[BufferedWrite] = asyncio.Queue()

    async def flush(self) -> None:
        self.steps.append("producer")

    async def ack(self, event: int) -> None:
        self.steps.append(f"ack {event}")

    async def noack_take(self, size: int, within: float) -> Any:
        for batch in self._batches:
            yield batch


def test_a_faust_agent_acknowledges_a_batch_only_after_its_state_and_the_producer() -> None:
    steps: list[str] = []
    stream = FakeStream([[1, 2], [3]], steps)

    async def agent() -> None:
        async for events in acked_batches(stream, 10, 1.0):
            await Stage(steps).handle(events)

    asyncio.run(agent())
    assert steps == [
        *("outputs", "state", "producer", "ack 1", "ack 2"),
        *("outputs", "state", "producer", "ack 3"),
    ]


def test_a_batch_s_table_writes_are_sent_before_the_producer_flush_and_the_acks() -> None:
    steps: list[str] = []
    stream = FakeStream([[1, 2]], steps)

    async def agent() -> None:
        async for events in acked_batches(stream, 10, 1.0):
            await Stage(steps).handle(events)
            for key in ("customer-a", "customer-b"):  # as a table's __setitem__ buffers them
                stream.pending.put_nowait(BufferedWrite(key, steps))

    asyncio.run(agent())
    assert steps == [
        *("outputs", "state", "send customer-a", "send customer-b", "producer"),
        *("ack 1", "ack 2"),
    ]
    assert stream.pending.empty()


def test_an_agent_that_fails_mid_batch_acknowledges_nothing_of_it() -> None:
    steps: list[str] = []
    stream = FakeStream([[1, 2]], steps)

    async def agent() -> None:
        async for events in acked_batches(stream, 10, 1.0):
            await Stage(steps, fail_at="state").handle(events)

    with pytest.raises(RuntimeError):
        asyncio.run(agent())
    assert steps == ["outputs"]


async def test_every_producer_is_idempotent_and_acknowledged_by_all_replicas() -> None:
    settings = Settings.from_env({"TRACKER_KAFKA_BOOTSTRAP": "broker:9093"})
    producer = clients.producer(settings, "test", linger_ms=5)
    try:
        assert producer._txn_manager is not None  # idempotence
        assert producer._sender._acks == -1  # all in-sync replicas
        assert producer.client._bootstrap_servers == "broker:9093"
    finally:
        await producer.stop()
    with pytest.raises(ValueError, match="acks"):
        clients.producer(settings, "test", acks=1)


async def test_no_consumer_commits_on_its_own() -> None:
    settings = Settings.from_env({"TRACKER_KAFKA_BOOTSTRAP": "broker:9093"})
    consumer = clients.consumer(settings, "topic", client_id="test", group_id="g")
    try:
        assert consumer._enable_auto_commit is False
    finally:
        await consumer.stop()
    with pytest.raises(ValueError, match="never automatically"):
        clients.consumer(settings, client_id="test", enable_auto_commit=True)
