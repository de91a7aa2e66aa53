"""Calls: many provider callbacks per call converge to one call record. Plain Python, no Faust.

The state of a call is the set of its distinct callbacks, keyed by callback id. The record is a
pure function of that set, so any arrival order, and any number of retries, give the same record.
Its version is the number of distinct callbacks merged, so it only grows as the call is learnt.
"""

from __future__ import annotations

import logging
import uuid
from collections import ChainMap
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from agents.callback_state import CallbackState
from agents.forget import ForgottenIdentifiers
from agents.ingest import RawMessage, enriched
from collectors.calls.pools import NumberPool, PoolBook, Reservation
from collectors.calls.records import TERMINAL_STATUSES, CallCallback, status_rank
from tracker.metrics import CALL_CALLBACKS_MERGED, CALL_POOL_CALLS
from tracker.store.sink import Sink
from tracker.touchpoint import Touchpoint

__all__ = [
    "MAX_CALLBACKS_PER_CALL",
    "CallRecord",
    "CallsPipeline",
    "PoolAttribution",
    "TrackingNumbers",
    "call_event_id",
    "call_row",
    "call_touchpoint",
    "merge_callbacks",
]

log = logging.getLogger(__name__)

# Fixed forever: the touchpoint of a call is uuid5(this, "provider:call_id").
CALL_NAMESPACE: Final = uuid.UUID("3d0c8f5e-9b7a-4c1e-8f2d-6a5b4c3d2e1f")
# A call with more callbacks than this is a runaway; further callbacks are counted, not kept.
MAX_CALLBACKS_PER_CALL: Final = 500

