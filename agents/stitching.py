"""Stitching: touchpoints joined into customers and journeys as they arrive.

Ingest hands each touchpoint to :class:`StitchRouter`: an event that may link identifiers not
yet seen together takes the identity log; any other goes straight to step 2, keyed by its
customer as this worker's :class:`~agents.identity.AliasReplica` knows it, with the position of
the alias it was routed by. The flow, in two steps after ingest:

1. **Identity.** The identity log is a single-partition topic, so every identity change has one
   order. :class:`IdentityStage`
   resolves the event's identifiers to a customer (:mod:`agents.identity`), publishes the
   identifiers whose customer changed as versioned alias records (a compacted topic and
   ClickHouse ``identities``), and forwards the event to the journey topic keyed by its
   customer. When a link moves identifiers to another customer it first sends a *regroup*
   to the customer they left, on the same ordered path as that customer's events.
2. **Journey.** :class:`JourneyStage` keeps each customer's :class:`CustomerJourney` and writes
   the stitched touchpoint (customer, session, stage, sequence number), sessions, frictions and
   the journey summary. A regroup sends the moved events on to their new customer as a
   *restitch*, which rebuilds that customer's sessions and summary without rewriting the
   touchpoints already written: earlier touchpoints re-attribute at query time through
   ``identities``.

Both steps write outputs first and state last, and the worker acknowledges a batch only after
both: a crash replays the batch from the state before it, and sinks skip what had landed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from mode import Service

from agents.batches import is_record_refused
from agents.customer import CustomerJourney, History, JourneyRules, StoredEvent, friction_id
from agents.enrich import acquisition_channel
from agents.identity import (
    AliasReplica,
    Identifier,
    IdentityResolver,
    IdentityRules,
    Link,
    alias_record,
    customer_id_for,
    identifiers_of,
    link_key,
    link_record,
)
from agents.ingest import RawMessage, undeliverable
from agents.journey import Friction, JourneyEvent, Session, name_uuid
from tracker.errors import StateTooLarge
from tracker.identity_log import split_command
from tracker.kafka import clients as kafka_clients
from tracker.metrics import (
    IDENTITY_CONFLICTS,
    JOURNEY_LATE_EVENTS,
    STITCH_EVENTS,
    STITCH_ROUTES,
    WORKER_EVENTS,
    observe_stage_lag,
)
from tracker.records import (
    Alias,
    EnrichedTouchpoint,
    FrictionRecord,
    IdentityConflict,
    JourneySummary,
    Regroup,
    Restitch,
    RoutedEvent,
    SessionRecord,
    journey_command,
)
from tracker.settings import Settings
from tracker.store.sink import FlushResult, Sink
from tracker.store.tables import JOURNEYS

__all__ = [
    "IdentityStage",
    "JourneyStage",
    "Outbox",
    "Outgoing",
    "StitchRouter",
    "journey_event",
    "journey_key",
    "split_command",
]

log = logging.getLogger(__name__)

_CONFLICT_NAMESPACE: Final = uuid.UUID("0d4e2b7a-8c31-4f5e-b6a9-2e7c1d3f5a80")
_FRICTION_ROW_NAMESPACE: Final = uuid.UUID("5e0b6c1d-9a2f-4d7e-8b3c-6f1a2e9d4c57")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


# -- what the journey rules read of a touchpoint ------------------------------------------


def journey_event(t: EnrichedTouchpoint) -> JourneyEvent:
    """The fields of a touchpoint the journey rules read."""
    properties = t.properties
    status = properties.get("status_code", "")
    return JourneyEvent(
        event_id=t.event_id,
        ts=t.ts,
        type=t.type,
        channel=t.channel,
        source=t.source,
        name=t.name,
        page_path=t.page_path,
        campaign=t.campaign_name,
        value=t.value,
        status_code=int(status) if status.isdigit() else None,
        queue=properties.get("queue", ""),
        disposition=properties.get("disposition", ""),
        queue_wait_seconds=_number(properties.get("queue_seconds")),
        hold_seconds=_number(properties.get("hold_seconds")),
        transfers=int(_number(properties.get("transfers"))),
        cold_transfers=1 if properties.get("transfer_kind") == "cold" else 0,
        survey_kind=t.survey_kind,
        survey_score=t.survey_score,
        acquisition=acquisition_channel(
            t.channel,
            t.source,
            t.campaign_medium,
            bool(t.ad_click_ids),
            t.referrer_host,
            t.page_host,
        ),
        survey_touchpoint_id=t.survey_touchpoint_id,
        is_bot=bool(t.is_bot),
        first_reply_seconds=_optional_number(properties.get("first_reply_seconds")),
        resolution_seconds=_optional_number(properties.get("resolution_seconds")),
        reopens=int(_number(properties.get("reopens"))),
        call_topics=tuple(t for t in properties.get("topics", "").split(",") if t),
    )


def _place(place: Sequence[Any] | None) -> tuple[Any, ...]:
    """A friction's place as columns; one remembered before is_bot was kept is no bot's."""
    channel, kind, name, stage, *rest = place or ("", "", "", "")
    return (channel, kind, name, stage, bool(rest[0]) if rest else False)


def _optional_number(text: str | None) -> float | None:
    return _number(text) if text else None


def _number(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


# -- producing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


def journey_key(customer_id: str) -> bytes:
    """Journey records are keyed as Faust keys a ``str`` table, so that a customer's records
    and its table entry's changelog land on the same partition."""
    return orjson.dumps(customer_id)


