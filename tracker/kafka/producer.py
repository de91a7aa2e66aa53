"""Kafka producer for collectors: acks from all in-sync replicas, idempotent, batched.

:class:`KafkaPublisher` returns only once Kafka has acknowledged every record, or raises
:class:`~tracker.errors.BackpressureError` so the caller can answer 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tracker.deadletter import DeadLetter
from tracker.errors import BackpressureError
from tracker.kafka import clients
from tracker.kafka.probe import KafkaProbe
from tracker.kafka.topology import Topology, ensure_topics
from tracker.metrics import KAFKA_PRODUCE_FAILURES
from tracker.settings import Settings
from tracker.touchpoint import Touchpoint

__all__ = ["KafkaPublisher", "KeyedRecord", "MemoryPublisher", "Publisher", "TicketRecord"]

log = logging.getLogger(__name__)


class KeyedRecord(Protocol):
    """A channel's record for its own topic, such as a call callback: a key and a wire form."""

    @property
    def call_key(self) -> str: ...

    def to_wire(self) -> dict[str, Any]: ...


class TicketRecord(Protocol):
    """A helpdesk callback for the tickets topic: keyed by its ticket, and a wire form."""

    @property
    def ticket_key(self) -> str: ...

    def to_wire(self) -> dict[str, Any]: ...


class Publisher(Protocol):
    """Where collectors hand events. ``publish`` returns only after the write is durable."""

    @property
    def ready(self) -> bool: ...

    @property
    def unready(self) -> str:
        """Why it cannot publish now, or ``""``."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(
        self, touchpoints: Sequence[Touchpoint], dead_letters: Sequence[DeadLetter] = ()
    ) -> None: ...


class KafkaPublisher:
    def __init__(self, settings: Settings, topology: Topology | None = None) -> None:
        self._settings = settings
        self._topology = topology or Topology.from_settings(settings)
        self._producer: AIOKafkaProducer | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._probe: KafkaProbe | None = None

    @property
    def ready(self) -> bool:
        return not self.unready

    @property
    def unready(self) -> str:
        if self._producer is None:
            return f"not connected to Kafka at {self._settings.bootstrap_servers} yet"
        if self._probe is not None and not self._probe.reachable:
            return self._probe.reason
        return ""

    async def start(self) -> None:
        """Connect in the background: a collector starts, and answers 503, while Kafka is away."""
        self._probe = KafkaProbe(self._settings, client_id="tracker-collector")
        await self._probe.start()
        self._connecting = asyncio.create_task(self._connect_until_up())

    def _available(self) -> AIOKafkaProducer:
        """The producer, or at once a 503 while Kafka is not connected or known to be down."""
        producer, unready = self._producer, self.unready
        if producer is None or unready:
            raise BackpressureError(
                f"Kafka is unavailable ({unready}); send the events again after Retry-After",
                float(self._settings.retry_after_seconds),
            )
        return producer

    def _failed(self, topic: str, exc: BaseException) -> None:
        KAFKA_PRODUCE_FAILURES.labels(topic).inc()
        if self._probe is not None:
            self._probe.mark_down(f"Kafka did not acknowledge a write in time: {exc!r}")

    async def _connect_until_up(self) -> None:
        delay = 0.5
        while True:
            producer = clients.producer(
                self._settings,
                "tracker-collector",
                linger_ms=5,
                max_batch_size=256 * 1024,
                request_timeout_ms=int(self._settings.produce_timeout_seconds * 1000),
            )
            try:
                await producer.start()
                await ensure_topics(self._settings, self._topology)
            except KafkaError as exc:
                await producer.stop()
                log.warning("kafka not reachable yet", extra={"error": str(exc), "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self._producer = producer
            log.info(
                "kafka producer connected", extra={"bootstrap": self._settings.bootstrap_servers}
            )
            return

    async def stop(self) -> None:
        """Flush what is in flight, then disconnect. Bounded by the shutdown grace period: with
        Kafka down, what is still unacknowledged was answered 503, and is sent again."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._probe is not None:
            await self._probe.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                async with asyncio.timeout(self._settings.shutdown_grace_seconds / 2):
                    await producer.stop()
            except TimeoutError:
                log.warning("kafka producer did not flush before the grace period; leaving")

    async def publish(
        self, touchpoints: Sequence[Touchpoint], dead_letters: Sequence[DeadLetter] = ()
    ) -> None:
        producer = self._available()
        raw = self._topology.raw.name
        records = [(raw, t.identity_hint, t.to_wire()) for t in touchpoints]
        await self._send_all(producer, raw, records, dead_letters)

    async def publish_calls(
        self, callbacks: Sequence[KeyedRecord], dead_letters: Sequence[DeadLetter] = ()
    ) -> None:
        """Call callbacks to the calls topic, keyed by call so one worker merges each call."""
        producer = self._available()
        calls = self._topology.calls.name
        records = [(calls, c.call_key, c.to_wire()) for c in callbacks]
        await self._send_all(producer, calls, records, dead_letters)

    async def publish_tickets(
        self, callbacks: Sequence[TicketRecord], dead_letters: Sequence[DeadLetter] = ()
    ) -> None:
        """Helpdesk callbacks to the tickets topic, keyed by ticket so one worker merges each."""
        producer = self._available()
        tickets = self._topology.tickets.name
        records = [(tickets, c.ticket_key, c.to_wire()) for c in callbacks]
        await self._send_all(producer, tickets, records, dead_letters)

    async def publish_click_batch(self, value: bytes, key: str, clicks: int) -> None:
        """One compact batch of short-link clicks (:mod:`collectors.links.records`) to its own topic."""
        producer = self._available()
        retry_after = float(self._settings.retry_after_seconds)
        topic = self._topology.click_batches.name
        try:
            async with asyncio.timeout(self._settings.produce_timeout_seconds):
                sent = await producer.send(
                    topic, value, key=key.encode(), headers=[("clicks", str(clicks).encode())]
                )
                await sent
        except (KafkaError, TimeoutError) as exc:
            self._failed(topic, exc)
            raise BackpressureError(
                f"Kafka did not acknowledge a batch of {clicks} clicks in time", retry_after
            ) from exc

    async def _send_all(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        records: Sequence[tuple[str, str, dict[str, Any]]],
        dead_letters: Sequence[DeadLetter],
    ) -> None:
        retry_after = float(self._settings.retry_after_seconds)
        dead = self._topology.dead_letters.name
        try:
            async with asyncio.timeout(self._settings.produce_timeout_seconds):
                pending = [
                    await producer.send(name, orjson.dumps(value), key=key.encode())
                    for name, key, value in records
                ]
                pending += [
                    await producer.send(
                        dead, orjson.dumps(d.to_wire()), key=d.dead_letter_id.encode()
                    )
                    for d in dead_letters
                ]
                await asyncio.gather(*pending)
        except (KafkaError, TimeoutError) as exc:
            self._failed(topic, exc)
            log.warning("kafka did not acknowledge", extra={"error": repr(exc)})
            raise BackpressureError(
                "Kafka did not acknowledge the events in time; send them again as they were "
                "(with the same ids, so that duplicates are dropped)",
                retry_after,
            ) from exc


