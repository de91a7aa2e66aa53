"""One customer's journey as it stands. Plain Python: the journey agent keeps one per customer.

A :class:`CustomerJourney` holds the customer's recent events and what has been published of
them (sessions, frictions). Each change re-applies the rules of :mod:`agents.journey` to the
events at hand and answers what to write: new or corrected sessions, sessions that no longer
exist, new frictions, and the journey summary. Whole sessions beyond ``max_events`` are folded
into a :class:`History` of counts, so state per customer stays bounded.

Events later than the allowed lateness (behind the newest event of the customer) are kept and
counted but do not reshape sessions that are already published.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final

import orjson

from agents.journey import (
    DEFAULT_CONVERSIONS,
    DEFAULT_STAGES,
    NEGATIVE_CALL_TOPIC,
    ConversionRule,
    Friction,
    FrictionRules,
    JourneyEvent,
    Session,
    SessionRules,
    StageContext,
    StageRule,
    conversion_rule,
    conversions,
    frictions,
    name_uuid,
    rated_touchpoints,
    sessionize,
    stage_changes,
    stage_context,
)
from tracker.errors import StateTooLarge
from tracker.metrics import STATE_FOLDED
from tracker.settings import Settings

__all__ = [
    "CustomerJourney",
    "History",
    "JourneyRules",
    "JourneyUpdate",
    "Stitched",
    "StoredEvent",
    "friction_id",
    "rules_from_settings",
]

_FUNNEL_ORDER: Final = ("", "awareness", "consideration")
_FRICTION_NAMESPACE: Final = uuid.UUID("c6a1f0d2-5b7e-4e8a-9d3c-1f2e4a6b8c0d")


@dataclass(frozen=True, slots=True)
class JourneyRules:
    sessions: SessionRules = field(default_factory=SessionRules)
    stages: tuple[StageRule, ...] = DEFAULT_STAGES
    frictions: FrictionRules = field(default_factory=FrictionRules)
    conversions: tuple[ConversionRule, ...] = DEFAULT_CONVERSIONS
    allowed_lateness: timedelta = timedelta(hours=1)
    max_events: int = 500
    max_state_bytes: int = 262_144
    """The most bytes :meth:`CustomerJourney.bounded_state` may take as JSON, with its key."""


_STATE_FIELDS: Final = 29
"""Items of :meth:`StoredEvent.to_state` today; state written before some fields has fewer."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event: JourneyEvent
    version: int
    primary: str
    """The identifier the event was routed by: a regroup moves the events whose primary moved."""
    late: bool = False
    routed: int = 0
    """The identity-log position of the decision that sent the event here."""
    saved: list[Any] | None = field(default=None, compare=False, repr=False)
    """The state this was read from, when in today's form: saved again as it was read, since a
    stored event never changes (a new version, late or route makes a new one)."""

    def to_state(self) -> list[Any]:
        if self.saved is not None:
            return self.saved
        e = self.event
        return [
            e.event_id,
            e.ts.isoformat(),
            e.type,
            e.channel,
            e.source,
            e.name,
            e.page_path,
            e.campaign,
            e.value,
            e.status_code,
            e.queue,
            e.disposition,
            e.queue_wait_seconds,
            e.hold_seconds,
            e.transfers,
            e.cold_transfers,
            e.survey_kind,
            e.survey_score,
            self.version,
            self.primary,
            self.late,
            self.routed,
            e.acquisition,
            e.survey_touchpoint_id,
            e.is_bot,
            e.first_reply_seconds,
            e.resolution_seconds,
            e.reopens,
            list(e.call_topics),
        ]

    @classmethod
    def from_state(cls, s: list[Any]) -> StoredEvent:
        event = JourneyEvent(
            s[0],
            datetime.fromisoformat(s[1]),
            s[2],
            channel=s[3],
            source=s[4],
            name=s[5],
            page_path=s[6],
            campaign=s[7],
            value=s[8],
            status_code=s[9],
            queue=s[10],
            disposition=s[11],
            queue_wait_seconds=s[12],
            hold_seconds=s[13],
            transfers=s[14],
            cold_transfers=s[15],
            survey_kind=s[16],
            survey_score=s[17],
            # State written before these fields has 22 items.
            acquisition=s[22] if len(s) > 22 else "",
            survey_touchpoint_id=s[23] if len(s) > 23 else "",
            is_bot=s[24] if len(s) > 24 else False,
            # State written before the helpdesk fields has 25 items.
            first_reply_seconds=s[25] if len(s) > 25 else None,
            resolution_seconds=s[26] if len(s) > 26 else None,
            reopens=s[27] if len(s) > 27 else 0,
            call_topics=tuple(s[28]) if len(s) > 28 else (),
        )
        return cls(event, s[18], s[19], s[20], s[21], s if len(s) == _STATE_FIELDS else None)