TrackingNumbers = Mapping[str, Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class CallRecord:
    """Everything known about one call, merged from its callbacks."""

    provider: str
    call_id: str
    version: int
    leg_ids: tuple[str, ...]
    call_ts: datetime
    received_ts: datetime
    direction: str
    status: str
    disposition: str  # "" while the call is still going
    caller_hash: str
    called_hash: str
    tracking_number: str
    started_at: datetime | None
    answered_at: datetime | None
    ended_at: datetime | None
    ring_seconds: float | None
    queue_seconds: float | None
    talk_seconds: float | None
    hold_seconds: float | None
    transfer_count: int
    transfer_kind: str
    queue: str
    agent: str
    recording: bool
    hangup_by: str
    topics: tuple[str, ...] = ()
    transcribed: bool = False
    transcript: str = ""

    @property
    def event_id(self) -> str:
        return call_event_id(self.provider, self.call_id)


def call_event_id(provider: str, call_id: str) -> str:
    return str(uuid.uuid5(CALL_NAMESPACE, f"{provider}:{call_id}"))


def _precedence(callback: CallCallback) -> tuple[int, datetime, str]:
    """Later in the call wins; between equals, the later provider time; then the id, for a total order."""
    return (status_rank(callback.status), callback.event_ts, callback.callback_id)


def _earliest(callback: CallCallback) -> tuple[datetime, datetime, str]:
    return (callback.started_at or callback.event_ts, callback.event_ts, callback.callback_id)


def merge_callbacks(callbacks: Iterable[CallCallback]) -> CallRecord:
    """The call record of a set of callbacks; duplicates (same callback id) count once."""
    distinct = {c.callback_id: c for c in sorted(callbacks, key=_precedence)}
    if not distinct:
        raise ValueError("a call record needs at least one callback")
    ordered = sorted(distinct.values(), key=_precedence)  # the last one weighs most
    latest = ordered[-1]

    def text(name: str) -> str:
        """Progress facts (status, agent, who hung up): the latest callback that knows."""
        for callback in reversed(ordered):
            if value := getattr(callback, name):
                return str(value)
        return ""

    def first(name: str) -> str:
        """Who called whom, and which way: the call's first leg that knows, not a later one."""
        for callback in sorted(ordered, key=_earliest):
            if value := getattr(callback, name):
                return str(value)
        return ""

    def most(name: str) -> float | None:
        values = [v for c in ordered if (v := getattr(c, name)) is not None]
        return max(values) if values else None

    # A transcript tells when it was made, not when the call began.
    progress = [c for c in ordered if not c.transcribed] or ordered
    starts = [c.started_at for c in progress if c.started_at] or [c.event_ts for c in progress]
    answers = [c.answered_at for c in ordered if c.answered_at] or [
        c.event_ts for c in ordered if c.status == "answered"
    ]
    ends = [c.ended_at for c in ordered if c.ended_at] or [
        c.event_ts for c in ordered if c.status in TERMINAL_STATUSES
    ]
    started_at = min(starts)
    answered_at = min(answers) if answers else None
    ended_at = max(ends) if ends else None
    statuses = {c.status for c in ordered}

    ring = most("ring_seconds")
    ring_end = answered_at or ended_at
    if ring is None and ring_end is not None:
        ring = max(0.0, (ring_end - started_at).total_seconds())
    talk = most("talk_seconds")
    if talk is None and answered_at and ended_at:
        talk = max(0.0, (ended_at - answered_at).total_seconds())
    transfers = {t for c in ordered for t in c.transfer_ids}
    kinds = {c.transfer_kind for c in ordered if c.transfer_ids}
    direction = first("direction")
    return CallRecord(
        provider=latest.provider,
        call_id=latest.call_id,
        version=len(distinct),
        leg_ids=tuple(sorted({c.leg_id for c in ordered if c.leg_id})),
        call_ts=started_at,
        received_ts=min(c.received_ts for c in ordered),
        direction=direction,
        status=latest.status,
        disposition=_disposition(statuses, answered_at is not None, direction, talk),
        caller_hash=first("caller_hash"),
        called_hash=first("called_hash"),
        tracking_number=first("tracking_number"),
        started_at=started_at,
        answered_at=answered_at,
        ended_at=ended_at,
        ring_seconds=ring,
        queue_seconds=most("queue_seconds"),
        talk_seconds=talk,
        hold_seconds=most("hold_seconds"),
        transfer_count=len(transfers),
        transfer_kind="warm" if "warm" in kinds else ("cold" if transfers else ""),
        queue=text("queue"),
        agent=text("agent"),
        recording=any(c.recording for c in ordered),
        hangup_by=text("hangup_by"),
        topics=tuple(sorted({t for c in ordered for t in c.topics})),
        transcribed=any(c.transcribed for c in ordered),
        transcript=_transcript(ordered),
    )


def _transcript(callbacks: Iterable[CallCallback]) -> str:
    """The call's transcript parts in the order they were said (by provider time, then id)."""
    parts = sorted(
        (c for c in callbacks if c.transcript), key=lambda c: (c.event_ts, c.callback_id)
    )
    return "\n".join(c.transcript for c in parts)


def _disposition(statuses: set[str], answered: bool, direction: str, talk: float | None) -> str:
    if "voicemail" in statuses:
        return "voicemail"
    if answered or ("completed" in statuses and (talk or 0) > 0):
        return "answered"
    for status, disposition in (
        ("busy", "busy"),
        ("failed", "failed"),
        ("no-answer", "no-answer"),
        ("canceled", "abandoned"),
    ):
        if status in statuses:
            return disposition
    if "completed" in statuses:
        # Ended without an answer: an inbound caller gave up; an outbound call was not picked up.
        return "no-answer" if direction == "outbound" else "abandoned"
    return ""


def call_row(record: CallRecord, tracking: TrackingNumbers) -> dict[str, Any]:
    """The ``calls`` table's row, by column name (tracker/store/tables.py: ``CALLS``)."""
    campaign = tracking.get(record.tracking_number, {})
    return {
        "call_uuid": record.event_id,
        "version": record.version,
        "provider": record.provider,
        "call_id": record.call_id,
        "leg_ids": list(record.leg_ids),
        "call_ts": record.call_ts,
        "direction": record.direction,
        "status": record.status,
        "disposition": record.disposition,
        "caller_hash": record.caller_hash,
        "called_hash": record.called_hash,
        "tracking_number": record.tracking_number,
        "campaign_source": campaign.get("source", ""),
        "campaign_medium": campaign.get("medium", ""),
        "campaign_name": campaign.get("name", ""),
        "channel": campaign.get("channel", "phone"),
        "started_at": record.started_at,
        "answered_at": record.answered_at,
        "ended_at": record.ended_at,
        "ring_seconds": record.ring_seconds,
        "queue_seconds": record.queue_seconds,
        "talk_seconds": record.talk_seconds,
        "hold_seconds": record.hold_seconds,
        "transfer_count": record.transfer_count,
        "transfer_kind": record.transfer_kind,
        "queue": record.queue,
        "agent": record.agent,
        "recording": record.recording,
        "hangup_by": record.hangup_by,
        "callbacks": record.version,
        "topics": list(record.topics),
        "transcribed": record.transcribed,
        "transcript": record.transcript,
    }


def call_touchpoint(record: CallRecord, tracking: TrackingNumbers) -> Touchpoint:
    """The call as a touchpoint: one event_id per call, a higher version each time it is learnt."""
    attribution = tracking.get(record.tracking_number, {})
    campaign = {k: v for k in ("source", "medium", "name") if (v := attribution.get(k, ""))}
    customer = record.caller_hash if record.direction != "outbound" else record.called_hash
    properties = {
        "provider": record.provider,
        "call_id": record.call_id,
        "direction": record.direction,
        "status": record.status,
        "disposition": record.disposition,
        "tracking_number": record.tracking_number,
        "talk_seconds": _seconds(record.talk_seconds),
        "ring_seconds": _seconds(record.ring_seconds),
        "transfers": str(record.transfer_count),
        "transfer_kind": record.transfer_kind,
        "queue_seconds": _seconds(record.queue_seconds),
        "hold_seconds": _seconds(record.hold_seconds),
        "queue": record.queue,
        "agent": record.agent,
        "recording": "true" if record.recording else "false",
        "hangup_by": record.hangup_by,
        # Topics only: a transcript's text is kept on the call record, never on the touchpoint.
        "topics": _listed(record.topics),
    }
    return Touchpoint(
        event_id=record.event_id,
        type="call",
        name=f"{record.direction or 'unknown'} call {record.disposition or record.status}",
        source="call_webhook",
        channel="phone",
        ts=record.call_ts,
        device_ts=record.call_ts,
        received_ts=record.received_ts,
        version=record.version,
        phone_hash=customer,
        campaign=campaign,
        properties={k: v for k, v in properties.items() if v},
    )


def _listed(topics: Sequence[str], limit: int = 1024) -> str:
    """Topics comma-separated, as many whole ones as a touchpoint property holds."""
    kept: list[str] = []
    for topic in topics:
        if len(",".join([*kept, topic])) > limit:
            break
        kept.append(topic)
    return ",".join(kept)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


class PoolAttribution:
    """Joins calls to pool numbers with the web sessions that held them (docs/calls.md).

    ``book`` is the reservations' state, kept current from their topic by the worker.
    """

    def __init__(self, pools: Mapping[str, NumberPool], book: PoolBook) -> None:
        self.book = book
        self._pools = {number: pool for pool in pools.values() for number in pool.numbers}

    def pool_of(self, number: str) -> NumberPool | None:
        return self._pools.get(number)

    def join(self, record: CallRecord) -> tuple[NumberPool, Reservation | None] | None:
        """None for a call to a number in no pool; else the pool, and the reservation whose
        window holds the call's start (None: the call is kept, unattributed)."""
        pool = self._pools.get(record.tracking_number)
        if pool is None:
            return None
        return pool, self.book.attribute(record.tracking_number, record.call_ts)


def pool_touchpoint(
    record: CallRecord,
    tracking: TrackingNumbers,
    pool: NumberPool,
    reservation: Reservation | None,
) -> tuple[Touchpoint, TrackingNumbers]:
    """The call touchpoint of a call to a pool number, and the tracking map its call row uses.

    Joined to a reservation, the call carries the web visitor's ``anonymous_id`` and
    ``session_id`` and the reservation's campaign; outside every reservation it has neither.
    """
    attribution: dict[str, str] = {"channel": pool.channel}
    if reservation is not None:
        attribution.update(
            {k: v for k, v in reservation.campaign.items() if k in ("source", "medium", "name")}
        )
    overlay: TrackingNumbers = ChainMap({record.tracking_number: attribution}, dict(tracking))
    touchpoint = call_touchpoint(record, overlay)
    touchpoint.properties["pool"] = pool.name
    touchpoint.properties["pool_attribution"] = "session" if reservation else "none"
    if reservation is not None:
        touchpoint.anonymous_id = reservation.anonymous_id
        touchpoint.session_id = reservation.session_id
        # Journey stitching assigns its own sessions; the visit's id stays readable here.
        touchpoint.properties["web_session_id"] = reservation.session_id
        touchpoint.campaign = {k: v for k, v in reservation.campaign.items() if v}
    return touchpoint, overlay


class CallsPipeline:
    """Merges a batch of callbacks into per-call state and writes each touched call's record.

    ``state`` is any mutable mapping from call key to ``{callback_id: wire}``: a changelog-backed
    Faust table in the worker, a dict in tests. Rows are written before the caller acknowledges
    the batch; a replay finds the callbacks already merged and rewrites nothing new.
    """

    def __init__(
        self,
        calls: Sink,
        touchpoints: Sink,
        dead_letters: Sink,
        tracking_numbers: TrackingNumbers,
        forgotten: ForgottenIdentifiers | None = None,
        pools: PoolAttribution | None = None,
        max_state_bytes: int = 262_144,
    ) -> None:
        self.calls = calls
        self.touchpoints = touchpoints
        self.dead_letters = dead_letters
        self.tracking_numbers = tracking_numbers
        self.forgotten = ForgottenIdentifiers() if forgotten is None else forgotten
        self.pools = pools
        self.state = CallbackState(
            stage="calls",
            noun="call",
            namespace=CALL_NAMESPACE,
            read=CallCallback.from_wire,
            key=lambda callback: callback.call_key,
            merged=CALL_CALLBACKS_MERGED,
            max_callbacks=MAX_CALLBACKS_PER_CALL,
            max_state_bytes=max_state_bytes,
            dead_letters=dead_letters,
        )

    def discard(self) -> None:
        """Forget the rows a failed attempt added and did not write."""
        for sink in (self.calls, self.touchpoints, self.dead_letters):
            sink.discard()

    async def handle(self, messages: Sequence[RawMessage], state: MutableMapping[str, Any]) -> None:
        """Outputs first, state last: a batch that fails midway leaves the state as it was."""
        folded = self.state.fold(messages, state)
        written: dict[str, dict[str, Any]] = {}
        for key, known in folded.touched.items():
            record = merge_callbacks(CallCallback.from_wire(w) for w in known.values())
            tracking = self.tracking_numbers
            joined = self.pools.join(record) if self.pools is not None else None
            if joined is None:
                touchpoint = call_touchpoint(record, tracking)
            else:
                pool, reservation = joined
                touchpoint, tracking = pool_touchpoint(record, tracking, pool, reservation)
                if key in folded.fresh:
                    outcome = "attributed" if reservation else "unattributed"
                    CALL_POOL_CALLS.labels(pool.name, outcome).inc()
            numbers = {f"phone:{h}" for h in (record.caller_hash, record.called_hash) if h}
            if self.forgotten.forgets(touchpoint) or any(n in self.forgotten for n in numbers):
                continue  # a forgotten person's calls are not stored again
            written[record.event_id] = known
            self.calls.add(
                record.event_id,
                record.call_ts,
                call_row(record, tracking),
                record.version,
            )
            self.touchpoints.add(
                touchpoint.event_id, touchpoint.ts, enriched(touchpoint), touchpoint.version
            )
        await self.state.write((self.calls, self.touchpoints), written, folded, state)
