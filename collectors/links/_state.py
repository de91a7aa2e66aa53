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

import orjson
from aiokafka.errors import KafkaError

from collectors.links._model import Link, validate_slug
from tracker.kafka.compacted import CompactedState
from tracker.kafka.topology import Topology
from tracker.settings import Settings

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
        if validate_slug(slug) is not None:
            # Written before slugs were checked in full (one ending in a newline, say): such a
            # path must never redirect.
            log.warning("link with an invalid slug skipped", extra={"slug": slug[:80]})
            self.links.pop(slug, None)
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
        self._log = CompactedState(
            settings,
            [self._topology.links.name, self._topology.link_clicks.name],
            self._apply,
            what="link state",
            client_id="tracker-links",
            topology=self._topology,
            on_loaded=lambda: log.info(
                "links loaded from kafka",
                extra={"links": len(table.links), "instance": table.instance},
            ),
        )
        self._publisher: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        return self._log.loaded

    @property
    def ready(self) -> bool:
        return self.loaded

    async def start(self) -> None:
        await self._log.start()
        self._publisher = asyncio.create_task(self._publish_counts_forever())

    async def stop(self) -> None:
        with contextlib.suppress(KafkaError, TimeoutError):
            await self._publish_counts()
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        await self._log.stop()

    async def put(self, link: Link) -> None:
        """Write ``link``; return once this instance serves it (the log is the only writer)."""
        await self._log.write(self._topology.links.name, link.slug, orjson.dumps(link.to_record()))

    async def delete(self, slug: str) -> None:
        for instance in self.table.instances(slug):
            await self._log.write(
                self._topology.link_clicks.name, f"{slug}/{instance}", None, wait=False
            )
        await self._log.write(self._topology.links.name, slug, None)

    def _apply(self, topic: str, key: str, value: bytes | None) -> None:
        if topic == self._topology.links.name:
            self.table.apply_link(key, value)
        else:
            self.table.apply_count(key, value)

    async def _publish_counts_forever(self) -> None:
        while True:
            await asyncio.sleep(COUNT_PUBLISH_SECONDS)
            try:
                await self._publish_counts()
            except (KafkaError, TimeoutError) as exc:
                log.warning("click counts not published; retrying", extra={"error": repr(exc)})

    async def _publish_counts(self) -> None:
        producer, table = self._log.producer, self.table
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
