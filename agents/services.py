"""The worker's long-running services beside its Faust agents: the batch consumers of the raw
and click topics (and, for the write role, of the stitch workers' outputs), forgetting, the
number-pool and alias followers, and the console (or, for a stitch-only worker, its health)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from mode import Service

from agents.batches import BatchRunner, Checkpoint, DeadLetterPolicy
from agents.clicks import expand_batches
from agents.forget import (
    AUDIT_COLUMNS,
    ForgottenIdentifiers,
    Person,
    StateKeys,
    audit_row,
    customer_key,
    erase_person,
    find_person,
    state_keys,
)
from agents.identity import AliasReplica
from agents.ingest import IngestPipeline, RawMessage
from agents.outputs import Writer, touchpoints_in
from collectors.calls.pools import PoolBook
from tracker.console import create_console
from tracker.errors import BackpressureError
from tracker.http import add_health_routes
from tracker.kafka import clients as kafka_clients
from tracker.kafka.compacted import CompactedState
from tracker.kafka.probe import KafkaProbe
from tracker.metrics import WORKER_LAG, WORKER_PARTITION_LAG
from tracker.privacy import identifier_keys
from tracker.settings import Settings
from tracker.store import ClickHouseStore

__all__ = [
    "AliasReplicaService",
    "BatchIngestService",
    "ClickBatchService",
    "ConsoleService",
    "ForgetService",
    "ForgottenFollower",
    "HealthService",
    "PoolReservationsService",
    "RawIngestService",
    "WriterService",
    "partition_lag",
]

log = logging.getLogger(__name__)


class BatchIngestService(Service):
    """Reads one topic in batches (flushed on size or time) and commits only what is stored.

    Every such service of a worker shares one lock, held while a batch is written: they share the
    pipeline's sinks, and a forget waits for the batch being written. ``pipeline`` is the ingest
    pipeline the raw and click topics go through (none for the writer of outputs)."""

    group_suffix = "ingest"
    stage = "ingest"
    max_poll_records: int | None = None

    def __init__(
        self,
        settings: Settings,
        topic: str,
        pipeline: IngestPipeline | None,
        dead_letters: DeadLetterPolicy,
        lock: asyncio.Lock | None = None,
        **kwargs: Any,
    ) -> None:
        self._settings = settings
        self._topic = topic
        self._pipeline = pipeline
        self._runner = BatchRunner(
            self.stage,
            self.handle,
            _source,
            dead_letters,
            discard=self.discard,
            stopping=lambda: self.should_stop,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._idle = asyncio.Event()  # set whenever no batch is in hand
        self._idle.set()
        self._lag_labels: set[tuple[str, str]] = set()
        self.lock = lock or asyncio.Lock()
        self.consuming = False
        super().__init__(**kwargs)

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def assigned(self) -> bool:
        """Whether the group gave this worker any partition of the topic."""
        return self._consumer is not None and bool(self._consumer.assignment())

    @property
    def pipeline(self) -> IngestPipeline:
        if self._pipeline is None:
            raise TypeError(f"{type(self).__name__} has no ingest pipeline")
        return self._pipeline

    async def handle(self, records: Sequence[Any]) -> None:
        raise NotImplementedError

    def discard(self) -> None:
        """Forget what a failed attempt left in memory, before the batch runner tries again."""
        if self._pipeline is not None:
            self._pipeline.discard()

    def weight(self, record: Any) -> int:
        """How many events a record holds, towards the batch size."""
        return 1

    async def on_start(self) -> None:
        self._consumer = kafka_clients.consumer(
            self._settings,
            self._topic,
            group_id=f"{self._settings.worker_id}.{self.group_suffix}",
            client_id=f"{self._settings.worker_id}-{self.group_suffix}",
            max_poll_records=self.max_poll_records or self._settings.sink_batch_size,
        )
        await self._consumer.start()
        self.consuming = True

    async def on_stop(self) -> None:
        """Graceful: the batch in hand is written and committed before the consumer leaves."""
        self.consuming = False
        # Half the grace period; the process ends at the whole one (tracker/shutdown.py).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._idle.wait(), timeout=self._settings.shutdown_grace_seconds / 2
            )
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
        if not records:
            return
        if self._pipeline is not None:  # never store what a forget suppressed
            await self._pipeline.forgotten.loaded()

        async def handle(batch: Sequence[Any]) -> None:
            async with self.lock:
                await self._runner.run(batch)

        async def commit(batch: Sequence[Any]) -> None:
            # Only now are the events stored; a crash before this replays them, harmlessly.
            last: dict[TopicPartition, int] = {}
            for record in batch:
                last[TopicPartition(record.topic, record.partition)] = record.offset + 1
            try:
                await consumer.commit(last)
            except CommitFailedError as exc:  # rebalanced meanwhile: the new owner skips them
                log.warning("offset commit failed after a rebalance", extra={"error": str(exc)})

        try:
            await Checkpoint(commit).run(records, handle)
        except Exception:
            if self.should_stop:  # stopped while Kafka or ClickHouse was away: replayed
                return
            raise

    @Service.timer(10.0)
    async def _record_lag(self) -> None:
        """Records on Kafka not yet stored, per partition, on a timer of its own so that it keeps
        counting while a ClickHouse outage holds the ingest loop."""
        consumer = self._consumer
        partitions = list(consumer.assignment()) if consumer is not None else []
        if consumer is None:
            return
        try:
            ends = await consumer.end_offsets(partitions) if partitions else {}
            starts = await consumer.beginning_offsets(partitions) if partitions else {}
            lags = {p: partition_lag(ends[p], await consumer.committed(p), starts[p]) for p in ends}
        except KafkaError as exc:
            log.warning("could not measure lag", extra={"error": str(exc)})
            return
        labels = {(p.topic, str(p.partition)): lag for p, lag in lags.items()}
        for gone in self._lag_labels - labels.keys():  # moved to another worker
            WORKER_PARTITION_LAG.remove(*gone)
        for label, lag in labels.items():
            WORKER_PARTITION_LAG.labels(*label).set(lag)
        self._lag_labels = set(labels)
        self.record_lag(sum(lags.values()))

    def record_lag(self, lag: int) -> None:
        return None

    async def _next_batch(self, consumer: AIOKafkaConsumer) -> list[Any]:
        size, loop = self._settings.sink_batch_size, asyncio.get_running_loop()
        deadline = loop.time() + self._settings.sink_flush_seconds
        records: list[Any] = []
        events = 0
        while events < size and not self.should_stop:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            fetched = await consumer.getmany(
                timeout_ms=int(remaining * 1000),
                max_records=min(size - events, self.max_poll_records or size),
            )
            for partition_records in fetched.values():
                records.extend(partition_records)
                events += sum(self.weight(record) for record in partition_records)
        return records


def partition_lag(end: int, committed: int | None, start: int) -> int:
    """Records of a partition not yet handled. Where retention deleted records never committed
    (or nothing was committed yet), handling starts at the log start, not at offset 0."""
    return max(end - max(committed or 0, start), 0)


class RawIngestService(BatchIngestService):
    """The raw topic: touchpoints from the beacon and the calls collector, one per record."""

    async def handle(self, records: Sequence[Any]) -> None:
        await self.pipeline.handle_touchpoints(
            [RawMessage(r.value, r.topic, r.partition, r.offset) for r in records]
        )

    def record_lag(self, lag: int) -> None:
        WORKER_LAG.set(lag)


class ClickBatchService(BatchIngestService):
    """Short-link click batches: each record holds many clicks, expanded into ``link_click``
    touchpoints that go through the same pipeline, and so the same sink, as the raw topic's."""

    group_suffix = "clicks"
    stage = "clicks"
    # A record holds up to 1,024 clicks: fetch a few at a time, and count the clicks in them.
    max_poll_records = 16

    def weight(self, record: Any) -> int:
        for name, value in record.headers or ():
            if name == "clicks":
                with contextlib.suppress(ValueError):
                    return max(1, int(value))
        return 1

    async def handle(self, records: Sequence[Any]) -> None:
        touchpoints, rejected = expand_batches(
            [RawMessage(r.value, r.topic, r.partition, r.offset) for r in records],
            self._settings.hash_salt.value,
            self._settings.pii_rules,
        )
        await self.pipeline.handle_decoded(touchpoints, rejected)