class Outbox(Service):
    """The worker's own idempotent producer. ``send_all`` returns once Kafka has acknowledged
    every record, retrying while Kafka is away: an outage delays, never loses."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._producer_ready = asyncio.Event()
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        self._producer = kafka_clients.producer(
            self._settings,
            f"{self._settings.worker_id}-outbox",
            linger_ms=5,
            max_batch_size=1_048_576,
        )
        await self._producer.start()
        self._producer_ready.set()

    async def on_stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def send_all(self, records: Sequence[Outgoing]) -> None:
        """Raises when Kafka refuses a record for what it is (too large, say): retrying cannot
        mend that, and the batch runner finds the record (agents/batches.py)."""
        backoff = 0.2
        while True:
            await self._producer_ready.wait()
            assert self._producer is not None
            futures: list[asyncio.Future[Any]] = []
            try:
                for r in records:
                    futures.append(
                        await self._producer.send(
                            r.topic, r.value, key=r.key, headers=list(r.headers) or None
                        )
                    )
                await asyncio.gather(*futures)
                return
            except KafkaError as exc:
                for future in futures:  # their errors are this one's; don't log them again
                    if future.done() and not future.cancelled():
                        future.exception()
                if is_record_refused(exc):
                    raise
                log.warning(
                    "kafka refused a forward; retrying",
                    extra={"records": len(records), "error": str(exc), "retry_in": backoff},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)


class StitchRouter:
    """A :class:`Sink` that hands ingest's touchpoints to stitching, each by one of two paths.

    An event that could change the identity graph (identifiers not yet seen together) goes to
    the identity log, whose one order decides every change. Any other event goes straight to the
    journey topic, keyed by its customer as ``replica`` knows it, in the same record the identity
    step would have sent: its primary identifier and the position of the decision it was routed
    by. ``ready`` is awaited before routing: the replica has loaded the aliases topic.
    """

    def __init__(
        self,
        outbox: Outbox,
        identity_topic: str,
        journey_topic: str,
        replica: AliasReplica,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._outbox = outbox
        self._identity_topic = identity_topic
        self._journey_topic = journey_topic
        self._replica = replica
        self._ready = ready
        self._rows: dict[tuple[str, int], EnrichedTouchpoint] = {}

    def add(self, key: str, ts: datetime, record: EnrichedTouchpoint, version: int = 0) -> None:
        self._rows.setdefault((key, version), record)

    def discard(self) -> None:
        self._rows = {}

    async def flush(self) -> FlushResult:
        if self._ready is not None and self._rows:
            await self._ready()
        rows, self._rows = self._rows, {}
        outgoing = [self.route(row) for row in rows.values()]
        await self._outbox.send_all(outgoing)
        ordered = sum(1 for record in outgoing if record.topic == self._identity_topic)
        STITCH_ROUTES.labels("ordered").inc(ordered)
        STITCH_ROUTES.labels("direct").inc(len(outgoing) - ordered)
        return FlushResult(written=0, duplicates=0, forwarded=len(rows))

    def route(self, touchpoint: EnrichedTouchpoint) -> Outgoing:
        """The record that carries ``touchpoint`` on: to the identity log, or to its customer."""
        stitch = touchpoint.may_stitch
        ids = _identifiers(touchpoint) if stitch else []  # no consent: never joined to anyone
        route = self._replica.route(touchpoint.event_id, touchpoint.ts, ids)
        if route is None:
            return Outgoing(
                self._identity_topic, touchpoint.event_id.encode(), touchpoint.to_wire()
            )
        return Outgoing(
            self._journey_topic,
            journey_key(route.customer_id),
            RoutedEvent.encode(route.primary, route.position, stitch, touchpoint.to_wire()),
        )


def _identifiers(t: EnrichedTouchpoint) -> list[Identifier]:
    return identifiers_of(
        t.anonymous_id, t.user_id, t.email_hash, t.phone_hash, t.click_id, t.properties
    )


# -- step 1: identity --------------------------------------------------------------------------


class IdentityStage:
    """Resolves each event of the identity log. ``links`` is where the links and splits that
    changed anything are kept (a changelog-backed table in the worker); the resolver is rebuilt
    from it after a restart or a rebalance (:meth:`reset`)."""

    def __init__(
        self,
        outbox: Outbox,
        journey_topic: str,
        aliases_topic: str,
        identities: Sink,
        conflicts: Sink,
        rules: IdentityRules | None = None,
        max_state_bytes: int = 262_144,
    ) -> None:
        self._outbox = outbox
        self._journey_topic = journey_topic
        self._aliases_topic = aliases_topic
        self._identities = identities
        self._conflicts = conflicts
        self._rules = rules
        self._max_state_bytes = max_state_bytes
        self._resolver: IdentityResolver | None = None

    def reset(self) -> None:
        self._resolver = None

    def discard(self) -> None:
        """Forget a failed attempt: its rows, and the graph it grew ahead of the saved links."""
        self.reset()
        self._identities.discard()
        self._conflicts.discard()

    def _loaded(self, links: Mapping[str, Any]) -> IdentityResolver:
        if self._resolver is None:
            resolver = IdentityResolver(self._rules)
            for key, saved in sorted(links.items()):
                if key.startswith("split|"):
                    left, right = (_identifier(k) for k in saved)
                    resolver.split(left, right)
                else:
                    event_id, ts, keys = saved
                    resolver.resolve(
                        event_id, datetime.fromisoformat(ts), [_identifier(k) for k in keys]
                    )
            self._resolver = resolver
            log.info("identity graph loaded", extra={"links": len(links)})
        return self._resolver

    async def handle(
        self, records: Sequence[tuple[bytes, int]], links: MutableMapping[str, Any]
    ) -> None:
        """``records`` are (value, offset) of the identity log, in order."""
        resolver = self._loaded(links)
        outgoing: list[Outgoing] = []
        saved: dict[str, Any] = {}
        for value, offset in records:
            wire = orjson.loads(value)
            if "split" in wire:
                left, right = (_identifier(k) for k in wire["split"])
                resolution = resolver.split(left, right)
                saved["split|" + "|".join(sorted(wire["split"]))] = sorted(wire["split"])
                ts = datetime.fromisoformat(wire["requested_at"])
                event: bytes | None = None
            else:
                observe_stage_lag("identity", (wire.get("received_ts"),))
                properties = wire["properties"]
                ids = identifiers_of(
                    wire["anonymous_id"],
                    wire["user_id"],
                    wire["email_hash"],
                    wire["phone_hash"],
                    wire["click_id"],
                    properties,
                )
                ts = datetime.fromisoformat(wire["ts"])
                if wire["consent_analytics"] is False:
                    ids = []  # no consent to analytics: stored, never joined to anyone
                link = Link.of(wire["event_id"], ts, ids)
                if resolver.is_new(link):
                    keys = [i.key for i in link.identifiers]
                    key, kept = "|".join(keys), [link.event_id, ts.isoformat(), keys]
                    size = len(key.encode()) + len(orjson.dumps(kept))
                    if size > self._max_state_bytes:
                        raise StateTooLarge(
                            "the event's identity link", size, self._max_state_bytes
                        )
                    saved[key] = kept
                    # Every worker learns that this set is known from now on: its later events
                    # take the direct path (AliasReplica.route).
                    outgoing.append(
                        Outgoing(
                            self._aliases_topic,
                            link_key(link.identifiers).encode(),
                            link_record(link, offset),
                        )
                    )
                resolution = resolver.resolve(wire["event_id"], ts, ids)
                event = value
            for before, moves in resolution.moves.items():
                outgoing.append(
                    Outgoing(
                        self._journey_topic, journey_key(before), Regroup(moves, offset).to_wire()
                    )
                )
            for identifier, customer in resolution.replicated.items():
                outgoing.append(
                    Outgoing(
                        self._aliases_topic,
                        identifier.key.encode(),
                        alias_record(identifier, customer, offset),
                    )
                )
            for identifier, customer in resolution.aliases.items():
                self._identities.add(
                    identifier.key, ts, _alias(identifier, customer, offset, ts), offset
                )
            IDENTITY_CONFLICTS.inc(len(resolution.conflicts))
            for conflict in resolution.conflicts:
                conflict_id = str(
                    uuid.uuid5(
                        _CONFLICT_NAMESPACE,
                        f"{conflict.event_id}|{conflict.left}|{conflict.right}",
                    )
                )
                record = IdentityConflict(
                    conflict_id,
                    conflict.event_id,
                    conflict.ts,
                    conflict.left,
                    conflict.right,
                    conflict.rule,
                )
                self._conflicts.add(conflict_id, conflict.ts, record)
            if event is not None:
                # The touchpoint goes on as it came, without a second encode.
                stitch = wire["consent_analytics"] is not False
                outgoing.append(
                    Outgoing(
                        self._journey_topic,
                        journey_key(resolution.customer_id),
                        RoutedEvent.encode(resolution.primary, offset, stitch, event),
                    )
                )
        await _side_by_side(
            self._outbox.send_all(outgoing), self._identities.flush(), self._conflicts.flush()
        )
        links.update(saved)  # state last: a replay before this sees the links as new again
        STITCH_EVENTS.labels("identity").inc(len(records))


async def _side_by_side(*outputs: Awaitable[Any]) -> None:
    """Outputs that do not depend on each other, written at once: Kafka acknowledges the records
    while ClickHouse takes the rows. Returns when every one is stored, else raises the first
    failure once all have ended, so a retry of the batch never races a write still running."""
    for result in await asyncio.gather(*outputs, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


def _identifier(key: str) -> Identifier:
    kind, _, value = key.rpartition(":")
    return Identifier(kind, value)


def _alias(identifier: Identifier, customer: str, version: int, ts: datetime) -> Alias:
    own = customer_id_for(identifier)
    return Alias(identifier.key, identifier.kind, customer, own, version, ts)


# -- step 2: journey ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Touched:
    journey: CustomerJourney
    version: int = 0
    changed: bool = False
    rows: dict[str, EnrichedTouchpoint] = field(default_factory=dict)
    """Touchpoints that arrived in this batch, still to write."""


class JourneyStage:
    """Applies the journey rules per customer. ``state`` maps customer id to the customer's
    saved :class:`CustomerJourney` (a changelog-backed table, partitioned like the topic).

    Every event carries the identity-log position of the decision that routed it. Moves
    (regroups) carry theirs too, so an event that reaches a customer after its identifier moved
    on (a restitch racing a newer regroup on another partition) is passed on, not stranded.
    """

    def __init__(
        self,
        outbox: Outbox,
        journey_topic: str,
        touchpoints: Sink,
        sessions: Sink,
        journeys: Sink,
        frictions: Sink,
        dead_letters: Sink,
        rules: JourneyRules,
    ) -> None:
        self._outbox = outbox
        self._journey_topic = journey_topic
        self._touchpoints = touchpoints
        self._sessions = sessions
        self._journeys = journeys
        self._frictions = frictions
        self._dead_letters = dead_letters
        self.rules = rules

    async def handle(
        self, records: Sequence[tuple[str, bytes, RawMessage]], state: MutableMapping[str, Any]
    ) -> None:
        """``records`` are (customer id, value, source) of the journey topic, in order.
        ``state`` keeps each customer's journey as JSON (:meth:`CustomerJourney.encoded_state`)."""
        touched: dict[str, _Touched] = {}
        passed_on: dict[str, list[tuple[StoredEvent, EnrichedTouchpoint | None]]] = {}
        histories: dict[str, History] = {}
        sources: dict[tuple[str, int], RawMessage] = {}
        unstitched: list[datetime] = []  # stored as they came, without consent to stitching

        def journey_of(customer: str, offset: int) -> _Touched:
            entry = touched.get(customer)
            if entry is None:
                saved = state.get(customer)
                journey = CustomerJourney.from_state(customer, self.rules, saved)
                entry = touched[customer] = _Touched(journey)
            entry.version = max(entry.version, offset)
            return entry

        def take(
            entry: _Touched,
            stored: StoredEvent,
            touchpoint: EnrichedTouchpoint | None,
            source: RawMessage,
        ) -> None:
            """Keep an event here, or pass it on if its identifier has moved on since."""
            moved = entry.journey.forward_for(stored.primary, stored.routed)
            if moved is not None:
                target, position = moved
                passed_on.setdefault(target, []).append((_rerouted(stored, position), touchpoint))
                return
            late_before = entry.journey.late_events
            entry.journey.add(stored.event, stored.version, stored.primary, stored.routed)
            JOURNEY_LATE_EVENTS.inc(entry.journey.late_events - late_before)
            if touchpoint is not None:
                entry.rows[stored.event.event_id] = touchpoint
                sources[(stored.event.event_id, stored.version)] = source  # for a dead letter
            entry.changed = True

        for customer, value, source in records:
            command = journey_command(value)
            entry = journey_of(customer, source.offset)
            if isinstance(command, RoutedEvent):
                touchpoint = command.touchpoint
                observe_stage_lag("journey", (touchpoint.received_ts,))
                event = journey_event(touchpoint)
                version = touchpoint.version
                sources[(event.event_id, version)] = source
                if not command.stitch:
                    self._touchpoints.add(event.event_id, event.ts, touchpoint, version)
                    unstitched.append(touchpoint.received_ts)
                    continue
                take(
                    entry,
                    StoredEvent(event, version, command.primary, False, command.v),
                    touchpoint,
                    source,
                )
            elif isinstance(command, Restitch):
                for item, saved in enumerate(command.events):
                    stored = StoredEvent.from_state(saved)
                    # One record, many events: each its own place, so each its own dead letter.
                    take(
                        entry,
                        stored,
                        command.touchpoints.get(stored.event.event_id),
                        replace(source, item=item),
                    )
                if command.history:
                    entry.journey.absorb((), History.from_state(command.history))
                entry.changed = True
            else:
                moved = entry.journey.take_moved(command.moves, command.v)
                for target, events in moved.items():
                    for stored in events:
                        pending = entry.rows.pop(stored.event.event_id, None)
                        passed_on.setdefault(target, []).append((stored, pending))
                    if entry.journey.merged_into == target:
                        history = entry.journey.hand_over_history()
                        if history is not None:
                            histories[target] = history
                entry.changed = entry.changed or bool(moved) or bool(command.moves)
        touched = {c: entry for c, entry in touched.items() if entry.changed}
        for customer, entry in touched.items():
            self._stitch(customer, entry)
        outgoing = []
        for target in passed_on.keys() | histories.keys():
            outgoing.extend(
                self._restitches(target, passed_on.get(target, []), histories.get(target))
            )
        await _side_by_side(self._outbox.send_all(outgoing), self._flush(sources))
        written = [t.received_ts for e in touched.values() for t in e.rows.values()]
        observe_stage_lag("write", written + unstitched)
        # State last, all or nothing: each customer's is bounded first (it may not fit).
        saved = {
            customer: None
            if journey.merged_into and not journey.events and not journey.forwards
            else journey.encoded_state()
            for customer, journey in ((c, e.journey) for c, e in touched.items())
        }
        for customer, kept in saved.items():
            if kept is None:
                state.pop(customer, None)
            else:
                state[customer] = kept
        STITCH_EVENTS.labels("journey").inc(len(records))

    def discard(self) -> None:
        """Forget the rows a failed attempt added and did not write."""
        for sink in (
            self._touchpoints,
            self._sessions,
            self._journeys,
            self._frictions,
            self._dead_letters,
        ):
            sink.discard()

    def _restitches(
        self,
        target: str,
        leaving: Sequence[tuple[StoredEvent, EnrichedTouchpoint | None]],
        history: History | None,
    ) -> list[Outgoing]:
        """The restitch records that move ``leaving`` (and a merged ``history``) to ``target``,
        as many as it takes to keep each under the state size: Kafka refuses records over 1 MB."""
        limit, key = self.rules.max_state_bytes, journey_key(target)
        records: list[Outgoing] = []
        events: list[Any] = []
        touchpoints: dict[str, EnrichedTouchpoint] = {}
        size = 0

        def close() -> None:
            nonlocal events, touchpoints, size
            handed = history.to_state() if history is not None and not records else None
            restitch = Restitch(events, touchpoints, handed)
            records.append(Outgoing(self._journey_topic, key, restitch.to_wire()))
            events, touchpoints, size = [], {}, 0

        for moving, touchpoint in leaving:
            event = moving.to_state()
            grows = len(orjson.dumps(event))
            if touchpoint is not None:
                grows += len(touchpoint.to_wire())
            if events and size + grows > limit:
                close()
            events.append(event)
            if touchpoint is not None:
                touchpoints[moving.event.event_id] = touchpoint
            size += grows
        if events or not records:
            close()
        return records

    def _stitch(self, customer: str, entry: _Touched) -> None:
        journey, version = entry.journey, entry.version
        if journey.is_empty:
            return
        positions = journey.stitched_all() if entry.rows else {}
        for event_id, touchpoint in entry.rows.items():
            stitched = positions[event_id]
            touchpoint.stitched(
                customer,
                stitched.session_id,
                stitched.stage,
                stitched.seq,
                stitched.conversion,
                stitched.survey_touchpoint_id,
                stitched.rated,
            )
            self._touchpoints.add(event_id, touchpoint.ts, touchpoint, touchpoint.version)
        update = journey.update()
        for session in update.sessions:
            self._sessions.add(
                session.session_id, session.start, _session(session, customer, version), version
            )
        for session_id in update.retired_sessions:
            retired = SessionRecord(
                session_id, version, customer, _EPOCH, _EPOCH, 0, 0, "", "", False, [], True
            )
            self._sessions.add(session_id, _EPOCH, retired, version)
        places = update.friction_places
        for friction in update.frictions:
            self._add_friction(friction, customer, version, places, retracted=False)
        for friction in update.retracted_frictions:
            self._add_friction(friction, customer, version, places, retracted=True)
        summary = update.summary
        as_of = summary["last_seen"] or _EPOCH
        record = JourneySummary(
            customer_id=summary["customer_id"],
            version=version,
            as_of=as_of,
            **{c: summary[c] for c in JOURNEYS.columns[3:]},
        )
        self._journeys.add(customer, as_of, record, version)

    def _add_friction(
        self,
        friction: Friction,
        customer: str,
        version: int,
        places: Mapping[str, Sequence[Any]],
        *,
        retracted: bool,
    ) -> None:
        # Keyed per customer: an event that moves writes a new row there, and the retraction
        # left behind (versioned on another partition) cannot hide it.
        own = friction_id(friction)
        key = name_uuid(_FRICTION_ROW_NAMESPACE, f"{customer}|{own}")
        # channel, type, name, stage and is_bot of the touchpoint it is on (for the rollups)
        channel, kind, name, stage, is_bot = _place(places.get(own))
        record = FrictionRecord(
            key,
            version,
            customer,
            friction.event_id,
            friction.ts,
            friction.reason,
            friction.severity,
            friction.detail,
            retracted,
            channel,
            kind,
            name,
            stage,
            is_bot,
        )
        self._frictions.add(key, friction.ts, record, version)

    async def _flush(self, sources: Mapping[tuple[str, int], RawMessage]) -> None:
        stored = await self._touchpoints.flush()
        WORKER_EVENTS.labels("written").inc(stored.written)
        WORKER_EVENTS.labels("duplicate").inc(stored.duplicates)
        WORKER_EVENTS.labels("dead_letter").inc(len(stored.refused))
        for (event_id, version), reason in stored.refused.items():
            letter = undeliverable(
                sources[(event_id, version)],
                f"ClickHouse refused the row: {reason}",
                event_id=event_id,
                stage="journey",
            )
            self._dead_letters.add(letter.dead_letter_id, letter.received_ts, letter)
        await self._dead_letters.flush()
        for sink in (self._sessions, self._frictions, self._journeys):
            await sink.flush()


def _rerouted(stored: StoredEvent, position: int) -> StoredEvent:
    return StoredEvent(stored.event, stored.version, stored.primary, stored.late, position)


def _session(session: Session, customer: str, version: int) -> SessionRecord:
    return SessionRecord(
        session.session_id,
        version,
        customer,
        session.start,
        session.end,
        len(session.event_ids),
        session.page_views,
        session.channel,
        session.campaign,
        session.is_bounce,
        list(session.event_ids),
        False,
    )
