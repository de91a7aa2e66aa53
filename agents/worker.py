"""The worker's composition root: builds the stages, the services (agents/services.py) and the
Faust agents (agents/streams.py), and runs them. Thin on purpose.

The raw topic is read by :class:`RawIngestService`, a batch consumer running inside the Faust
worker: Faust's per-message stream machinery costs about 130 µs an event, which capped ingest
at a quarter of a bare consume-and-insert loop (bench/README.md). Short-link click batches are
read the same way and handed to the same pipeline. Faust agents keep the stateful work.

Workers scale out by role (``tracker worker --role``, docs/operations.md "Worker roles"):
several ``stitch`` workers share the partitions of ingest, identity and journey and hand their
records to one ``write`` worker through Kafka, since embedded chDB has one owner; with a
ClickHouse server, several ``all`` workers each write directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from aiokafka.errors import KafkaError
from mode import CrashingSupervisor, Service

from agents.batches import DeadLetterPolicy, dead_letter_policy
from agents.forget import ForgottenIdentifiers
from agents.identity import AliasReplica
from agents.ingest import IngestPipeline
from agents.links import add_links_mirror
from agents.outputs import OutputSink, Writer
from agents.services import (
    AliasReplicaService,
    BatchIngestService,
    ClickBatchService,
    ConsoleService,
    ForgetService,
    ForgottenFollower,
    HealthService,
    PoolReservationsService,
    RawIngestService,
    WriterService,
)
from agents.stitching import (
    Outbox,
    StitchRouter,
)
from agents.streams import add_calls, add_dead_letters, add_stitching, add_tickets, table_store
from collectors.calls.pools import PoolBook
from tracker.kafka.clients import partition_by_key, security
from tracker.kafka.topology import TopicSpec, Topology, ensure_topics
from tracker.logs import logging_config
from tracker.metrics import WORKER_READY
from tracker.settings import Settings
from tracker.shutdown import ShutdownDeadline
from tracker.store import ClickHouseStore
from tracker.store.sink import ClickHouseSink, Sink
from tracker.store.tables import DEAD_LETTERS, TABLES, Table

__all__ = ["build_worker", "run_worker"]

log = logging.getLogger(__name__)


class _Worker(faust.Worker):
    """Faust's worker, ending within the shutdown grace period once a signal asks it to stop."""

    def __init__(self, *args: Any, deadline: ShutdownDeadline, **kwargs: Any) -> None:
        self._deadline = deadline
        super().__init__(*args, **kwargs)

    def _schedule_shutdown(self, signal: Any) -> None:
        self._deadline.arm()
        super()._schedule_shutdown(signal)


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The Faust app's TLS and SASL, the same as every other client's (tracker/kafka/clients.py)."""
    chosen = settings.kafka_security
    context = security(settings).get("ssl_context")
    if chosen.uses_sasl:
        return faust.SASLCredentials(
            username=chosen.sasl_username,
            password=chosen.sasl_password.value,
            mechanism=chosen.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def build_worker(settings: Settings) -> tuple[faust.App, list[Service], ClickHouseStore | None]:
    """The Faust app, the services to run beside it (in start order), and the store (none for a
    stitch-only worker). ``settings.worker_role`` says what this process runs:

    - ``all``: everything, writing ClickHouse itself (one worker; or several, with a server);
    - ``stitch``: ingest, identity and journey, handing every record they would write to the
      writer through the outputs topic; it serves only its health (no ClickHouse, no console);
    - ``write``: the writer of those records, owning ClickHouse and the console, and the stages
      that write ClickHouse themselves (the collectors' dead letters, the links mirror, calls,
      helpdesk tickets).
    """
    role = settings.worker_role
    stitches, writes = role in ("all", "stitch"), role in ("all", "write")
    topology = Topology.from_settings(settings)
    store = (
        ClickHouseStore(
            settings.clickhouse_url,
            settings.clickhouse_database,
            cluster=settings.clickhouse_cluster,
        )
        if writes
        else None
    )
    # Loaded by ForgetService (or, on a stitch-only worker, ForgottenFollower) before any stage
    # passes a record on.
    forgotten = ForgottenIdentifiers(loading=True)
    outbox = Outbox(settings)

    def sink(table: Table) -> Sink:
        if store is None:
            return OutputSink(outbox, topology.outputs.name, table)
        return ClickHouseSink(store, table)

    def letters() -> DeadLetterPolicy:
        return DeadLetterPolicy(sink(DEAD_LETTERS))

    replica = AliasReplica()
    aliases = AliasReplicaService(settings, topology.aliases.name, replica)
    # Touchpoints go on to identity and journey stitching, which writes them to ClickHouse.
    to_stitching = StitchRouter(
        outbox, topology.identity.name, topology.journey.name, replica, aliases.loaded
    )
    pipeline = IngestPipeline(
        touchpoints=to_stitching, dead_letters=sink(DEAD_LETTERS), forgotten=forgotten
    )
    # The writer runs other agents than the stitch workers: a consumer group of its own.
    app_id = settings.worker_id if role != "write" else f"{settings.worker_id}.write"
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        broker_credentials=broker_credentials(settings),
        store=table_store(settings),
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_batch_size=1_048_576,
        # Per partition and fetch. At 1 MiB, the single-partition identity log came about 900
        # records a batch however long its backlog: its agent could not catch up.
        consumer_max_fetch_size=4 * 1_048_576,
        broker_commit_interval=1.0,
        # The default placement, with each key's hash computed once (the tables' keys repeat).
        producer_partitioner=partition_by_key,
        # A killed worker's partitions move on after 10 s, not Faust's default 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        # Per application id: the tables' local stores belong to that id's changelogs.
        datadir=str(settings.data_dir / "faust" / app_id),
        # An agent that raises ends the worker with exit code 1, so whoever runs it (tracker up,
        # an orchestrator) restarts it and its unacknowledged records are read again. Faust's
        # default restarts the agent alone, which then runs on past a batch it never acknowledged.
        agent_supervisor=CrashingSupervisor,
    )
    consumers: list[BatchIngestService] = []
    if stitches:
        # Raw touchpoints and click batches go through the one pipeline, one batch at a time.
        ingest = RawIngestService(settings, topology.raw.name, pipeline, letters())
        clicks = ClickBatchService(
            settings, topology.click_batches.name, pipeline, letters(), ingest.lock
        )
        consumers += [ingest, clicks]
        add_stitching(app, sink, letters, topology, settings, outbox, forgotten)
    if store is None:
        follower = ForgottenFollower(settings, topology.forgotten.name, forgotten)
        health = HealthService(settings, consumers, follower)
        services: list[Service] = [outbox, aliases, follower, *consumers, health]
        _started(app, health, role)
        return app, services, None
    if not stitches:
        writer = Writer({t.name: ClickHouseSink(store, t) for t in TABLES.values() if t.record})
        consumers.append(
            WriterService(settings, topology.outputs.name, writer, dead_letter_policy(store))
        )
    # Number pools: only with pools configured does the worker follow the reservations.
    book = PoolBook()
    forget = ForgetService(
        settings,
        topology.forgotten.name,
        store,
        forgotten,
        consumers[0],
        aliases_topic=topology.aliases.name,
        reservations_topic=topology.pool_reservations.name if settings.call_number_pools else "",
        book=book if settings.call_number_pools else None,
    )
    reservations = (
        PoolReservationsService(settings, topology.pool_reservations.name, book)
        if settings.call_number_pools
        else None
    )
    console = ConsoleService(settings, store, consumers, forget, reservations)
    add_dead_letters(app, store, topology, settings, pipeline, consumers[0].lock)
    add_links_mirror(app, store, topology, settings)
    # The calls stage routes its touchpoints through a router of its own: each flushes its own.
    calls_router = StitchRouter(
        outbox, topology.identity.name, topology.journey.name, replica, aliases.loaded
    )
    add_calls(app, store, topology, settings, calls_router, forgotten, reservations, book)
    tickets_router = StitchRouter(
        outbox, topology.identity.name, topology.journey.name, replica, aliases.loaded
    )
    add_tickets(app, store, topology, settings, tickets_router, forgotten)
    _started(app, console, role)
    followers: list[Service] = [reservations] if reservations is not None else []
    return app, [outbox, aliases, forget, *consumers, *followers, console], store


def _started(app: faust.App, status: ConsoleService | HealthService, role: str) -> None:
    async def mark_started() -> None:
        status.started_agents = True
        WORKER_READY.set(1)
        log.info("worker started", extra={"role": role, "agents": sorted(app.agents)})

    app.task(mark_started)


def _wait_for_topics(settings: Settings, app: faust.App) -> None:
    """Kafka may still be starting: wait for it, as the collectors do, rather than crash. The
    tables' changelogs are made here too, so Faust finds them instead of logging their absence."""
    changelogs = [
        TopicSpec(
            name=table.changelog_topic.get_topic_name(),
            partitions=table.partitions or settings.topic_partitions,
            replication=settings.topic_replication,
            cleanup_policy="compact",
            retention_hours=0,
            key=f"the {table.name} table's key",
        )
        for table in app.tables.values()
    ]
    delay = 0.5
    while True:
        try:
            asyncio.run(ensure_topics(settings, extra=changelogs))
            return
        except KafkaError as exc:
            log.warning("kafka not reachable yet", extra={"error": str(exc), "retry_in": delay})
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def run_worker(settings: Settings) -> None:
    """Apply migrations, then run the worker until SIGINT or SIGTERM."""
    # Faust makes its folder under the data directory, but not the data directory itself; only
    # the local hash salt's first write made it, so a worker with TRACKER_HASH_SALT set crashed.
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app, services, store = build_worker(settings)
    _wait_for_topics(settings, app)
    if store is not None:
        applied = store.run_sync(store.migrate_sync)
        log.info(
            "clickhouse ready",
            extra={
                "database": settings.clickhouse_database,
                "applied": applied,
                "embedded": store.embedded,
            },
        )
    worker = _Worker(
        app,
        *services,
        deadline=ShutdownDeadline(settings.shutdown_grace_seconds),
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level, settings.log_repeat_seconds),
        quiet=True,
        redirect_stdouts=False,
    )
    try:
        worker.execute_from_commandline()
    finally:
        if store is not None:
            store.close()