class WriterService(BatchIngestService):
    """The write role: what stitch workers hand over on the outputs topic, stored in ClickHouse a
    batch at a time (agents/outputs.py), the offsets committed only after the insert."""

    group_suffix = "writer"
    stage = "write"

    def __init__(
        self,
        settings: Settings,
        topic: str,
        writer: Writer,
        dead_letters: DeadLetterPolicy,
        **kwargs: Any,
    ) -> None:
        self._writer = writer
        super().__init__(settings, topic, None, dead_letters, **kwargs)

    def weight(self, record: Any) -> int:
        # Sized in touchpoints, as an all-in-one worker's batches are: the sessions, journeys and
        # frictions each one brings ride along, so an insert costs the same per event.
        return touchpoints_in(record.key, record.headers)

    async def handle(self, records: Sequence[Any]) -> None:
        await self._writer.handle([_source(r) for r in records])

    def discard(self) -> None:
        self._writer.discard()

    def record_lag(self, lag: int) -> None:
        WORKER_LAG.set(lag)


class ForgottenFollower(Service):
    """The forgotten identifiers, followed from their compacted topic, for a worker that serves
    no forgets (a stitch-only worker: the writer's console serves them, and erases)."""

    def __init__(
        self, settings: Settings, topic: str, forgotten: ForgottenIdentifiers, **kwargs: Any
    ) -> None:
        self._log = CompactedState(
            settings,
            [topic],
            lambda _topic, key, _value: forgotten.add(key),
            what="forgotten identifiers",
            client_id=f"{settings.worker_id}-forgotten",
            writes=False,
        )
        self._forgotten = forgotten
        super().__init__(**kwargs)

    @property
    def loaded(self) -> bool:
        return self._log.loaded

    async def on_start(self) -> None:
        await self._log.start()
        await self._log.caught_up()
        self._forgotten.mark_loaded()  # the stages wait for it before passing anything on

    async def on_stop(self) -> None:
        await self._log.stop()


