"""The Faust worker: wires Kafka streams to the ingest pipeline and hosts the console. Thin on purpose."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from aiohttp import web
from mode import Service

from agents.calls import CALL_COLUMNS, CallsPipeline
from agents.ingest import DEAD_LETTER_COLUMNS, TOUCHPOINT_COLUMNS, IngestPipeline, RawMessage
from agents.sink import ClickHouseSink
from tracker.console import create_console
from tracker.logs import logging_config
from tracker.metrics import WORKER_READY
from tracker.settings import Settings
from tracker.store import ClickHouseStore
from tracker.topology import Topology, ensure_topics

__all__ = ["build_worker", "run_worker"]

log = logging.getLogger(__name__)


class ConsoleService(Service):
    """Serves the console on the worker's event loop, next to the ClickHouse engine it reads."""

    def __init__(
        self, settings: Settings, store: ClickHouseStore, app: faust.App, **kwargs: Any
    ) -> None:
        self._settings = settings
        self._store = store
        self._app = app
        self._runner: web.AppRunner | None = None
        self.started_agents = False
        super().__init__(**kwargs)

    async def _ready(self) -> bool:
        return self.started_agents and await self._store.ping()

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


def build_worker(settings: Settings) -> tuple[faust.App, ConsoleService, ClickHouseStore]:
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
        datadir=str(settings.data_dir / "faust"),
    )
    console = ConsoleService(settings, store, app)
    raw_topic = app.topic(topology.raw.name, value_serializer="raw", key_serializer="raw")
    dead_topic = app.topic(topology.dead_letters.name, value_serializer="raw", key_serializer="raw")
    batch, within = settings.sink_batch_size, settings.sink_flush_seconds

    @app.agent(raw_topic, name="ingest")
    async def ingest(stream: Any) -> None:
        async for events in stream.noack_take(batch, within=within):
            await pipeline.handle_touchpoints([_raw(e) for e in events])
            for event in events:
                await stream.ack(event)  # only now may the offset be committed

    @app.agent(dead_topic, name="dead_letters")
    async def dead_letters(stream: Any) -> None:
        async for events in stream.noack_take(batch, within=within):
            await pipeline.handle_dead_letters([_raw(e) for e in events])
            for event in events:
                await stream.ack(event)

    # Calls: callbacks keyed by call; the merged state of each call lives in a changelog-backed
    # table. Its changelog is partitioned by the same key, so it follows the calls topic.
    calls_pipeline = CallsPipeline(
        calls=ClickHouseSink(store, "calls", CALL_COLUMNS, "call_uuid", "call_ts", "version"),
        touchpoints=ClickHouseSink(
            store, "touchpoints", TOUCHPOINT_COLUMNS, "event_id", "ts", version_column="version"
        ),
        dead_letters=ClickHouseSink(
            store, "dead_letters", DEAD_LETTER_COLUMNS, "dead_letter_id", "received_ts"
        ),
        tracking_numbers=settings.call_tracking_numbers,
    )
    calls_topic = app.topic(topology.calls.name, value_serializer="raw", key_serializer="raw")
    call_state = app.Table(
        "call_state", key_type=str, partitions=settings.topic_partitions, use_partitioner=True
    )

    @app.agent(calls_topic, name="calls")
    async def calls(stream: Any) -> None:
        async for events in stream.noack_take(batch, within=within):
            await calls_pipeline.handle([_raw(e) for e in events], call_state)
            for event in events:
                await stream.ack(event)

    async def mark_started() -> None:
        console.started_agents = True
        WORKER_READY.set(1)
        log.info(
            "worker started", extra={"topics": [topology.raw.name, topology.dead_letters.name]}
        )

    app.task(mark_started)
    return app, console, store


def _raw(event: Any) -> RawMessage:
    message = event.message
    return RawMessage(event.value, message.topic, message.partition, message.offset)


def run_worker(settings: Settings) -> None:
    """Apply migrations, then run the worker until SIGINT or SIGTERM."""
    app, console, store = build_worker(settings)
    asyncio.run(ensure_topics(settings))
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
