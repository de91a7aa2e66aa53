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
from agents.ingest import TOUCHPOINT_COLUMNS, RawMessage, dead_letter_row, undeliverable
from agents.journey import Friction, JourneyEvent, Session
from tracker.errors import StateTooLarge
from tracker.identity_log import split_command
from tracker.metrics import (
    IDENTITY_CONFLICTS,
    JOURNEY_LATE_EVENTS,
    STITCH_EVENTS,
    STITCH_ROUTES,
    WORKER_EVENTS,
    observe_stage_lag,
)
from tracker.settings import Settings
from tracker.store.sink import FlushResult, Sink

__all__ = [
    "ALIAS_COLUMNS",
    "CONFLICT_COLUMNS",
    "FRICTION_COLUMNS",
    "JOURNEY_COLUMNS",
    "SESSION_COLUMNS",
    "IdentityStage",
    "JourneyStage",
    "Outbox",
    "Outgoing",
    "StitchRouter",
    "decode_row",
    "encode_row",
    "journey_event",
    "journey_key",
    "split_command",
]

log = logging.getLogger(__name__)

ALIAS_COLUMNS: Final = ("identifier", "kind", "customer_id", "own_customer_id", "version", "ts")
CONFLICT_COLUMNS: Final = (
    "conflict_id",
    "event_id",
    "ts",
    "left_identifier",
    "right_identifier",
    "rule",
)
SESSION_COLUMNS: Final = (
    "session_id",
    "version",
    "customer_id",
    "start",
    "end",
    "events",
    "page_views",
    "channel",
    "campaign",
    "is_bounce",
    "event_ids",
    "retired",
)
JOURNEY_COLUMNS: Final = (
    "customer_id",
    "version",
    "as_of",
    "first_seen",
    "last_seen",
    "events",
    "sessions",
    "channels",
    "stage",
    "stage_since",
    "conversions",
    "value",
    "frictions",
    "late_events",
    "merged_into",
)
FRICTION_COLUMNS: Final = (
    "friction_id",
    "version",
    "customer_id",
    "event_id",
    "ts",
    "reason",
    "severity",
    "detail",
    "retracted",
    "channel",
    "type",
    "name",
    "stage",
    "is_bot",
)
# Columns added since rows first went on the wire, with what a row written before means.
_ADDED_COLUMNS: Final = {"conversion": "", "survey_touchpoint_id": ""}
_TIME_COLUMNS: Final = ("ts", "device_ts", "sent_ts", "received_ts")
_COLUMN: Final = {name: i for i, name in enumerate(TOUCHPOINT_COLUMNS)}
_CONFLICT_NAMESPACE: Final = uuid.UUID("0d4e2b7a-8c31-4f5e-b6a9-2e7c1d3f5a80")
_FRICTION_ROW_NAMESPACE: Final = uuid.UUID("5e0b6c1d-9a2f-4d7e-8b3c-6f1a2e9d4c57")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


# -- the touchpoint on the wire between steps --------------------------------------------------


def encode_row(row: Sequence[Any]) -> bytes:
    return orjson.dumps(dict(zip(TOUCHPOINT_COLUMNS, row, strict=True)))


def decode_row(data: bytes | Mapping[str, Any]) -> list[Any]:
    wire = orjson.loads(data) if isinstance(data, bytes) else data
    row = [wire[name] if name in wire else _ADDED_COLUMNS[name] for name in TOUCHPOINT_COLUMNS]
    for name in _TIME_COLUMNS:
        value = row[_COLUMN[name]]
        if value is not None:
            row[_COLUMN[name]] = datetime.fromisoformat(value)
    return row