class HealthService(Service):
    """What a stitch-only worker serves instead of the console (it holds no ClickHouse):
    ``/healthz``, ``/readyz`` and ``/metrics`` on ``TRACKER_WORKER_HEALTH_PORT``."""

    def __init__(
        self,
        settings: Settings,
        ingest: Sequence[BatchIngestService],
        forgotten: ForgottenFollower,
        **kwargs: Any,
    ) -> None:
        self._settings = settings
        self._ingest = ingest
        self._forgotten = forgotten
        self._runner: web.AppRunner | None = None
        self._kafka = KafkaProbe(settings, client_id=settings.worker_id)
        self.started_agents = False
        super().__init__(**kwargs)

    def unready(self) -> list[str]:
        reasons = [] if self._kafka.reachable else [self._kafka.reason]
        if not self.started_agents:
            reasons.append("the stream agents are starting")
        reasons.extend(
            f"the consumer of {service.topic} is starting"
            for service in self._ingest
            if not service.consuming
        )
        if not self._forgotten.loaded:
            reasons.append("the forgotten identifiers are still loading from Kafka")
        return reasons

    async def on_start(self) -> None:
        await self._kafka.start()
        app = web.Application()
        add_health_routes(app, self.unready)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = self._settings.worker_health_port
        await web.TCPSite(self._runner, self._settings.console_host, port).start()
        log.info("worker health listening", extra={"port": port, "role": "stitch"})

    async def on_stop(self) -> None:
        await self._kafka.stop()
        if self._runner is not None:
            await self._runner.cleanup()


