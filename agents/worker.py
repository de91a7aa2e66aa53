"""The Faust worker: wires Kafka to the ingest pipeline and hosts the console. Thin on purpose.

The raw topic is read by :class:`RawIngestService`, a batch consumer running inside the Faust
worker: Faust's per-message stream machinery costs about 130 µs an event, which capped ingest
at a quarter of a bare consume-and-insert loop (bench/README.md). Faust agents keep the lower-
volume and stateful work: dead letters now, identity and journeys next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import faust
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from mode import Service

from agents.ingest import DEAD_LETTER_COLUMNS, TOUCHPOINT_COLUMNS, IngestPipeline, RawMessage
from agents.sink import ClickHouseSink
from tracker.console import create_console
from tracker.logs import logging_config
from tracker.metrics import WORKER_LAG, WORKER_READY
from tracker.settings import Settings
from tracker.store import ClickHouseStore
from tracker.topology import Topology, ensure_topics

__all__ = ["build_worker", "run_worker"]

log = logging.getLogger(__name__)


class RawIngestService(Service):
    """Reads the raw topic in batches (flushed on size or time) and commits only what is stored."""

    def __init__(
        self, settings: Settings, topic: str, pipeline: IngestPipeline, **kwargs: Any
    ) -> None:
        self._settings = settings
        self._topic = topic
        self._pipeline = pipeline
        self._consumer: AIOKafkaConsumer | None = None
        self._idle = asyncio.Event()  # set whenever no batch is in hand
        self._idle.set()
        self.consuming = False
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self._topic,
            bootstrap_servers=self._settings.bootstrap_servers,
            group_id=f"{self._settings.worker_id}.ingest",
            client_id=f"{self._settings.worker_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._settings.sink_batch_size,
        )
        await self._consumer.start()
        self.consuming = True

    async def on_stop(self) -> None:
        """Graceful: the batch in hand is written and committed before the consumer leaves."""
        self.consuming = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=30.0)
        if self._consumer is not None:
            await self._consumer.stop()

    @Service.task
    async def _ingest(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        self._idle.clear()
        try:
            while not self.should_stop:
                await self._ingest_batch(consumer)
        finally:
            self._idle.set()

    async def _ingest_batch(self, consumer: AIOKafkaConsumer) -> None:
        records = await self._next_batch(consumer)
        if records:
            await self._pipeline.handle_touchpoints(
                [RawMessage(r.value, r.topic, r.partition, r.offset) for r in records]
            )
            # Only now are the events in ClickHouse; a crash before this replays them, harmlessly.
            last: dict[TopicPartition, int] = {}
            for record in records:
                last[TopicPartition(record.topic, record.partition)] = record.offset + 1
            try:
                await consumer.commit(last)
            except CommitFailedError as exc:  # rebalanced meanwhile: the new owner skips them
                log.warning("offset commit failed after a rebalance", extra={"error": str(exc)})

    @Service.timer(10.0)
    async def _record_lag(self) -> None:
        """Events on Kafka not yet stored: end offsets minus committed ones, on a timer of its
        own so that it keeps counting while a ClickHouse outage holds the ingest loop."""
        consumer = self._consumer
        partitions = consumer.assignment() if consumer is not None else set()
        if consumer is None or not partitions:
            return
        try:
            ends = await consumer.end_offsets(list(partitions))
            lag = 0
            for partition, end in ends.items():
                lag += max(0, end - (await consumer.committed(partition) or 0))
        except KafkaError as exc:
            log.warning("could not measure lag", extra={"error": str(exc)})
            return
        WORKER_LAG.set(lag)

    async def _next_batch(self, consumer: AIOKafkaConsumer) -> list[Any]:
        size, loop = self._settings.sink_batch_size, asyncio.get_running_loop()
        deadline = loop.time() + self._settings.sink_flush_seconds
        records: list[Any] = []
        while len(records) < size and not self.should_stop:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            fetched = await consumer.getmany(
                timeout_ms=int(remaining * 1000), max_records=size - len(records)
            )
            for partition_records in fetched.values():
                records.extend(partition_records)
        return records


class ConsoleService(Service):
    """Serves the console on the worker's event loop, next to the ClickHouse engine it reads."""

    def __init__(
        self, settings: Settings, store: ClickHouseStore, ingest: RawIngestService, **kwargs: Any
    ) -> None:
        self._settings = settings
        self._store = store
        self._ingest = ingest
        self._runner: web.AppRunner | None = None
        self.started_agents = False
        super().__init__(**kwargs)

    async def _ready(self) -> bool:
        return self.started_agents and self._ingest.consuming and await self._store.ping()

    async def on_start(self) -> None:
        console = create_console(self._settings, self._store, self._ready)
        self._runner = web.AppRunner(console, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.console_host, self._settings.console_port)
        await site.start()
        log.info(
            "console listening",
            extra={"host": self._settings.console_host, "port": self._settings.console_port},
        )

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def build_worker(
    settings: Settings,
) -> tuple[faust.App, RawIngestService, ConsoleService, ClickHouseStore]:
    topology = Topology.from_settings(settings)
    store = ClickHouseStore(settings.clickhouse_url, settings.clickhouse_database)
    pipeline = IngestPipeline(
        touchpoints=ClickHouseSink(
            store, "touchpoints", TOUCHPOINT_COLUMNS, "event_id", "ts", version_column="version"
        ),
        dead_letters=ClickHouseSink(
            store, "dead_letters", DEAD_LETTER_COLUMNS, "dead_letter_id", "received_ts"
        ),
    )
    app = faust.App(
        settings.worker_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_interval=1.0,
        # A killed worker's partitions move on after 10 s, not Faust's default 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        datadir=str(settings.data_dir / "faust"),
    )
    ingest = RawIngestService(settings, topology.raw.name, pipeline)
    console = ConsoleService(settings, store, ingest)
    dead_topic = app.topic(topology.dead_letters.name, value_serializer="raw", key_serializer="raw")
    batch, within = settings.sink_batch_size, settings.sink_flush_seconds

    @app.agent(dead_topic, name="dead_letters")
    async def dead_letters(stream: Any) -> None:
        async for events in stream.noack_take(batch, within=within):
            await pipeline.handle_dead_letters([_raw(e) for e in events])
            for event in events:
                await stream.ack(event)

    async def mark_started() -> None:
        console.started_agents = True
        WORKER_READY.set(1)
        log.info(
            "worker started", extra={"topics": [topology.raw.name, topology.dead_letters.name]}
        )

    app.task(mark_started)
    return app, ingest, console, store


def _raw(event: Any) -> RawMessage:
    message = event.message
    return RawMessage(event.value, message.topic, message.partition, message.offset)


def _wait_for_topics(settings: Settings) -> None:
    """Kafka may still be starting: wait for it, as the collectors do, rather than crash."""
    delay = 0.5
    while True:
        try:
            asyncio.run(ensure_topics(settings))
            return
        except KafkaError as exc:
            log.warning("kafka not reachable yet", extra={"error": str(exc), "retry_in": delay})
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def run_worker(settings: Settings) -> None:
    """Apply migrations, then run the worker until SIGINT or SIGTERM."""
    app, ingest, console, store = build_worker(settings)
    _wait_for_topics(settings)
    applied = store.run_sync(store.migrate_sync)
    log.info(
        "clickhouse ready",
        extra={
            "database": settings.clickhouse_database,
            "applied": applied,
            "embedded": store.embedded,
        },
    )
    worker = faust.Worker(
        app,
        ingest,
        console,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level),
        quiet=True,
        redirect_stdouts=False,
    )
    try:
        worker.execute_from_commandline()
    finally:
        store.close()
