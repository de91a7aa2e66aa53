"""Link state: every link and click count in memory, rebuilt from and kept current by Kafka.

The compacted ``links`` topic (key: slug, value: the link's JSON, a tombstone on delete) is the
source of truth. The compacted ``links.clicks`` topic holds one record per (slug, instance): each
links instance publishes its own running click count for a link about once a second, and a link's
total is the sum over instances. So the limit is approximate across instances by what they count
in that second, and exact on one instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from collectors.links._model import Link
from tracker.errors import BackpressureError
from tracker.settings import Settings
from tracker.topology import Topology, ensure_topics

__all__ = ["LinkState", "LinkTable"]

log = logging.getLogger(__name__)

COUNT_PUBLISH_SECONDS = 1.0


class LinkTable:
    """Links by slug and click counts by slug and instance. The redirect path reads only this."""

    def __init__(self, instance: str | None = None) -> None:
        self.instance = instance or uuid.uuid4().hex
        self.links: dict[str, Link] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self.dirty: set[str] = set()

    def get(self, slug: str) -> Link | None:
        return self.links.get(slug)

    def clicks(self, slug: str) -> int:
        counts = self._counts.get(slug)
        return sum(counts.values()) if counts else 0

    def count_click(self, slug: str) -> None:
        counts = self._counts.get(slug)
        if counts is None:
            counts = self._counts[slug] = {}
        counts[self.instance] = counts.get(self.instance, 0) + 1
        self.dirty.add(slug)

    def own_count(self, slug: str) -> int:
        return self._counts.get(slug, {}).get(self.instance, 0)

    def instances(self, slug: str) -> list[str]:
        return list(self._counts.get(slug, {}))

    def apply_link(self, slug: str, value: bytes | None) -> None:
        if value is None:
            self.links.pop(slug, None)
            self._counts.pop(slug, None)
            self.dirty.discard(slug)
            return
        self.links[slug] = Link.from_record(orjson.loads(value))

    def apply_count(self, key: str, value: bytes | None) -> None:
        slug, _, instance = key.rpartition("/")
        if instance == self.instance:
            return  # this instance's own count is ahead of what it published
        if value is None:
            self._counts.get(slug, {}).pop(instance, None)
            return
        self._counts.setdefault(slug, {})[instance] = int(orjson.loads(value)["clicks"])


class LinkState:
    """Owns the Kafka side of :class:`LinkTable`: loads it at start, follows the topics, writes."""

    def __init__(
        self, settings: Settings, table: LinkTable, topology: Topology | None = None
    ) -> None:
        self._settings = settings
        self._topology = topology or Topology.from_settings(settings)
        self.table = table
        self.loaded = False
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._positions: dict[TopicPartition, int] = {}
        self._advanced = asyncio.Condition()

    @property
    def ready(self) -> bool:
        return self.loaded

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run()))

    async def stop(self) -> None:
        await self._publish_counts()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(KafkaError):
                    await client.stop()

    async def put(self, link: Link) -> None:
        """Write ``link``; return once this instance serves it (the log is the only writer)."""
        await self._write(self._topology.links.name, link.slug, orjson.dumps(link.to_record()))

    async def delete(self, slug: str) -> None:
        for instance in self.table.instances(slug):
            await self._write(self._topology.link_clicks.name, f"{slug}/{instance}", None, False)
        await self._write(self._topology.links.name, slug, None)

    async def _write(self, topic: str, key: str, value: bytes | None, wait: bool = True) -> None:
        producer = self._producer
        retry_after = float(self._settings.retry_after_seconds)
        if producer is None or not self.loaded:
            raise BackpressureError("link state is still loading from Kafka", retry_after)
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
            log.warning("link write not acknowledged", extra={"error": repr(exc)})
            raise BackpressureError(
                "Kafka did not take the link change in time; nothing changed", retry_after
            ) from exc

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
        self._tasks.append(asyncio.create_task(self._publish_counts_forever()))
        await self._follow()

    async def _connect(self) -> None:
        await ensure_topics(self._settings, self._topology)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            client_id="tracker-links",
        )
        await self._producer.start()
        consumer = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            client_id="tracker-links",
        )
        await consumer.start()
        partitions = [
            TopicPartition(topic, p)
            for topic in (self._topology.links.name, self._topology.link_clicks.name)
            for p in sorted(await self._producer.partitions_for(topic))  # waits for metadata
        ]
        if not partitions:
            raise KafkaError("the links topics have no partitions yet")
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            await self._apply(await consumer.getmany(timeout_ms=200))
        self.loaded = True
        log.info(
            "links loaded from kafka",
            extra={"links": len(self.table.links), "instance": self.table.instance},
        )

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                log.warning("links consumer error", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
                continue
            await self._apply(batches)

    async def _apply(self, batches: dict[TopicPartition, list[Any]]) -> None:
        links_topic = self._topology.links.name
        for tp, records in batches.items():
            apply: Callable[[str, bytes | None], None] = (
                self.table.apply_link if tp.topic == links_topic else self.table.apply_count
            )
            for record in records:
                if record.key is None:
                    continue
                try:
                    apply(record.key.decode(), record.value)
                except (KeyError, TypeError, ValueError) as exc:
                    log.error(
                        "unreadable links record skipped",
                        extra={"topic": tp.topic, "offset": record.offset, "error": repr(exc)},
                    )
            if records:
                self._positions[tp] = records[-1].offset + 1
        if batches:
            async with self._advanced:
                self._advanced.notify_all()

    async def _publish_counts_forever(self) -> None:
        while True:
            await asyncio.sleep(COUNT_PUBLISH_SECONDS)
            try:
                await self._publish_counts()
            except (KafkaError, TimeoutError) as exc:
                log.warning("click counts not published; retrying", extra={"error": repr(exc)})

    async def _publish_counts(self) -> None:
        producer, table = self._producer, self.table
        if producer is None or not table.dirty:
            return
        dirty, table.dirty = table.dirty, set()
        try:
            sent = [
                await producer.send(
                    self._topology.link_clicks.name,
                    orjson.dumps({"slug": slug, "clicks": table.own_count(slug)}),
                    key=f"{slug}/{table.instance}".encode(),
                )
                for slug in dirty
                if slug in table.links
            ]
            async with asyncio.timeout(self._settings.produce_timeout_seconds):
                await asyncio.gather(*sent)
        except BaseException:
            table.dirty |= dirty
            raise

    async def _close_clients(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(KafkaError):
                    await client.stop()
        self._consumer = self._producer = None
