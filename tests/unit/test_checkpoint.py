"""The one checkpoint order (agents/batches.py): outputs, then state, then the producer, then the
offsets; and the one factory of Kafka clients (tracker/kafka/clients.py)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
from faust.transport.consumer import Consumer as FaustBase
from faust.types import TP
from intervaltree import IntervalTree  # type: ignore[import-untyped]

from agents.batches import AckGate, Checkpoint, HandledOffsets, acked_batches
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


class FaustConsumer:
    """Faust's consumer as far as acknowledgements and commits go: its own ``ack``,
    ``_new_offset`` and commit filter (Faust's code, not a copy), over partitions whose records
    it delivers from a fetch position that a seek moves."""

    ack: Any = FaustBase.ack
    _new_offset: Any = FaustBase._new_offset
    _should_commit: Any = FaustBase._should_commit
    _filter_committable_offsets: Any = FaustBase._filter_committable_offsets

    def __init__(self, logs: dict[TP, range], positions: dict[TP, int]) -> None:
        self.logs, self.positions = logs, dict(positions)
        self.app = FakeApp()
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
        self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
        self._unacked_messages: set[Message] = set()
        self._n_acked = 0
        self._waiting_for_ack = None
        self.seeks: list[tuple[int, int]] = []
        self.commits: list[dict[int, int]] = []

    def assignment(self) -> set[TP]:
        return set(self.logs)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.logs[tp].start for tp in tps}

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        for tp, offset in offsets.items():
            self.positions[tp] = offset
            self.seeks.append((tp.partition, offset))

    def fetch(self, size: int) -> list[Message]:
        messages = []
        for tp, log in self.logs.items():
            at = self.positions[tp]
            for offset in range(at, min(at + size, log.stop)):
                messages.append(Message(tp, offset))
                self._unacked_messages.add(messages[-1])
            self.positions[tp] = min(at + size, log.stop)
        return messages

    def commit(self) -> None:
        offsets = self._filter_committable_offsets(list(self._acked))
        self._committed_offset.update(offsets)
        if offsets:
            self.commits.append({tp.partition: offset for tp, offset in offsets.items()})


class FakeApp:
    def __init__(self) -> None:
        self.topics = self
        self.on_partitions_revoked = self
        self.receivers: list[Any] = []

    def acks_enabled_for(self, topic: str) -> bool:
        return True

    def connect(self, receiver: Any) -> None:
        self.receivers.append(receiver)

    async def revoke(self, tps: set[TP]) -> None:
        for receiver in self.receivers:
            await receiver(self, tps)


class Message:
    def __init__(self, tp: TP, offset: int) -> None:
        self.tp, self.topic, self.partition, self.offset = tp, tp.topic, tp.partition, offset
        self.acked = False


class Event:
    def __init__(self, message: Message) -> None:
        self.message = message


class GatedStream(FakeStream):
    """A Faust agent's stream over :class:`FaustConsumer`: batches as fetched, acknowledgements
    reaching the consumer as Faust's do, and Faust's commit after each batch."""

    def __init__(self, consumer: FaustConsumer, steps: list[str] | None = None) -> None:
        super().__init__([], steps or [])
        self.consumer = consumer

    async def ack(self, event: Any) -> None:
        self.consumer.ack(event.message)

    async def noack_take(self, size: int, within: float) -> Any:
        for _ in range(20):
            messages = self.consumer.fetch(size)
            if not messages:
                return
            yield [Event(m) for m in messages]
            self.consumer.commit()


def handled_by(stream: GatedStream) -> list[int]:
    """The offsets an agent handles, in order."""
    handled: list[int] = []

    async def agent() -> None:
        async for events in acked_batches(stream, 10, 1.0):
            handled.extend(e.message.offset for e in events)

    asyncio.run(agent())
    return handled


JOURNEY_2 = TP("journey", 2)


def test_a_partition_taken_over_without_a_commit_is_read_from_its_first_record() -> None:
    """Issue 10: the survivor took over a partition the killed worker had committed nothing on
    and began it at offset 45, not 0; Faust, with no committed offset, committed 50 over
    records no stage had handled. The records before are read and handled first."""
    consumer = FaustConsumer({JOURNEY_2: range(0, 50)}, {JOURNEY_2: 45})
    handled = handled_by(GatedStream(consumer))
    assert handled == list(range(0, 50))
    assert consumer.seeks == [(2, 0)]
    assert [c[2] for c in consumer.commits] == [10, 20, 30, 40, 50]  # never past a record


def test_a_partition_s_first_record_is_its_log_start_not_offset_zero() -> None:
    consumer = FaustConsumer({JOURNEY_2: range(30, 40)}, {JOURNEY_2: 35})
    assert handled_by(GatedStream(consumer)) == list(range(30, 40))
    assert consumer.seeks == [(2, 30)]


def test_a_partition_delivered_one_past_its_commit_is_read_from_the_commit() -> None:
    """Faust lets a run of acknowledgements starting one past the committed offset commit
    over the record at the committed offset."""
    consumer = FaustConsumer({JOURNEY_2: range(0, 20)}, {JOURNEY_2: 11})
    consumer._committed_offset[JOURNEY_2] = 10
    assert handled_by(GatedStream(consumer)) == list(range(10, 20))
    assert consumer.seeks == [(2, 10)]
    assert consumer.commits == [{2: 20}]


def test_a_gap_faust_recorded_is_never_committed_over() -> None:
    """Faust counts a jump in delivered offsets as a gap already done and commits over it."""
    consumer = FaustConsumer({JOURNEY_2: range(0, 5)}, {JOURNEY_2: 0})
    stream = GatedStream(consumer)
    assert handled_by(stream) == [0, 1, 2, 3, 4]
    consumer.logs[JOURNEY_2] = range(0, 12)
    consumer.positions[JOURNEY_2] = 8  # the fetch jumped over 5, 6 and 7 ...
    consumer._gap[JOURNEY_2].addi(5, 8)  # ... which Faust recorded as a gap
    assert handled_by(stream) == [5, 6, 7, 8, 9, 10, 11]
    assert consumer.seeks == [(2, 5)]
    assert [c[2] for c in consumer.commits] == [5, 12]


def test_records_redelivered_after_they_were_handled_are_not_handled_again() -> None:
    consumer = FaustConsumer({JOURNEY_2: range(0, 6)}, {JOURNEY_2: 0})
    stream = GatedStream(consumer)
    assert handled_by(stream) == list(range(6))
    consumer.positions[JOURNEY_2] = 2  # a fetch from before the last commit comes round again
    assert handled_by(stream) == []
    assert consumer.commits == [{2: 6}]
    assert not consumer._unacked_messages  # released: a rebalance does not wait for them


def test_a_revoked_partition_starts_again_from_the_group_s_commit() -> None:
    consumer = FaustConsumer({JOURNEY_2: range(0, 4)}, {JOURNEY_2: 0})
    stream = GatedStream(consumer)
    assert handled_by(stream) == [0, 1, 2, 3]
    asyncio.run(consumer.app.revoke({JOURNEY_2}))
    consumer._committed_offset[JOURNEY_2] = 2  # as the group stands when it comes back
    consumer.logs[JOURNEY_2] = range(0, 6)
    consumer.positions[JOURNEY_2] = 2
    assert handled_by(stream) == [2, 3, 4, 5]
    assert consumer.seeks == []


def test_a_compacted_topic_s_holes_are_not_records_to_wait_for() -> None:
    links = TP("links", 0)
    consumer = FaustConsumer({links: range(7, 9)}, {links: 7})
    handled: list[int] = []

    async def agent() -> None:
        async for events in acked_batches(GatedStream(consumer), 10, 1.0, compacted=True):
            handled.extend(e.message.offset for e in events)

    asyncio.run(agent())
    assert handled == [7, 8] and consumer.seeks == [] and consumer.commits == [{0: 9}]


def test_only_what_a_checkpoint_acknowledges_counts_as_handled() -> None:
    """Faust acknowledges on its own a message its stream skips around a rebalance (issue 10:
    a killed stitch worker's events were committed past, never stored). Only the checkpoint's
    acknowledgements may reach the offsets Faust commits."""
    consumer = FaustConsumer({JOURNEY_2: range(0, 2)}, {JOURNEY_2: 0})
    stream = GatedStream(consumer)

    async def agent() -> None:
        async for _ in acked_batches(stream, 10, 1.0):
            # Faust skips offset 2 (fetched before a rebalance) and acknowledges it itself.
            skipped = Message(JOURNEY_2, 2)
            consumer._unacked_messages.add(skipped)
            consumer.ack(skipped)

    asyncio.run(agent())
    assert consumer.commits == [{2: 2}]
    gate = vars(consumer)["ack"]
    assert isinstance(gate, AckGate) and gate.refused == 1
    assert not consumer._unacked_messages
    assert AckGate.install(consumer) is gate  # one gate, however many agents


def test_handled_offsets_count_only_an_unbroken_run_from_the_floor() -> None:
    handled = HandledOffsets()
    handled.start(JOURNEY_2, 10)
    assert handled.admit(JOURNEY_2, 12) == HandledOffsets.SKIPPED
    assert handled.next(JOURNEY_2) == 10
    assert [handled.admit(JOURNEY_2, o) for o in (10, 11, 9)] == ["handle", "handle", "seen"]
    assert not handled.acknowledge(JOURNEY_2, 11)  # 10 first
    assert handled.commit_point(JOURNEY_2, 10) is None
    assert handled.acknowledge(JOURNEY_2, 10) and handled.acknowledge(JOURNEY_2, 11)
    assert handled.commit_point(JOURNEY_2, 10) == 12
    assert handled.commit_point(JOURNEY_2, 12) is None
    handled.forget([JOURNEY_2])
    assert not handled.knows(JOURNEY_2) and handled.commit_point(JOURNEY_2, None) is None


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
