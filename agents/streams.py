"""The worker's Faust agents: dead letters, calls, identity and journey, each a topic read in
batches through a :class:`~agents.batches.BatchRunner` around its stage's handler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import faust
import orjson

from agents.batches import (
    BatchRunner,
    DeadLetterPolicy,
    acked_batches,
    dead_letter_policy,
    run_batches,
)
from agents.calls import CallsPipeline, PoolAttribution
from agents.customer import rules_from_settings
from agents.forget import ForgottenIdentifiers
from agents.identity import IdentityRules
from agents.ingest import IngestPipeline, RawMessage
from agents.services import PoolReservationsService
from agents.stitching import (
    IdentityStage,
    JourneyStage,
    Outbox,
    StitchRouter,
)
from agents.table_store import STORE_SCHEME
from agents.tickets import TicketsPipeline
from collectors.calls.pools import PoolBook
from tracker.kafka.topology import Topology
from tracker.metrics import WORKER_EVENTS
from tracker.settings import Settings
from tracker.store import ClickHouseStore
from tracker.store.sink import ClickHouseSink, Sink
from tracker.store.tables import (
    ALIASES,
    CALLS,
    CONFLICTS,
    DEAD_LETTERS,
    FRICTIONS,
    JOURNEYS,
    SESSIONS,
    TICKETS,
    TOUCHPOINTS,
    Table,
)

__all__ = [
    "add_calls",
    "add_dead_letters",
    "add_stitching",
    "add_tickets",
    "changelog_known",
    "table_store",
]

log = logging.getLogger(__name__)


def add_dead_letters(
    app: faust.App,
    store: ClickHouseStore,
    topology: Topology,
    settings: Settings,
    pipeline: IngestPipeline,
    lock: asyncio.Lock,
) -> None:
    """Dead letters sent by the collectors, stored through ingest's dead-letter sink; those
    naming a forgotten identifier are not stored again."""
    dead_topic = app.topic(topology.dead_letters.name, value_serializer="raw", key_serializer="raw")
    batch, within = settings.sink_batch_size, settings.sink_flush_seconds

    async def store_dead_letters(events: Sequence[Any]) -> None:
        await pipeline.forgotten.loaded()
        kept = [e for e in events if not _forgotten(pipeline.forgotten, e, text=True)]
        await pipeline.handle_dead_letters([_raw(e) for e in kept])

    dead_letter_runner = BatchRunner(
        "dead_letters",
        store_dead_letters,
        _raw,
        dead_letter_policy(store),
        discard=pipeline.dead_letters.discard,
    )

    @app.agent(dead_topic, name="dead_letters")
    async def dead_letters(stream: Any) -> None:
        async for events in acked_batches(stream, batch, within):
            # Shares ingest's dead-letter sink, so it takes ingest's lock: one batch at a time.
            async with lock:
                await dead_letter_runner.run(events)


def add_calls(
    app: faust.App,
    store: ClickHouseStore,
    topology: Topology,
    settings: Settings,
    touchpoints: StitchRouter,
    forgotten: ForgottenIdentifiers,
    reservations: PoolReservationsService | None,
    book: PoolBook,
) -> None:
    """Calls: callbacks keyed by call; the merged state of each call lives in a changelog-backed
    table. Its changelog is partitioned by the same key, so it follows the calls topic."""
    batch, within = settings.sink_batch_size, settings.sink_flush_seconds
    calls_pipeline = CallsPipeline(
        calls=ClickHouseSink(store, CALLS),
        touchpoints=touchpoints,
        dead_letters=ClickHouseSink(store, DEAD_LETTERS),
        tracking_numbers=settings.call_tracking_numbers,
        forgotten=forgotten,
        pools=PoolAttribution(settings.call_number_pools, book) if reservations else None,
        max_state_bytes=settings.state_max_bytes,
    )
    calls_topic = app.topic(topology.calls.name, value_serializer="raw", key_serializer="raw")
    call_state = app.Table(
        "call_state",
        key_type=str,
        partitions=settings.topic_partitions,
        use_partitioner=True,
        options=table_options(settings),
    )

    async def merge_calls(events: Sequence[Any]) -> None:
        await forgotten.loaded()
        await calls_pipeline.handle([_raw(e) for e in events], call_state)

    calls_runner = BatchRunner(
        "calls", merge_calls, _raw, dead_letter_policy(store), discard=calls_pipeline.discard
    )

    @app.agent(calls_topic, name="calls")
    async def calls(stream: Any) -> None:
        await changelog_known(app, call_state)
        async for events in acked_batches(stream, batch, within):
            if reservations is not None:
                await reservations.caught_up()
            await calls_runner.run(events)


def add_tickets(
    app: faust.App,
    store: ClickHouseStore,
    topology: Topology,
    settings: Settings,
    touchpoints: StitchRouter,
    forgotten: ForgottenIdentifiers,
) -> None:
    """Helpdesk tickets and chats: callbacks keyed by ticket; the merged state of each ticket
    lives in a changelog-backed table partitioned like the tickets topic (agents/tickets.py)."""
    batch, within = settings.sink_batch_size, settings.sink_flush_seconds
    pipeline = TicketsPipeline(
        tickets=ClickHouseSink(store, TICKETS),
        touchpoints=touchpoints,
        dead_letters=ClickHouseSink(store, DEAD_LETTERS),
        forgotten=forgotten,
        max_state_bytes=settings.state_max_bytes,
    )
    topic = app.topic(topology.tickets.name, value_serializer="raw", key_serializer="raw")
    ticket_state = app.Table(
        "ticket_state",
        key_type=str,
        partitions=settings.topic_partitions,
        use_partitioner=True,
        options=table_options(settings),
    )

    async def merge_tickets(events: Sequence[Any]) -> None:
        await pipeline.handle([_raw(e) for e in events], ticket_state)

    runner = BatchRunner(
        "tickets", merge_tickets, _raw, dead_letter_policy(store), discard=pipeline.discard
    )

    @app.agent(topic, name="tickets")
    async def tickets(stream: Any) -> None:
        await changelog_known(app, ticket_state)
        await run_batches(stream, runner, batch, within)


def add_stitching(
    app: faust.App,
    sink: Callable[[Table], Sink],
    letters: Callable[[], DeadLetterPolicy],
    topology: Topology,
    settings: Settings,
    outbox: Outbox,
    forgotten: ForgottenIdentifiers | None = None,
) -> None:
    """The identity agent on the single-partition identity log (only the touchpoints that may
    link identifiers come this way, and splits), and the journey agent keyed by customer, each
    with a changelog-backed table for its state (agents/stitching.py). ``sink`` gives each
    table's sink (ClickHouse, or the outputs topic for a stitch-only worker) and ``letters`` a
    dead-letter policy writing through one."""
    batch, within = settings.sink_batch_size, settings.sink_flush_seconds
    identity_stage = IdentityStage(
        outbox,
        journey_topic=topology.journey.name,
        aliases_topic=topology.aliases.name,
        identities=sink(ALIASES),
        conflicts=sink(CONFLICTS),
        rules=IdentityRules(limits={**IdentityRules().limits, **settings.identity_limits}),
        max_state_bytes=settings.state_max_bytes,
    )
    identity_topic = app.topic(
        topology.identity.name,
        partitions=topology.identity.partitions,
        value_serializer="raw",
        key_serializer="raw",
    )
    identity_links = app.Table(
        "identity_links",
        key_type=str,
        partitions=topology.identity.partitions,
        use_partitioner=True,  # written once per batch, after the events
        options=table_options(settings),
    )

    suppressed = ForgottenIdentifiers() if forgotten is None else forgotten

    async def resolve(events: Sequence[Any]) -> None:
        await suppressed.loaded()
        kept = [e for e in events if not _forgotten(suppressed, e)]  # a replay of a forgotten one
        await identity_stage.handle([(e.value, e.message.offset) for e in kept], identity_links)

    identity_runner = BatchRunner(
        "identity", resolve, _raw, letters(), discard=identity_stage.discard
    )

    @app.agent(identity_topic, name="identity")
    async def identity(stream: Any) -> None:
        await changelog_known(app, identity_links)
        await run_batches(stream, identity_runner, batch, within)

    async def forget_graph(sender: Any, revoked: Any, **kwargs: Any) -> None:
        identity_stage.reset()  # the next owner rebuilds it from the table

    app.on_partitions_revoked.connect(forget_graph)  # type: ignore[arg-type]

    journey_stage = JourneyStage(
        outbox,
        journey_topic=topology.journey.name,
        touchpoints=sink(TOUCHPOINTS),
        sessions=sink(SESSIONS),
        journeys=sink(JOURNEYS),
        frictions=sink(FRICTIONS),
        dead_letters=sink(DEAD_LETTERS),
        rules=rules_from_settings(settings),
    )
    journey_topic = app.topic(
        topology.journey.name,
        partitions=topology.journey.partitions,
        value_serializer="raw",
        key_serializer="raw",  # decoded by the stage: a bad key is a dead letter, not a crash
    )
    journey_state = app.Table(
        "journey_state",
        key_type=str,
        value_type=bytes,  # raw: the stage's own JSON, encoded once (not once per copy)
        partitions=topology.journey.partitions,
        use_partitioner=True,  # batches span partitions: place each key by its own hash
        options=table_options(settings),
    )

    async def stitch(events: Sequence[Any]) -> None:
        await suppressed.loaded()
        kept = [e for e in events if not _forgotten(suppressed, e, keyed=True)]
        await journey_stage.handle(
            [(_customer(e.key), e.value, _raw(e)) for e in kept], journey_state
        )

    journey_runner = BatchRunner("journey", stitch, _raw, letters(), discard=journey_stage.discard)

    @app.agent(journey_topic, name="journey")
    async def journey(stream: Any) -> None:
        await changelog_known(app, journey_state)
        await run_batches(stream, journey_runner, batch, within)


# RocksDB's defaults (64 MiB write buffers, a 2 GiB block cache, per partition) would outgrow the
# heap they replace: a few MiB per partition keep a worker's memory flat.
_ROCKSDB_OPTIONS = {
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 16 * 1024 * 1024,
    "block_cache_compressed_size": 0,
    "max_open_files": 256,
}


def table_store(settings: Settings) -> str:
    """The Faust store URL for the worker's tables (``TRACKER_TABLE_STORE``)."""
    return f"{STORE_SCHEME}://" if settings.table_store == "rocksdb" else "memory://"