class MemoryPublisher:
    """An in-memory publisher for unit tests of collector logic."""

    def __init__(self, retry_after_seconds: float = 1.0) -> None:
        """``retry_after_seconds`` is the wait it asks for when unavailable: pass the settings'
        value, as the Kafka publisher uses it."""
        self.retry_after_seconds = retry_after_seconds
        self.touchpoints: list[Touchpoint] = []
        self.calls: list[KeyedRecord] = []
        self.tickets: list[TicketRecord] = []
        self.click_batches: list[bytes] = []
        self.dead_letters: list[DeadLetter] = []
        self.unavailable = False

    @property
    def ready(self) -> bool:
        return not self.unavailable

    @property
    def unready(self) -> str:
        return "memory publisher marked unavailable" if self.unavailable else ""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish(
        self, touchpoints: Sequence[Touchpoint], dead_letters: Sequence[DeadLetter] = ()
    ) -> None:
        if self.unavailable:
            raise BackpressureError("memory publisher marked unavailable", self.retry_after_seconds)
        self.touchpoints.extend(touchpoints)
        self.dead_letters.extend(dead_letters)

    async def publish_click_batch(self, value: bytes, key: str, clicks: int) -> None:
        if self.unavailable:
            raise BackpressureError("memory publisher marked unavailable", self.retry_after_seconds)
        self.click_batches.append(value)

    async def publish_calls(
        self, callbacks: Sequence[KeyedRecord], dead_letters: Sequence[DeadLetter] = ()
    ) -> None:
        if self.unavailable:
            raise BackpressureError("memory publisher marked unavailable", self.retry_after_seconds)
        self.calls.extend(callbacks)
        self.dead_letters.extend(dead_letters)

    async def publish_tickets(
        self, callbacks: Sequence[TicketRecord], dead_letters: Sequence[DeadLetter] = ()
    ) -> None:
        if self.unavailable:
            raise BackpressureError("memory publisher marked unavailable", self.retry_after_seconds)
        self.tickets.extend(callbacks)
        self.dead_letters.extend(dead_letters)