class ForgetService(Service):
    """Keeps the forgotten identifiers current from their compacted topic, and carries out
    forgets asked for on the console (agents/forget.py): the person found, every identifier of
    theirs suppressed first, then their rows erased, the state keys naming them tombstoned, and
    the erasure audited."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        store: ClickHouseStore,
        forgotten: ForgottenIdentifiers,
        ingest: BatchIngestService,
        aliases_topic: str = "",
        reservations_topic: str = "",
        book: PoolBook | None = None,
        **kwargs: Any,
    ) -> None:
        self._settings = settings
        self._topic = topic
        self._store = store
        self._forgotten = forgotten
        self._ingest = ingest
        # Faust names a table's changelog <app id>-<table>-changelog; the app id is the worker id.
        self._state_topics = {
            "journey_state": f"{settings.worker_id}-journey_state-changelog",
            "identity_links": f"{settings.worker_id}-identity_links-changelog",
            "call_state": f"{settings.worker_id}-call_state-changelog",
            "ticket_state": f"{settings.worker_id}-ticket_state-changelog",
            "aliases": aliases_topic,
        }
        self._reservations_topic = reservations_topic
        self._book = book
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.loaded = False
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        self._producer = kafka_clients.producer(
            self._settings, f"{self._settings.worker_id}-forget"
        )
        await self._producer.start()
        consumer = kafka_clients.consumer(
            self._settings, client_id=f"{self._settings.worker_id}-forgotten"
        )
        await consumer.start()
        partitions = [TopicPartition(self._topic, p) for p in await self._partitions(consumer)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while [p for p, end in ends.items() if await consumer.position(p) < end]:
            self._remember(await consumer.getmany(timeout_ms=500))
        self._consumer = consumer
        self.loaded = True
        self._forgotten.mark_loaded()
        log.info("forgotten identifiers loaded", extra={"count": len(self._forgotten)})

    async def _partitions(self, consumer: AIOKafkaConsumer) -> set[int]:
        for _ in range(50):
            found = consumer.partitions_for_topic(self._topic)
            if found:
                return set(found)
            await consumer._client.force_metadata_update()  # the topic was just created
            await asyncio.sleep(0.1)
        raise KafkaError(f"topic {self._topic} has no partitions")

    async def on_stop(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()

    @Service.task
    async def _follow(self) -> None:
        """Forgets made through other workers reach this one within a poll."""
        while not self.should_stop:
            if self._consumer is None:
                await asyncio.sleep(0.1)
                continue
            self._remember(await self._consumer.getmany(timeout_ms=1000))

    def _remember(self, fetched: dict[Any, list[Any]]) -> None:
        for records in fetched.values():
            for record in records:
                self._forgotten.add(record.key.decode())

    async def forget(
        self, identifier: str, identifier_only: bool = False, requested_by: str = "console"
    ) -> dict[str, Any]:
        """Forget the person ``identifier`` resolves to (only that identifier with
        ``identifier_only``). Raises ``InvalidIdentifier`` for a malformed identifier,
        ``BackpressureError`` when Kafka does not take the suppression (nothing is erased then),
        a retriable ``StoreError`` when ClickHouse cannot answer (asking again is safe)."""
        # During a salt rotation an email or phone may be stored under either salt's hash.
        keys = identifier_keys(
            identifier, self._settings.hash_salts, self._settings.default_phone_region
        )
        kind = keys[0].split(":", 1)[0]
        if identifier_only:
            person, state = Person(frozenset(keys)), StateKeys()
        else:
            person = await find_person(self._store, keys)
            state = await state_keys(self._store, person)  # read before the rows go
        await self._suppress(person.keys | {customer_key(c) for c in person.customers})
        async with self._ingest.lock:  # a batch being written now cannot land after the erase
            rows = await erase_person(self._store, person)
        tombstones = await self._tombstone(state, person)
        scope = "identifier" if identifier_only else "person"
        await self._store.insert(
            "forget_audit",
            [audit_row(requested_by, kind, scope, person, rows, tombstones)],
            AUDIT_COLUMNS,
        )
        # Rows still on their way through stitching when the erase ran land within a batch or
        # two; other workers learn of the suppression within a poll. Erase once more after.
        self.add_future(self._erase_again(person))
        log.info(
            "forgot a person" if not identifier_only else "forgot an identifier",
            extra={
                "kind": kind,
                "requested_by": requested_by,
                "identifiers": len(person.keys),
                "rows": sum(rows.values()),
            },
        )
        return {
            "identifier": kind + ":…",
            "scope": scope,
            "identifiers": len(person.keys),
            "customers": len(person.customers),
            "touchpoints": rows["touchpoints"],
            "dead_letters": rows["dead_letters"],
            "rows": rows,
            "state_tombstones": tombstones,
        }

    async def _suppress(self, keys: Collection[str]) -> None:
        """Every key on the forgotten topic, acknowledged, before anything is erased: from then
        on no worker stores an event naming one of them, whatever replays."""
        assert self._producer is not None
        at = datetime.now(UTC).isoformat()
        try:
            sent = [
                await self._producer.send(
                    self._topic,
                    orjson.dumps({"identifier": key, "forgotten_at": at}),
                    key=key.encode(),
                )
                for key in sorted(keys)
            ]
            await asyncio.gather(*sent)
        except KafkaError as exc:
            raise BackpressureError(
                f"Kafka did not take the forget: {exc!r}", self._settings.retry_after_seconds
            ) from exc
        for key in keys:
            self._forgotten.add(key)

    async def _tombstone(self, state: StateKeys, person: Person) -> dict[str, int]:
        """Compacted tombstones for the state keys naming the person: compaction removes what
        Kafka kept of them, and a worker recovering a table never reads them back."""
        assert self._producer is not None
        records: list[tuple[str, bytes]] = [
            (self._state_topics[name], key)
            for name, keys in (
                ("journey_state", state.journey_state),
                ("identity_links", state.identity_links),
                ("call_state", state.call_state),
                ("ticket_state", state.ticket_state),
                ("aliases", state.aliases),
            )
            if self._state_topics[name]
            for key in sorted(keys)
        ]
        counts = {n: c for n, c in state.counts().items() if self._state_topics[n]}
        if self._book is not None and self._reservations_topic:
            claims = self._book.keys_held_by(set(person.values("anon")))
            records += [(self._reservations_topic, claim.encode()) for claim in claims]
            counts["pool_reservations"] = len(claims)
        try:
            sent = [await self._producer.send(t, None, key=k) for t, k in records]
            await asyncio.gather(*sent)
        except KafkaError as exc:  # the rows are gone and suppressed; the audit says so
            log.warning(
                "could not tombstone a forgotten person's state", extra={"error": repr(exc)}
            )
            return {name: 0 for name in counts}
        return counts

    async def _erase_again(self, person: Person) -> None:
        await asyncio.sleep(30)
        await erase_person(self._store, person)


class PoolReservationsService(Service):
    """Every number-pool reservation, followed from the compacted reservations topic.

    Each worker reads the whole topic (it has one partition, and no consumer group), so whichever
    worker merges a call sees every reservation, however the calls' partitions are spread.
    """

    def __init__(self, settings: Settings, topic: str, book: PoolBook, **kwargs: Any) -> None:
        self._settings = settings
        self._log = CompactedState(
            settings,
            [topic],
            lambda _topic, key, value: book.apply_record(key, value),
            what="number reservations",
            client_id=f"{settings.worker_id}-reservations",
            writes=False,
        )
        super().__init__(**kwargs)

    @property
    def loaded(self) -> bool:
        return self._log.loaded

    async def on_start(self) -> None:
        await self._log.start()

    async def on_stop(self) -> None:
        await self._log.stop()

    async def caught_up(self) -> None:
        """Return once every reservation in Kafka now is applied. A beacon answers a number only
        after Kafka has its reservation, so a call to that number, merged after this, sees it."""
        while True:
            try:
                async with asyncio.timeout(self._settings.produce_timeout_seconds * 2):
                    await self._log.caught_up()
                return
            except (KafkaError, TimeoutError) as exc:
                log.warning("number reservations are behind; waiting", extra={"error": repr(exc)})


class AliasReplicaService(Service):
    """This worker's replica of the identity aliases, followed from their compacted topic, so
    that ingest sends most touchpoints straight to their customer (agents/stitching.py,
    ``StitchRouter``). Every worker reads the whole topic (no consumer group)."""

    def __init__(
        self, settings: Settings, topic: str, replica: AliasReplica, **kwargs: Any
    ) -> None:
        self._loaded = asyncio.Event()
        self._log = CompactedState(
            settings,
            [topic],
            replica.apply,
            what="identity aliases",
            client_id=f"{settings.worker_id}-aliases",
            writes=False,
            on_loaded=self._loaded.set,
        )
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self._log.start()

    async def on_stop(self) -> None:
        await self._log.stop()

    async def loaded(self) -> None:
        """Return once the topic as it stood at start is applied: before that, the replica
        would route events its identifiers have long left, and the journey step would have to
        pass each on."""
        await self._loaded.wait()


class ConsoleService(Service):
    """Serves the console on the worker's event loop, next to the ClickHouse engine it reads."""

    def __init__(
        self,
        settings: Settings,
        store: ClickHouseStore,
        ingest: Sequence[BatchIngestService],
        forget: ForgetService,
        reservations: PoolReservationsService | None = None,
        **kwargs: Any,
    ) -> None:
        self._settings = settings
        self._store = store
        self._ingest = ingest
        self._forget = forget
        self._reservations = reservations
        self._runner: web.AppRunner | None = None
        self._kafka = KafkaProbe(settings, client_id=settings.worker_id)
        self.started_agents = False
        super().__init__(**kwargs)

    async def unready(self) -> list[str]:
        """What keeps the worker from its work, for /readyz; none when it is ready."""
        reasons = [] if self._kafka.reachable else [self._kafka.reason]
        if not self.started_agents:
            reasons.append("the stream agents are starting")
        for service in self._ingest:
            if not service.consuming:
                reasons.append(f"the consumer of {service.topic} is starting")
        raw = self._ingest[0]
        if raw.consuming and not raw.assigned:
            reasons.append(
                f"no partition of {raw.topic} is assigned to this worker (a rebalance is under "
                "way, or there are more workers than partitions)"
            )
        if not self._forget.loaded:
            reasons.append("the forgotten identifiers are still loading from Kafka")
        if self._reservations is not None and not self._reservations.loaded:
            reasons.append("the number pool reservations are still loading from Kafka")
        try:
            async with asyncio.timeout(self._settings.produce_timeout_seconds):
                answers = await self._store.ping()
        except TimeoutError:
            answers = False
        if not answers:
            reasons.append("ClickHouse does not answer (see TRACKER_CLICKHOUSE_URL)")
        for table, error in sorted(self._store.write_faults().items()):
            reasons.append(f"ClickHouse refuses writes to {table}, retrying: {error}")
        return reasons

    async def on_start(self) -> None:
        await self._kafka.start()
        console = create_console(self._settings, self._store, self.unready, self._forget.forget)
        self._runner = web.AppRunner(console, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.console_host, self._settings.console_port)
        await site.start()
        log.info(
            "console listening",
            extra={"host": self._settings.console_host, "port": self._settings.console_port},
        )

    async def on_stop(self) -> None:
        await self._kafka.stop()
        if self._runner is not None:
            await self._runner.cleanup()


def _source(record: Any) -> RawMessage:
    """Where a record read by a :class:`BatchIngestService` came from, for its dead letter."""
    return RawMessage(record.value or b"", record.topic, record.partition, record.offset)