def table_options(settings: Settings) -> dict[str, Any]:
    """Per-table store options: a fresh dict each time, since Faust's store consumes it."""
    return dict(_ROCKSDB_OPTIONS) if settings.table_store == "rocksdb" else {}


async def changelog_known(app: faust.App, table: Any) -> None:
    """Tables placed by key hash need their changelog's partitions in the producer's metadata,
    which a topic Faust has only just created may not be in yet: wait for it."""
    producer = app.producer._ensure_producer()  # type: ignore[attr-defined]
    await producer.partitions_for(table.changelog_topic.get_topic_name())


def _forgotten(
    forgotten: ForgottenIdentifiers, event: Any, text: bool = False, keyed: bool = False
) -> bool:
    """Whether a record names a forgotten identifier (or, ``keyed`` by customer, is a forgotten
    customer's); counted as ingest counts its drops."""
    value = event.value or b""
    if text:
        named = forgotten.names_text(value.decode(errors="replace"))
    else:
        named = forgotten.names_record(value)
    if keyed and not named and len(forgotten):
        with contextlib.suppress(orjson.JSONDecodeError, TypeError):
            named = forgotten.names_customer(_customer(event.key))
    if named:
        WORKER_EVENTS.labels("forgotten").inc()
    return named


def _raw(event: Any) -> RawMessage:
    message = event.message
    return RawMessage(event.value or b"", message.topic, message.partition, message.offset)


def _customer(key: bytes | None) -> str:
    """A journey record's key: the customer id, as JSON (:func:`agents.stitching.journey_key`)."""
    customer = orjson.loads(key or b"")
    if not isinstance(customer, str):
        raise TypeError(f"a journey record's key must be a customer id, got {customer!r}")
    return customer
