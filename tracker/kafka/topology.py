"""The Kafka topology in one place, read from ``schemas/topics.toml``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import GroupCoordinatorNotAvailableError, TopicAlreadyExistsError

from tracker.kafka import clients
from tracker.settings import Settings

__all__ = ["TopicSpec", "Topology", "ensure_topics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    cleanup_policy: str
    retention_hours: int
    key: str

    @property
    def configs(self) -> dict[str, str]:
        configs = {"cleanup.policy": self.cleanup_policy}
        if self.retention_hours:
            configs["retention.ms"] = str(self.retention_hours * 3_600_000)
        return configs


@dataclass(frozen=True, slots=True)
class Topology:
    raw: TopicSpec
    dead_letters: TopicSpec
    forgotten: TopicSpec
    links: TopicSpec
    link_clicks: TopicSpec
    click_batches: TopicSpec
    calls: TopicSpec
    tickets: TopicSpec
    identity: TopicSpec
    journey: TopicSpec
    aliases: TopicSpec
    pool_reservations: TopicSpec
    outputs: TopicSpec

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        text = resources.files("schemas").joinpath("topics.toml").read_text()
        defined = tomllib.loads(text)

        def spec(role: str) -> TopicSpec:
            entry = defined[role]
            return TopicSpec(
                name=settings.topic_prefix + entry["name"],
                partitions=entry["partitions"] or settings.topic_partitions,
                replication=settings.topic_replication,
                cleanup_policy=entry["cleanup_policy"],
                retention_hours=entry["retention_hours"],
                key=entry["key"],
            )

        return cls(
            raw=spec("raw"),
            dead_letters=spec("dead_letters"),
            forgotten=spec("forgotten"),
            links=spec("links"),
            link_clicks=spec("link_clicks"),
            click_batches=spec("click_batches"),
            calls=spec("calls"),
            tickets=spec("tickets"),
            identity=spec("identity"),
            journey=spec("journey"),
            aliases=spec("aliases"),
            pool_reservations=spec("pool_reservations"),
            outputs=spec("outputs"),
        )

    def all(self) -> list[TopicSpec]:
        return [
            self.raw,
            self.dead_letters,
            self.forgotten,
            self.links,
            self.link_clicks,
            self.click_batches,
            self.calls,
            self.tickets,
            self.identity,
            self.journey,
            self.aliases,
            self.pool_reservations,
            self.outputs,
        ]


async def ensure_topics(
    settings: Settings, topology: Topology | None = None, extra: Sequence[TopicSpec] = ()
) -> None:
    """Create whichever topics are missing (the topology's, and ``extra``); existing ones are
    left as they are."""
    topology = topology or Topology.from_settings(settings)
    admin = clients.admin(settings)
    await admin.start()
    try:
        await _wait_for_group_coordinator(admin, settings.worker_id)
        existing = set(await admin.list_topics())
        missing = [t for t in [*topology.all(), *extra] if t.name not in existing]
        if not missing:
            return
        with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
            await admin.create_topics(
                [
                    NewTopic(t.name, t.partitions, t.replication, topic_configs=t.configs)
                    for t in missing
                ]
            )
        log.info("created topics", extra={"topics": [t.name for t in missing]})
    finally:
        await admin.close()


async def _wait_for_group_coordinator(admin: AIOKafkaAdminClient, group: str) -> None:
    """A new broker makes its consumer-offsets topic on first demand; ask for it here, so that
    consumers starting next find a coordinator instead of logging errors while it appears."""
    for _ in range(100):
        try:
            await admin.describe_consumer_groups([group])
            return
        except GroupCoordinatorNotAvailableError:
            await asyncio.sleep(0.1)