@dataclass(slots=True)
class History:
    """What whole sessions folded out of the retained events leave behind."""

    events: int = 0
    sessions: int = 0
    first_seen: datetime | None = None
    channels: set[str] = field(default_factory=set)
    conversions: int = 0
    value: float = 0.0
    frictions: int = 0
    stage: StageContext = field(default_factory=StageContext)
    last_stage: str = ""
    last_stage_ts: datetime | None = None

    def absorb(self, other: History) -> None:
        self.events += other.events
        self.sessions += other.sessions
        if other.first_seen and (not self.first_seen or other.first_seen < self.first_seen):
            self.first_seen = other.first_seen
        self.channels |= other.channels
        self.conversions += other.conversions
        self.value += other.value
        self.frictions += other.frictions
        funnel = max(self.stage.funnel, other.stage.funnel, key=_FUNNEL_ORDER.index)
        self.stage = StageContext(funnel, self.stage.purchased or other.stage.purchased)
        if other.last_stage_ts and (
            not self.last_stage_ts or other.last_stage_ts > self.last_stage_ts
        ):
            self.last_stage, self.last_stage_ts = other.last_stage, other.last_stage_ts

    def to_state(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "sessions": self.sessions,
            "first_seen": self.first_seen.isoformat() if self.first_seen else None,
            "channels": sorted(self.channels),
            "conversions": self.conversions,
            "value": self.value,
            "frictions": self.frictions,
            "funnel": self.stage.funnel,
            "purchased": self.stage.purchased,
            "last_stage": self.last_stage,
            "last_stage_ts": self.last_stage_ts.isoformat() if self.last_stage_ts else None,
        }

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> History:
        def when(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        return cls(
            events=s["events"],
            sessions=s["sessions"],
            first_seen=when(s["first_seen"]),
            channels=set(s["channels"]),
            conversions=s["conversions"],
            value=s["value"],
            frictions=s["frictions"],
            stage=StageContext(s["funnel"], s["purchased"]),
            last_stage=s["last_stage"],
            last_stage_ts=when(s["last_stage_ts"]),
        )


RatedPlace = tuple[str, str, str, str]
"""A touchpoint's channel, type, name (a page's path) and stage, as the rollups group it."""


@dataclass(frozen=True, slots=True)
class Stitched:
    """Where one touchpoint stands in its customer's journey."""

    session_id: str
    stage: str
    seq: int
    late: bool
    conversion: str = ""
    """The name of the conversion rule the touchpoint matches; empty if none."""
    survey_touchpoint_id: str = ""
    """For a survey answer, the touchpoint it rates (journey.rated_touchpoints)."""
    rated: RatedPlace = ("", "", "", "")
    """For a survey answer, the rated touchpoint's place, when this journey holds it."""


@dataclass(frozen=True, slots=True)
class JourneyUpdate:
    """What to write after a change: only what differs from what was published before."""

    sessions: list[Session]
    retired_sessions: list[str]
    frictions: list[Friction]
    retracted_frictions: list[Friction]
    summary: dict[str, Any]
    friction_places: dict[str, list[Any]] = field(default_factory=dict)
    """friction_id → [channel, type, name, stage, is_bot] of the touchpoint each friction (new or
    retracted) is on, as when it was detected: a retraction is counted where its friction was."""


def friction_id(friction: Friction) -> str:
    key = f"{friction.event_id}|{friction.reason}"
    if friction.reason == NEGATIVE_CALL_TOPIC:  # one friction per topic a call flags
        key += f"|{friction.detail}"
    return name_uuid(_FRICTION_NAMESPACE, key)


class CustomerJourney:
    def __init__(self, customer_id: str, rules: JourneyRules) -> None:
        self.customer_id = customer_id
        self.rules = rules
        self.events: dict[str, StoredEvent] = {}
        self.history = History()
        self.late_events = 0
        self.merged_into = ""
        self.forwards: dict[str, tuple[str, int]] = {}
        """Identifiers moved away: where to, and at which identity-log position."""
        self._sessions: dict[str, list[Any]] = {}  # published: id -> signature
        self._frictions: dict[str, Friction] = {}  # published: friction_id -> friction
        self._friction_places: dict[str, list[Any]] = {}  # published: friction_id -> place

    # -- changes ---------------------------------------------------------------------------------

    def add(self, event: JourneyEvent, version: int, primary: str, routed: int = 0) -> None:
        """Take an event; a redelivery or a lower version changes nothing. A later version of
        an event (a call learnt better) replaces the earlier."""
        known = self.events.get(event.event_id)
        if known is None or version > known.version:
            newest = max((s.event.ts for s in self.events.values()), default=event.ts)
            late = (known.late if known else False) or (
                event.ts < newest - self.rules.allowed_lateness
            )
            if late and known is None:
                self.late_events += 1
            self.events[event.event_id] = StoredEvent(event, version, primary, late, routed)
            self.merged_into = ""

    def forward_for(self, primary: str, routed: int) -> tuple[str, int] | None:
        """Where an event routed here at ``routed`` belongs instead: the customer its identifier
        moved to by a later decision, with that decision's position. A decision newer than the
        move means the identifier is home again, and the move is forgotten."""
        moved = self.forwards.get(primary)
        if moved is None:
            return None
        if moved[1] > routed:
            return moved
        del self.forwards[primary]
        return None

    def absorb(self, events: Iterable[StoredEvent], history: History | None) -> None:
        """Take events (and their folded history) moved here from a merged customer."""
        for stored in events:
            known = self.events.get(stored.event.event_id)
            if known is None or stored.version > known.version:
                self.events[stored.event.event_id] = stored
        if history is not None:
            self.history.absorb(history)
        self.merged_into = ""

    def take_moved(self, moves: Mapping[str, str], position: int) -> dict[str, list[StoredEvent]]:
        """Remove the events routed here before ``position`` whose identifier now belongs to
        another customer, grouped by that customer, and remember the moves for stragglers. If
        every event leaves for one customer, so does the history."""
        for identifier, target in moves.items():
            if identifier not in self.forwards or self.forwards[identifier][1] < position:
                self.forwards[identifier] = (target, position)
        moved: dict[str, list[StoredEvent]] = {}
        for event_id, stored in list(self.events.items()):
            target = moves.get(stored.primary, self.customer_id)
            if target != self.customer_id and stored.routed < position:
                moved.setdefault(target, []).append(
                    StoredEvent(stored.event, stored.version, stored.primary, stored.late, position)
                )
                del self.events[event_id]
        if moved and not self.events and len(moved) == 1:
            self.merged_into = next(iter(moved))
        return moved

    def hand_over_history(self) -> History | None:
        """The history goes with a merge into one customer; a split keeps it here."""
        if not self.merged_into:
            return None
        history, self.history = self.history, History()
        return history

    # -- reading ---------------------------------------------------------------------------------

    @property
    def is_empty(self) -> bool:
        """Nothing to show: no events, no history, nothing published, not merged away (a
        customer that only remembers where identifiers it never held went)."""
        return not (
            self.events
            or self.history.events
            or self._sessions
            or self._frictions
            or self.merged_into
        )

    def stitched(self, event_id: str) -> Stitched:
        stored = self.events[event_id]
        ordered = self._ordered()
        seq = self.history.events + next(
            i for i, s in enumerate(ordered, 1) if s.event.event_id == event_id
        )
        stage = self.history.last_stage
        for change in stage_changes(
            [s.event for s in ordered], self.rules.stages, self.history.stage
        ):
            if (change.ts, change.event_id) > stored.event.order:
                break
            stage = change.stage
        session_id = ""
        if not stored.late:
            for session in self._sessionize(ordered):
                if event_id in session.event_ids:
                    session_id = session.session_id
                    break
        rated = rated_touchpoints(s.event for s in ordered).get(event_id, "")
        return Stitched(
            session_id,
            stage,
            seq,
            stored.late,
            self._conversion(stored.event),
            rated,
            self._rated_place(rated, lambda i: self.stitched(i).stage),
        )

    def stitched_all(self) -> dict[str, Stitched]:
        """:meth:`stitched` for every event held, from one pass of the rules."""
        ordered = self._ordered()
        changes = stage_changes([s.event for s in ordered], self.rules.stages, self.history.stage)
        session_of: dict[str, str] = {}
        for session in self._sessionize(ordered):
            for event_id in session.event_ids:
                session_of.setdefault(event_id, session.session_id)
        rated = rated_touchpoints(s.event for s in ordered)
        found: dict[str, Stitched] = {}
        stage, next_change = self.history.last_stage, 0
        for seq, stored in enumerate(ordered, self.history.events + 1):
            event = stored.event
            while next_change < len(changes):
                change = changes[next_change]
                if (change.ts, change.event_id) > event.order:
                    break
                stage, next_change = change.stage, next_change + 1
            session_id = "" if stored.late else session_of.get(event.event_id, "")
            found[event.event_id] = Stitched(
                session_id,
                stage,
                seq,
                stored.late,
                self._conversion(event),
                rated.get(event.event_id, ""),
            )
        for answer, touchpoint in rated.items():
            if touchpoint:
                place = self._rated_place(touchpoint, lambda i: found[i].stage)
                found[answer] = replace(found[answer], rated=place)
        return found

    def _rated_place(self, event_id: str, stage_of: Callable[[str], str]) -> RatedPlace:
        """The channel, type, name (a page's path) and stage of the touchpoint a survey answer
        rates, for the rollups; empty when this journey does not hold it (or it is an answer)."""
        held = self.events.get(event_id)
        if held is None or held.event.is_survey:
            return ("", "", "", "")
        e = held.event
        return (
            e.channel,
            e.type,
            e.page_path if e.type == "page_view" else e.name,
            stage_of(event_id),
        )

    def _conversion(self, event: JourneyEvent) -> str:
        rule = conversion_rule(event, self.rules.conversions)
        return rule.name if rule else ""

    def update(self) -> JourneyUpdate:
        """Fold old sessions into history, then diff what the rules say against what was
        published, and remember it as published."""
        self._fold()
        ordered = self._ordered()
        sessions = self._sessionize(ordered)
        signatures = {s.session_id: _signature(s) for s in sessions}
        changed = [
            s for s in sessions if self._sessions.get(s.session_id) != signatures[s.session_id]
        ]
        retired = sorted(set(self._sessions) - set(signatures))
        self._sessions = signatures
        ended = sessions[:-1]
        found = {
            friction_id(f): f
            for f in frictions([s.event for s in ordered], ended, self.rules.frictions)
        }
        new_frictions = [f for key, f in found.items() if key not in self._frictions]
        retracted = [f for key, f in self._frictions.items() if key not in found]
        self._frictions = found
        stitched = self.stitched_all() if new_frictions or retracted else {}

        def place(f: Friction) -> list[Any]:
            """The touchpoint a friction is on: channel, type, name (a page's path), stage, and
            whether a bot sent it."""
            held = self.events.get(f.event_id)
            if held is None:
                return []
            e = held.event
            name = e.page_path if e.type == "page_view" else e.name
            return [e.channel, e.type, name, stitched[f.event_id].stage, e.is_bot]

        places = {
            friction_id(f): self._friction_places.pop(friction_id(f), []) or place(f)
            for f in retracted
        }
        for f in new_frictions:
            places[friction_id(f)] = self._friction_places[friction_id(f)] = place(f)
        return JourneyUpdate(
            changed, retired, new_frictions, retracted, self._summary(ordered), places
        )

    def _summary(self, ordered: list[StoredEvent]) -> dict[str, Any]:
        events = [s.event for s in ordered]
        changes = stage_changes(events, self.rules.stages, self.history.stage)
        stage, since = self.history.last_stage, self.history.last_stage_ts
        if changes:
            stage, since = changes[-1].stage, changes[-1].ts
        found = conversions(events, self.rules.conversions)
        times = [e.ts for e in events] + (
            [self.history.first_seen] if self.history.first_seen else []
        )
        return {
            "customer_id": self.customer_id,
            "first_seen": min(times) if times else None,
            "last_seen": max(e.ts for e in events) if events else None,
            "events": self.history.events + len(events),
            "sessions": self.history.sessions + len(self._sessions),
            "channels": sorted(self.history.channels | {e.channel for e in events if e.channel}),
            "stage": stage,
            "stage_since": since,
            "conversions": self.history.conversions + len(found),
            "value": self.history.value + sum(c.value for c in found),
            "frictions": self.history.frictions + len(self._frictions),
            "late_events": self.late_events,
            "merged_into": self.merged_into,
        }

    def _ordered(self) -> list[StoredEvent]:
        return sorted(self.events.values(), key=lambda s: s.event.order)

    def _sessionize(self, ordered: list[StoredEvent]) -> list[Session]:
        on_time = [s.event for s in ordered if not s.late]
        return sessionize(self.customer_id, on_time, self.rules.sessions)

    def _fold(self) -> None:
        """Beyond ``max_events``, the oldest whole sessions (never the newest) become history."""
        if len(self.events) <= self.rules.max_events:
            return
        ordered = self._ordered()
        sessions = self._sessionize(ordered)
        by_id = {s.event.event_id: s for s in ordered}
        folded: list[StoredEvent] = []
        remaining = len(self.events)
        for session in sessions[:-1]:
            if remaining <= self.rules.max_events:
                break
            members = [by_id[i] for i in session.event_ids]
            folded.extend(members)
            remaining -= len(members)
            self._sessions.pop(session.session_id, None)
            self.history.sessions += 1
        if not folded:
            return
        cutoff = folded[-1].event.order
        folded.extend(s for s in ordered if s.late and s.event.order <= cutoff)
        self._fold_events(folded)

    def _fold_events(self, folded: list[StoredEvent]) -> None:
        """Count ``folded`` into the history and drop them."""
        folded_ids = {s.event.event_id for s in folded}
        events = sorted((s.event for s in folded), key=lambda e: e.order)
        h = self.history
        h.events += len(folded_ids)
        h.first_seen = min([events[0].ts, *([h.first_seen] if h.first_seen else [])])
        h.channels |= {e.channel for e in events if e.channel}
        found = conversions(events, self.rules.conversions)
        h.conversions += len(found)
        h.value += sum(c.value for c in found)
        changes = stage_changes(events, self.rules.stages, h.stage)
        if changes:
            h.last_stage, h.last_stage_ts = changes[-1].stage, changes[-1].ts
        h.stage = stage_context(events, self.rules.stages, h.stage)
        for key in [k for k, f in self._frictions.items() if f.event_id in folded_ids]:
            del self._frictions[key]
            self._friction_places.pop(key, None)
            h.frictions += 1
        for event_id in folded_ids:
            del self.events[event_id]

    # -- state -----------------------------------------------------------------------------------

    def bounded_state(self) -> dict[str, Any]:
        """:meth:`to_state`, kept under ``rules.max_state_bytes`` whatever the events hold. Over
        it, the oldest events are folded into the history (even part of the current session,
        whose rest then counts as a session of its own), then the oldest moves are forgotten;
        both are counted. Raises :class:`StateTooLarge` if even the newest event cannot fit."""
        return self._bounded()[0]

    def encoded_state(self) -> bytes:
        """:meth:`bounded_state` as the JSON a changelog-backed table keeps, encoded once:
        measuring the state against the limit encodes it anyway. Copied to its own length:
        orjson's bytes keep the buffer they grew in, up to twice that, for as long as they live
        (in a memory table store, as long as the customer)."""
        return bytes(memoryview(self._bounded()[1]))

    def _bounded(self) -> tuple[dict[str, Any], bytes]:
        state = self.to_state()
        limit = self.rules.max_state_bytes
        encoded = orjson.dumps(state)
        size = len(encoded) + len(self.customer_id.encode())
        if size <= limit:
            return state, encoded
        # Aim well below the limit, so that a customer at the edge does not fold on every event.
        excess = size - limit * 3 // 4
        ordered = self._ordered()
        folded: list[StoredEvent] = []
        for stored in ordered[:-1]:
            if excess <= 0:
                break
            folded.append(stored)
            excess -= len(orjson.dumps(stored.to_state())) + 1
        if folded:
            folded_ids = {s.event.event_id for s in folded}
            for session in self._sessionize(ordered):
                if folded_ids.isdisjoint(session.event_ids):
                    continue
                if self._sessions.pop(session.session_id, None) is not None:
                    self.history.sessions += 1
            self._fold_events(folded)
            STATE_FOLDED.labels("journey").inc(len(folded))
        for identifier, _ in sorted(self.forwards.items(), key=lambda item: item[1][1]):
            if excess <= 0:
                break
            excess -= len(orjson.dumps({identifier: self.forwards.pop(identifier)}))
            STATE_FOLDED.labels("journey_forwards").inc()
        state = self.to_state()
        encoded = orjson.dumps(state)
        size = len(encoded) + len(self.customer_id.encode())
        if size > limit:
            raise StateTooLarge(f"customer {self.customer_id[:64]}'s journey", size, limit)
        return state, encoded

    def to_state(self) -> dict[str, Any]:
        return {
            "events": [s.to_state() for s in self.events.values()],
            "history": self.history.to_state(),
            "late_events": self.late_events,
            "merged_into": self.merged_into,
            "forwards": self.forwards,
            "sessions": self._sessions,
            "frictions": [
                [f.reason, f.severity, f.ts.isoformat(), f.event_id, f.detail]
                for f in self._frictions.values()
            ],
            "friction_places": self._friction_places,
        }

    @classmethod
    def from_state(
        cls, customer_id: str, rules: JourneyRules, state: Mapping[str, Any] | bytes | None
    ) -> CustomerJourney:
        """The journey :meth:`to_state` kept, or its JSON (:meth:`encoded_state`)."""
        journey = cls(customer_id, rules)
        if not state:
            return journey
        if isinstance(state, bytes):
            return cls.from_state(customer_id, rules, orjson.loads(state))
        for raw in state["events"]:
            stored = StoredEvent.from_state(raw)
            journey.events[stored.event.event_id] = stored
        journey.history = History.from_state(state["history"])
        journey.late_events = state["late_events"]
        journey.merged_into = state["merged_into"]
        journey.forwards = {k: (v[0], v[1]) for k, v in state["forwards"].items()}
        journey._sessions = dict(state["sessions"])
        for reason, severity, ts, event_id, detail in state["frictions"]:
            f = Friction(reason, severity, datetime.fromisoformat(ts), event_id, detail)
            journey._frictions[friction_id(f)] = f
        journey._friction_places = dict(state.get("friction_places", {}))
        return journey


def _signature(session: Session) -> list[Any]:
    """What a published session row shows; a session is rewritten when this changes. A list,
    so that it compares equal after a trip through JSON state."""
    return [
        session.start.isoformat(),
        session.end.isoformat(),
        len(session.event_ids),
        session.channel,
        session.campaign,
        session.page_views,
    ]


def rules_from_settings(settings: Settings) -> JourneyRules:
    """The journey rules the settings describe (docs/journeys.md)."""
    t = settings.friction_thresholds
    defaults = FrictionRules()

    def threshold(name: str, default: float) -> float:
        return float(t.get(name, default))

    friction = FrictionRules(
        long_queue_wait=timedelta(
            seconds=threshold("long_queue_wait_seconds", defaults.long_queue_wait.total_seconds())
        ),
        long_hold=timedelta(
            seconds=threshold("long_hold_seconds", defaults.long_hold.total_seconds())
        ),
        transfers=int(threshold("transfers", defaults.transfers)),
        repeat_contact_within=timedelta(
            hours=threshold(
                "repeat_contact_hours", defaults.repeat_contact_within.total_seconds() / 3600
            )
        ),
        web_to_phone_within=timedelta(
            minutes=threshold(
                "web_to_phone_minutes", defaults.web_to_phone_within.total_seconds() / 60
            )
        ),
        error_status=int(threshold("error_status", defaults.error_status)),
        nps_at_most=threshold("nps_at_most", defaults.nps_at_most),
        csat_at_most=threshold("csat_at_most", defaults.csat_at_most),
        ces_at_least=threshold("ces_at_least", defaults.ces_at_least),
        ticket_first_reply=timedelta(
            minutes=threshold(
                "ticket_first_reply_minutes", defaults.ticket_first_reply.total_seconds() / 60
            )
        ),
        ticket_resolution=timedelta(
            hours=threshold(
                "ticket_resolution_hours", defaults.ticket_resolution.total_seconds() / 3600
            )
        ),
        chat_first_reply=timedelta(
            seconds=threshold("chat_first_reply_seconds", defaults.chat_first_reply.total_seconds())
        ),
        chat_resolution=timedelta(
            minutes=threshold(
                "chat_resolution_minutes", defaults.chat_resolution.total_seconds() / 60
            )
        ),
        reopens=int(threshold("reopens", defaults.reopens)),
    )
    stages = tuple(
        StageRule(
            r["stage"],
            frozenset(r.get("types", ())),
            tuple(r.get("paths", ())),
            tuple(q.lower() for q in r.get("queues", ())),
        )
        for r in settings.journey_stages
    )
    found = tuple(
        ConversionRule(r["name"], frozenset(r.get("types", ())), r.get("min_value"))
        for r in settings.journey_conversions
    )
    return JourneyRules(
        sessions=SessionRules(
            inactivity=timedelta(minutes=settings.session_inactivity_minutes),
            split_on_campaign_change=settings.session_split_on_campaign,
            split_at_midnight=settings.session_split_at_midnight,
        ),
        stages=stages or DEFAULT_STAGES,
        frictions=friction,
        conversions=found or DEFAULT_CONVERSIONS,
        allowed_lateness=timedelta(minutes=settings.journey_allowed_lateness_minutes),
        max_events=settings.journey_max_events,
        max_state_bytes=settings.state_max_bytes,
    )
