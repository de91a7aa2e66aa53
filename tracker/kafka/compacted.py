"""State kept in memory from compacted Kafka topics: loaded from the beginning, then followed.

A :class:`CompactedState` reads every partition of its topics from the start (no consumer group,
so every instance sees everything), hands each record to an ``apply`` function in log order, and
then keeps following. Writes go through :meth:`CompactedState.write`, which returns once Kafka
acknowledged the record and, by default, once this instance has read it back: the log is the
only writer of the state, so a caller sees its own write applied in the order every other
reader applies it. :class:`MemoryLog` is the in-memory stand-in for unit tests.

The links service (link state, click counts), the beacon (number-pool reservations) and the
worker (the same reservations, read only) all keep their state this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from tracker.errors import BackpressureError
from tracker.kafka import clients
from tracker.kafka.topology import Topology, ensure_topics
from tracker.settings import Settings

__all__ = ["Apply", "CompactedLog", "CompactedState", "MemoryLog"]

log = logging.getLogger(__name__)

# (topic, key, value or None for a tombstone)
Apply = Callable[[str, str, bytes | None], object]


class CompactedLog(Protocol):
    """What users of compacted state need: readiness, lifecycle and read-your-write writes."""

    @property
    def loaded(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def write(self, topic: str, key: str, value: bytes | None, wait: bool = True) -> None: ...

    async def caught_up(self) -> None: ...


class CompactedState:
    """Loads ``topics`` from the beginning into ``apply``, follows them, and writes to them.

    ``what`` names the state in errors and logs ("link state", "number reservations").
    ``writes=False`` makes a reader only: no producer is started.
    """

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        apply: Apply,
        *,
        what: str,
        client_id: str,
        writes: bool = True,
        topology: Topology | None = None,
        on_loaded: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._topology = topology or Topology.from_settings(settings)
        self._topics = list(topics)
        self._apply_record = apply
        self._what = what
        self._client_id = client_id
        self._writes = writes
        self._on_loaded = on_loaded
        self.loaded = False
        self.producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._advanced = asyncio.Condition()
        self._loaded_event = asyncio.Event()

    async def start(self) -> None:
        """Connect and load in the background; :attr:`loaded` turns true once the state is read."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_clients()

    async def write(self, topic: str, key: str, value: bytes | None, wait: bool = True) -> None:
        """Produce one record (``None`` is a tombstone). Returns once Kafka acknowledged it and,
        with ``wait``, once this instance has applied it. Raises :class:`BackpressureError`."""
        producer = self.producer
        retry_after = float(self._settings.retry_after_seconds)
        if producer is None or not self.loaded:
            raise BackpressureError(f"{self._what} is still loading from Kafka", retry_after)
        try:
            async with asyncio.timeout(self._settings.produce_timeout_seconds):
                sent = await (await producer.send(topic, value, key=key.encode()))
                if wait:
                    where = TopicPartition(sent.topic, sent.partition)
                    async with self._advanced:
                        await self._advanced.wait_for(
                            lambda: self._positions.get(where, 0) > sent.offset
                        )
        except (KafkaError, TimeoutError) as exc:
            log.warning(f"{self._what}: write not acknowledged", extra={"error": repr(exc)})
            raise BackpressureError(
                f"Kafka did not take the change to {self._what} in time; nothing changed",
                retry_after,
            ) from exc

    async def caught_up(self) -> None:
        """Return once everything in the topics now has been applied. Bound it with
        ``asyncio.timeout``; raises ``KafkaError`` when the end offsets cannot be read."""
        await self._loaded_event.wait()
        consumer = self._consumer
        assert consumer is not None
        ends: dict[TopicPartition, int] = await consumer.end_offsets(list(consumer.assignment()))
        async with self._advanced:
            await self._advanced.wait_for(
                lambda: all(self._positions.get(tp, 0) >= end for tp, end in ends.items())
            )

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._connect()
                break
            except KafkaError as exc:
                log.warning("kafka not reachable yet", extra={"error": str(exc), "retry_in": delay})
                await self._close_clients()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        await self._follow()

    async def _connect(self) -> None:
        await ensure_topics(self._settings, self._topology)
        if self._writes:
            self.producer = clients.producer(self._settings, self._client_id, linger_ms=2)
            await self.producer.start()
        consumer = self._consumer = clients.consumer(
            self._settings, client_id=self._client_id, fetch_max_wait_ms=100
        )
        await consumer.start()
        partitions = [
            TopicPartition(topic, p)
            for topic in self._topics
            for p in sorted(await self._partitions(consumer, topic))
        ]
        if not partitions:
            raise KafkaError(f"the topics of {self._what} have no partitions yet")
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            await self._apply(consumer, await consumer.getmany(timeout_ms=200))
        self.loaded = True
        self._loaded_event.set()
        if self._on_loaded is not None:
            self._on_loaded()

    async def _partitions(self, consumer: AIOKafkaConsumer, topic: str) -> set[int]:
        if self.producer is not None:
            found: set[int] = await self.producer.partitions_for(topic)  # waits for metadata
            return found
        for _ in range(50):
            known = consumer.partitions_for_topic(topic)
            if known:
                return set(known)
            await consumer._client.force_metadata_update()  # the topic was just created
            await asyncio.sleep(0.1)
        raise KafkaError(f"topic {topic} has no partitions")

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500)
                await self._apply(consumer, batches)
            except KafkaError as exc:
                log.warning(f"{self._what}: consumer error", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)

    async def _apply(self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, Any]) -> None:
        for tp, records in batches.items():
            for record in records:
                if record.key is None:
                    continue
                try:
                    self._apply_record(tp.topic, record.key.decode(), record.value)
                except (KeyError, TypeError, ValueError) as exc:
                    log.error(
                        f"unreadable record in {self._what} skipped",
                        extra={"topic": tp.topic, "offset": record.offset, "error": repr(exc)},
                    )
        # Positions, not record offsets: they also move past gaps that compaction leaves.
        for tp in consumer.assignment():
            self._positions[tp] = await consumer.position(tp)
        async with self._advanced:
            self._advanced.notify_all()

    async def _close_clients(self) -> None:
        for client in (self._consumer, self.producer):
            if client is not None:
                with contextlib.suppress(KafkaError):
                    await client.stop()
        self._consumer = None
        self.producer = None


class MemoryLog:
    """An in-memory :class:`CompactedLog` for unit tests: a write is applied at once."""

    def __init__(self, apply: Apply, retry_after_seconds: float = 1.0) -> None:
        self._apply = apply
        self._retry_after = retry_after_seconds  # the settings' value, as CompactedState uses
        self.records: list[tuple[str, str, bytes | None]] = []
        self.unavailable = False

    @property
    def loaded(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def write(self, topic: str, key: str, value: bytes | None, wait: bool = True) -> None:
        if self.unavailable:
            raise BackpressureError("memory log marked unavailable", self._retry_after)
        self.records.append((topic, key, value))
        self._apply(topic, key, value)

    async def caught_up(self) -> None:
        return None