def journey_event(row: Sequence[Any]) -> JourneyEvent:
    """The fields of a touchpoint row the journey rules read."""

    def get(name: str) -> Any:
        return row[_COLUMN[name]]

    properties: Mapping[str, str] = get("properties")
    status = properties.get("status_code", "")
    return JourneyEvent(
        event_id=get("event_id"),
        ts=get("ts"),
        type=get("type"),
        channel=get("channel"),
        source=get("source"),
        name=get("name"),
        page_path=get("page_path"),
        campaign=get("campaign_name"),
        value=get("value"),
        status_code=int(status) if status.isdigit() else None,
        queue=properties.get("queue", ""),
        disposition=properties.get("disposition", ""),
        queue_wait_seconds=_number(properties.get("queue_seconds")),
        hold_seconds=_number(properties.get("hold_seconds")),
        transfers=int(_number(properties.get("transfers"))),
        cold_transfers=1 if properties.get("transfer_kind") == "cold" else 0,
        survey_kind=get("survey_kind"),
        survey_score=get("survey_score"),
        acquisition=acquisition_channel(
            get("channel"),
            get("source"),
            get("campaign_medium"),
            bool(get("ad_click_ids")),
            get("referrer_host"),
            get("page_host"),
        ),
        survey_touchpoint_id=get("survey_touchpoint_id"),
        is_bot=bool(get("is_bot")),
        first_reply_seconds=_optional_number(properties.get("first_reply_seconds")),
        resolution_seconds=_optional_number(properties.get("resolution_seconds")),
        reopens=int(_number(properties.get("reopens"))),
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
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=f"{self._settings.worker_id}-outbox",
            acks="all",
            enable_idempotence=True,
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
                    futures.append(await self._producer.send(r.topic, r.value, key=r.key))
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
    """A :class:`Sink` that hands ingest's touchpoint rows to stitching, each by one of two paths.

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
        self._rows: dict[tuple[str, int], Sequence[Any]] = {}

    def add(self, key: str, ts: datetime, row: Sequence[Any], version: int = 0) -> None:
        self._rows.setdefault((key, version), row)

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

    def route(self, row: Sequence[Any]) -> Outgoing:
        """The record that carries ``row`` on: to the identity log, or to its customer."""
        event_id: str = row[_COLUMN["event_id"]]
        stitch = row[_COLUMN["consent_analytics"]] is not False
        ids = _row_identifiers(row) if stitch else []  # no consent: never joined to anyone
        route = self._replica.route(event_id, row[_COLUMN["ts"]], ids)
        if route is None:
            return Outgoing(self._identity_topic, event_id.encode(), encode_row(row))
        head = {"kind": "event", "primary": route.primary, "v": route.position, "stitch": stitch}
        return Outgoing(
            self._journey_topic,
            journey_key(route.customer_id),
            orjson.dumps({**head, "row": dict(zip(TOUCHPOINT_COLUMNS, row, strict=True))}),
        )


def _row_identifiers(row: Sequence[Any]) -> list[Identifier]:
    return identifiers_of(
        row[_COLUMN["anonymous_id"]],
        row[_COLUMN["user_id"]],
        row[_COLUMN["email_hash"]],
        row[_COLUMN["phone_hash"]],
        row[_COLUMN["click_id"]],
        row[_COLUMN["properties"]],
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
                regroup = {"kind": "regroup", "moves": moves, "v": offset}
                outgoing.append(
                    Outgoing(self._journey_topic, journey_key(before), orjson.dumps(regroup))
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
                    identifier.key, ts, _alias_row(identifier, customer, offset, ts), offset
                )
            IDENTITY_CONFLICTS.inc(len(resolution.conflicts))
            for conflict in resolution.conflicts:
                conflict_id = str(
                    uuid.uuid5(
                        _CONFLICT_NAMESPACE,
                        f"{conflict.event_id}|{conflict.left}|{conflict.right}",
                    )
                )
                row = (
                    conflict_id,
                    conflict.event_id,
                    conflict.ts,
                    conflict.left,
                    conflict.right,
                    conflict.rule,
                )
                self._conflicts.add(conflict_id, conflict.ts, row)
            if event is not None:
                head = orjson.dumps(
                    {
                        "kind": "event",
                        "primary": resolution.primary,
                        "v": offset,
                        "stitch": wire["consent_analytics"] is not False,
                    }
                )
                # The row goes on as it came, without a second encode: {"kind":...,"row":{...}}
                outgoing.append(
                    Outgoing(
                        self._journey_topic,
                        journey_key(resolution.customer_id),
                        head[:-1] + b',"row":' + event + b"}",
                    )
                )
        await self._outbox.send_all(outgoing)
        await self._identities.flush()
        await self._conflicts.flush()
        links.update(saved)  # state last: a replay before this sees the links as new again
        STITCH_EVENTS.labels("identity").inc(len(records))


def _identifier(key: str) -> Identifier:
    kind, _, value = key.rpartition(":")
    return Identifier(kind, value)


def _alias_row(
    identifier: Identifier, customer: str, version: int, ts: datetime
) -> tuple[Any, ...]:
    own = customer_id_for(identifier)
    return (identifier.key, identifier.kind, customer, own, version, ts)


# -- step 2: journey ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Touched:
    journey: CustomerJourney
    version: int = 0
    changed: bool = False
    rows: dict[str, tuple[list[Any], Mapping[str, Any]]] = field(default_factory=dict)
    """Touchpoints that arrived in this batch, still to write: decoded, and as they came."""


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
        """``records`` are (customer id, value, source) of the journey topic, in order."""
        touched: dict[str, _Touched] = {}
        passed_on: dict[str, list[tuple[StoredEvent, Mapping[str, Any] | None]]] = {}
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
            wire: Mapping[str, Any] | None,
            source: RawMessage,
        ) -> None:
            """Keep an event here, or pass it on if its identifier has moved on since."""
            moved = entry.journey.forward_for(stored.primary, stored.routed)
            if moved is not None:
                target, position = moved
                passed_on.setdefault(target, []).append((_rerouted(stored, position), wire))
                return
            late_before = entry.journey.late_events
            entry.journey.add(stored.event, stored.version, stored.primary, stored.routed)
            JOURNEY_LATE_EVENTS.inc(entry.journey.late_events - late_before)
            if wire is not None:
                entry.rows[stored.event.event_id] = (decode_row(wire), wire)
                sources[(stored.event.event_id, stored.version)] = source  # for a dead letter
            entry.changed = True

        for customer, value, source in records:
            wire = orjson.loads(value)
            entry = journey_of(customer, source.offset)
            kind = wire["kind"]
            if kind == "event":
                row = decode_row(wire["row"])
                observe_stage_lag("journey", (row[_COLUMN["received_ts"]],))
                event = journey_event(row)
                version = row[_COLUMN["version"]]
                sources[(event.event_id, version)] = source
                if not wire.get("stitch", True):
                    self._touchpoints.add(event.event_id, event.ts, row, version)
                    unstitched.append(row[_COLUMN["received_ts"]])
                    continue
                take(
                    entry,
                    StoredEvent(event, version, wire["primary"], False, wire["v"]),
                    wire["row"],
                    source,
                )
            elif kind == "restitch":
                rows = wire.get("rows", {})
                for item, saved in enumerate(wire["events"]):
                    stored = StoredEvent.from_state(saved)
                    # One record, many rows: each its own place, so each its own dead letter.
                    take(entry, stored, rows.get(stored.event.event_id), replace(source, item=item))
                if wire.get("history"):
                    entry.journey.absorb((), History.from_state(wire["history"]))
                entry.changed = True
            elif kind == "regroup":
                moved = entry.journey.take_moved(wire["moves"], wire["v"])
                for target, events in moved.items():
                    for stored in events:
                        pending = entry.rows.pop(stored.event.event_id, None)
                        passed_on.setdefault(target, []).append(
                            (stored, pending[1] if pending else None)
                        )
                    if entry.journey.merged_into == target:
                        history = entry.journey.hand_over_history()
                        if history is not None:
                            histories[target] = history
                entry.changed = entry.changed or bool(moved) or bool(wire["moves"])
        touched = {c: entry for c, entry in touched.items() if entry.changed}
        for customer, entry in touched.items():
            self._stitch(customer, entry)
        outgoing = []
        for target in passed_on.keys() | histories.keys():
            outgoing.extend(
                self._restitches(target, passed_on.get(target, []), histories.get(target))
            )
        await self._outbox.send_all(outgoing)
        await self._flush(sources)
        written = [
            row[_COLUMN["received_ts"]] for e in touched.values() for row, _ in e.rows.values()
        ]
        observe_stage_lag("write", written + unstitched)
        # State last, all or nothing: each customer's is bounded first (it may not fit).
        saved = {
            customer: None
            if journey.merged_into and not journey.events and not journey.forwards
            else journey.bounded_state()
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
        leaving: Sequence[tuple[StoredEvent, Mapping[str, Any] | None]],
        history: History | None,
    ) -> list[Outgoing]:
        """The restitch records that move ``leaving`` (and a merged ``history``) to ``target``,
        as many as it takes to keep each under the state size: Kafka refuses records over 1 MB."""
        limit, key = self.rules.max_state_bytes, journey_key(target)
        records: list[Outgoing] = []
        events: list[Any] = []
        rows: dict[str, Mapping[str, Any]] = {}
        size = 0

        def close() -> None:
            nonlocal events, rows, size
            restitch: dict[str, Any] = {"kind": "restitch", "events": events, "rows": rows}
            if history is not None and not records:
                restitch["history"] = history.to_state()
            records.append(Outgoing(self._journey_topic, key, orjson.dumps(restitch)))
            events, rows, size = [], {}, 0

        for moving, row in leaving:
            event = moving.to_state()
            grows = len(orjson.dumps(event)) + (len(orjson.dumps(row)) if row is not None else 0)
            if events and size + grows > limit:
                close()
            events.append(event)
            if row is not None:
                rows[moving.event.event_id] = row
            size += grows
        if events or not records:
            close()
        return records

    def _stitch(self, customer: str, entry: _Touched) -> None:
        journey, version = entry.journey, entry.version
        if journey.is_empty:
            return
        positions = journey.stitched_all() if entry.rows else {}
        for event_id, (row, _) in entry.rows.items():
            stitched = positions[event_id]
            row[_COLUMN["customer_id"]] = customer
            row[_COLUMN["session_id"]] = stitched.session_id
            row[_COLUMN["stage"]] = stitched.stage
            row[_COLUMN["seq"]] = stitched.seq
            row[_COLUMN["conversion"]] = stitched.conversion
            row[_COLUMN["survey_touchpoint_id"]] = stitched.survey_touchpoint_id
            self._touchpoints.add(event_id, row[_COLUMN["ts"]], row, row[_COLUMN["version"]])
        update = journey.update()
        for session in update.sessions:
            self._sessions.add(
                session.session_id, session.start, _session_row(session, customer, version), version
            )
        for session_id in update.retired_sessions:
            retired: tuple[Any, ...] = (
                session_id,
                version,
                customer,
                _EPOCH,
                _EPOCH,
                0,
                0,
                "",
                "",
                False,
                [],
                True,
            )
            self._sessions.add(session_id, _EPOCH, retired, version)
        places = update.friction_places
        for friction in update.frictions:
            self._add_friction(friction, customer, version, places, retracted=False)
        for friction in update.retracted_frictions:
            self._add_friction(friction, customer, version, places, retracted=True)
        summary = update.summary
        as_of = summary["last_seen"] or _EPOCH
        self._journeys.add(
            customer,
            as_of,
            (summary["customer_id"], version, as_of, *(summary[c] for c in JOURNEY_COLUMNS[3:])),
            version,
        )

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
        key = str(uuid.uuid5(_FRICTION_ROW_NAMESPACE, f"{customer}|{friction_id(friction)}"))
        row = (
            key,
            version,
            customer,
            friction.event_id,
            friction.ts,
            friction.reason,
            friction.severity,
            friction.detail,
            retracted,
            # channel, type, name, stage and is_bot of the touchpoint it is on (for the rollups)
            *_place(places.get(friction_id(friction))),
        )
        self._frictions.add(key, friction.ts, row, version)

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
            self._dead_letters.add(
                letter.dead_letter_id, letter.received_ts, dead_letter_row(letter)
            )
        await self._dead_letters.flush()
        for sink in (self._sessions, self._frictions, self._journeys):
            await sink.flush()


def _rerouted(stored: StoredEvent, position: int) -> StoredEvent:
    return StoredEvent(stored.event, stored.version, stored.primary, stored.late, position)


def _session_row(session: Session, customer: str, version: int) -> tuple[Any, ...]:
    return (
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
