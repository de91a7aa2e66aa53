"""Journey rules for one customer: sessions, stages, friction and conversions. Plain Python.

Everything here is a function of the customer's events, sorted by event time, so the result is
the same whatever order and however many times the events arrive. The streaming agent (to come
with identity stitching) keeps each customer's recent events and re-applies these functions when
one arrives; a late event within the allowed lateness yields corrected session versions.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

__all__ = [
    "DEFAULT_CONVERSIONS",
    "DEFAULT_STAGES",
    "NEGATIVE_CALL_TOPIC",
    "Conversion",
    "ConversionRule",
    "Friction",
    "FrictionRules",
    "JourneyEvent",
    "Session",
    "SessionRules",
    "StageChange",
    "StageContext",
    "StageRule",
    "conversion_rule",
    "conversions",
    "frictions",
    "name_uuid",
    "rated_touchpoints",
    "sessionize",
    "stage_changes",
    "stage_context",
]

_SESSION_NAMESPACE: Final = uuid.UUID("9b0f3c8e-3c1a-4d8e-8f0b-5a2e7c6d1e42")


def name_uuid(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` without the UUID object (a third of the cost):
    session and friction ids are made again for every event of each customer a batch touches."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


CONTACT_TYPES: Final = frozenset({"call", "chat", "support_email", "ticket"})
# The helpdesk's touchpoints (agents/tickets.py), whose first reply, resolution and reopens are
# judged against the friction thresholds.
SUPPORT_TYPES: Final = frozenset({"chat", "ticket"})
# A topic a call's transcript flags is a friction, one per topic (its name is the detail).
NEGATIVE_CALL_TOPIC: Final = "negative_call_topic"
# Email events that are a friction, and its severity: the customer cannot be reached, or no
# longer wants to be (collectors/email/records.py writes them).
EMAIL_FRICTIONS: Final = {
    "email_bounce": "medium",
    "email_spam_report": "high",
    "email_unsubscribe": "medium",
}


@dataclass(frozen=True, slots=True)
class JourneyEvent:
    """The parts of a touchpoint the journey rules read."""

    event_id: str
    ts: datetime
    type: str
    channel: str = ""
    source: str = ""
    name: str = ""
    page_path: str = ""
    campaign: str = ""
    value: float | None = None
    status_code: int | None = None
    queue: str = ""
    disposition: str = ""
    queue_wait_seconds: float = 0.0
    hold_seconds: float = 0.0
    transfers: int = 0
    cold_transfers: int = 0
    survey_kind: str = ""
    survey_score: float | None = None
    acquisition: str = ""
    """Where the customer came from, if this event starts a session (enrich.acquisition_channel)."""
    survey_touchpoint_id: str = ""
    """For a survey answer: the event_id of the touchpoint it rates, as the client named it."""
    is_bot: bool = False
    first_reply_seconds: float | None = None
    """For a ticket or chat: how long the requester waited for a first answer."""
    resolution_seconds: float | None = None
    """For a ticket or chat that is solved: how long it took, from opening to the last solve."""
    reopens: int = 0
    """For a ticket or chat: how many times it was opened again after a solve."""
    call_topics: tuple[str, ...] = ()
    """Topics a call's transcript flags (collectors/calls/transcripts.py)."""

    @property
    def is_survey(self) -> bool:
        return bool(self.survey_kind) or self.type == "survey_response"

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.ts, self.event_id)

    @property
    def is_contact(self) -> bool:
        return self.type in CONTACT_TYPES


def _ordered(events: Iterable[JourneyEvent]) -> list[JourneyEvent]:
    """Sorted by event time, each event_id once (the first by order wins on a tie)."""
    unique: dict[str, JourneyEvent] = {}
    for event in sorted(events, key=lambda e: e.order):
        unique.setdefault(event.event_id, event)
    return list(unique.values())


# -- sessions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRules:
    inactivity: timedelta = timedelta(minutes=30)
    split_on_campaign_change: bool = False
    split_at_midnight: bool = False


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    start: datetime
    end: datetime
    event_ids: tuple[str, ...]
    channel: str
    campaign: str
    page_views: int

    @property
    def is_bounce(self) -> bool:
        """One page view and nothing else."""
        return self.page_views == 1 and len(self.event_ids) == 1


def sessionize(
    customer_id: str, events: Iterable[JourneyEvent], rules: SessionRules
) -> list[Session]:
    """Sessions in event time. A session's id follows from the customer and its first event, so
    it is stable while events are added to it, and changes only when a late event starts it."""
    sessions: list[list[JourneyEvent]] = []
    for event in _ordered(events):
        if not sessions or _starts_new_session(sessions[-1], event, rules):
            sessions.append([event])
        else:
            sessions[-1].append(event)
    return [_session(customer_id, members) for members in sessions]


def _starts_new_session(
    current: list[JourneyEvent], event: JourneyEvent, rules: SessionRules
) -> bool:
    last = current[-1]
    if event.ts - last.ts > rules.inactivity:
        return True
    if rules.split_at_midnight and event.ts.date() != last.ts.date():
        return True
    if rules.split_on_campaign_change and event.campaign:
        current_campaign = next((e.campaign for e in reversed(current) if e.campaign), "")
        return bool(current_campaign) and event.campaign != current_campaign
    return False


def _session(customer_id: str, members: Sequence[JourneyEvent]) -> Session:
    first = members[0]
    return Session(
        session_id=name_uuid(_SESSION_NAMESPACE, f"{customer_id}|{first.event_id}"),
        start=first.ts,
        end=members[-1].ts,
        event_ids=tuple(e.event_id for e in members),
        channel=first.acquisition or first.channel,
        campaign=next((e.campaign for e in members if e.campaign), ""),
        page_views=sum(1 for e in members if e.type == "page_view"),
    )


# -- stages --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageRule:
    """An event of one of ``types`` (any type when empty) whose page path starts with one of
    ``path_prefixes`` (any page when empty) puts the customer in ``stage``."""

    stage: str
    types: frozenset[str] = frozenset()
    path_prefixes: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()

    def matches(self, event: JourneyEvent) -> bool:
        if self.types and event.type not in self.types:
            return False
        if self.path_prefixes and not event.page_path.startswith(self.path_prefixes):
            return False
        return not self.queues or any(q in event.queue.lower() for q in self.queues)


DEFAULT_STAGES: Final = (
    StageRule("purchase", frozenset({"purchase", "order_completed"})),
    StageRule(
        "support",
        frozenset({"call", "chat", "ticket", "support_email"}),
        queues=("support", "care", "help"),
    ),
    # A helpdesk's ticket or chat is support whatever its queue (agents/tickets.py).
    StageRule("support", SUPPORT_TYPES),
    StageRule("support", frozenset({"page_view"}), path_prefixes=("/support", "/help", "/contact")),
    StageRule(
        "consideration",
        frozenset({"form_submit", "identify", "signup", "add_to_cart", "begin_checkout"}),
    ),
    StageRule(
        "consideration",
        frozenset({"page_view"}),
        path_prefixes=("/pricing", "/product", "/compare", "/demo", "/cart", "/checkout"),
    ),
    StageRule("awareness"),
)


@dataclass(frozen=True, slots=True)
class StageChange:
    stage: str
    ts: datetime
    event_id: str


_FUNNEL: Final = ("awareness", "consideration")


@dataclass(frozen=True, slots=True)
class StageContext:
    """What earlier history, no longer at hand, leaves behind for the stage rules."""

    funnel: str = ""
    purchased: bool = False


def stage_changes(
    events: Iterable[JourneyEvent],
    rules: Sequence[StageRule] = DEFAULT_STAGES,
    context: StageContext = StageContext(),
) -> list[StageChange]:
    """Where the customer stood after each event, recorded when it changes. The first matching
    rule names the event's stage. The funnel (awareness, consideration) only moves forward;
    support is a side stage the next other event leaves; after a purchase, what would be
    awareness or consideration is post-purchase."""
    return _stages(_ordered(events), rules, context)[0]


def stage_context(
    events: Iterable[JourneyEvent],
    rules: Sequence[StageRule] = DEFAULT_STAGES,
    context: StageContext = StageContext(),
) -> StageContext:
    """The context these events leave for the ones after them."""
    return _stages(_ordered(events), rules, context)[1]


def _stages(
    ordered: list[JourneyEvent], rules: Sequence[StageRule], context: StageContext
) -> tuple[list[StageChange], StageContext]:
    changes: list[StageChange] = []
    funnel, purchased = context.funnel, context.purchased
    for event in ordered:
        stage = next((r.stage for r in rules if r.matches(event)), "")
        if stage == "purchase":
            purchased = True
        elif stage in _FUNNEL:
            if purchased:
                stage = "post_purchase"
            else:
                funnel = max(funnel, stage, key=lambda s: _FUNNEL.index(s) if s else -1)
                stage = funnel
        if stage and (not changes or changes[-1].stage != stage):
            changes.append(StageChange(stage, event.ts, event.event_id))
    return changes, StageContext(funnel, purchased)


# -- friction ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrictionRules:
    long_queue_wait: timedelta = timedelta(minutes=2)
    long_hold: timedelta = timedelta(minutes=3)
    transfers: int = 2
    repeat_contact_within: timedelta = timedelta(hours=24)
    web_to_phone_within: timedelta = timedelta(minutes=10)
    error_status: int = 400
    checkout_paths: tuple[str, ...] = ("/checkout",)
    # A survey answer at or past these is a friction: an NPS detractor (0-10), a low CSAT (1-5),
    # a high customer-effort score (1-7).
    nps_at_most: float = 6
    csat_at_most: float = 2
    ces_at_least: float = 5
    # Tickets and chats (agents/tickets.py): a slow first reply, a slow resolution, a reopen.
    ticket_first_reply: timedelta = timedelta(hours=1)
    ticket_resolution: timedelta = timedelta(hours=24)
    chat_first_reply: timedelta = timedelta(minutes=2)
    chat_resolution: timedelta = timedelta(minutes=30)
    reopens: int = 1


@dataclass(frozen=True, slots=True)
class Friction:
    reason: str
    severity: str
    ts: datetime
    event_id: str
    detail: str = ""


def frictions(
    events: Iterable[JourneyEvent],
    sessions: Sequence[Session],
    rules: FrictionRules = FrictionRules(),
) -> list[Friction]:
    """Every friction the events show, in event order. Session-level ones (bounce, abandoned
    checkout) are judged on the sessions given, so pass only sessions that have ended."""
    ordered = _ordered(events)
    found: list[Friction] = []
    last_contact: JourneyEvent | None = None
    last_web: JourneyEvent | None = None
    for event in ordered:
        found.extend(_event_frictions(event, rules))
        if event.is_contact:
            if last_contact and event.ts - last_contact.ts <= rules.repeat_contact_within:
                found.append(
                    Friction(
                        "repeat_contact",
                        "medium",
                        event.ts,
                        event.event_id,
                        f"previous contact {last_contact.event_id}",
                    )
                )
            if (
                event.type == "call"
                and last_web
                and event.ts - last_web.ts <= rules.web_to_phone_within
            ):
                found.append(
                    Friction(
                        "web_to_phone",
                        "low",
                        event.ts,
                        event.event_id,
                        f"after web event {last_web.event_id}",
                    )
                )
            last_contact = event
        elif event.source == "web_beacon":
            last_web = event
    by_id = {e.event_id: e for e in ordered}
    for session in sessions:
        members = [by_id[i] for i in session.event_ids if i in by_id]
        if session.is_bounce:
            found.append(Friction("bounce", "low", session.start, session.event_ids[0]))
        checkout = next(
            (
                e
                for e in members
                if e.page_path.startswith(rules.checkout_paths) or e.type == "begin_checkout"
            ),
            None,
        )
        if checkout and not any(e.type in ("purchase", "order_completed") for e in members):
            found.append(Friction("abandoned_checkout", "medium", checkout.ts, checkout.event_id))
    found.sort(key=lambda f: (f.ts, f.event_id, f.reason))
    return found


def _event_frictions(event: JourneyEvent, rules: FrictionRules) -> list[Friction]:
    found = []
    if event.type == "call":
        if event.disposition == "abandoned":
            found.append(Friction("abandoned_call", "high", event.ts, event.event_id))
        if event.queue_wait_seconds >= rules.long_queue_wait.total_seconds():
            found.append(
                Friction(
                    "long_queue_wait",
                    "medium",
                    event.ts,
                    event.event_id,
                    f"{event.queue_wait_seconds:.0f} s",
                )
            )
        if event.hold_seconds >= rules.long_hold.total_seconds():
            found.append(
                Friction(
                    "long_hold", "medium", event.ts, event.event_id, f"{event.hold_seconds:.0f} s"
                )
            )
        found.extend(
            Friction(NEGATIVE_CALL_TOPIC, "medium", event.ts, event.event_id, topic)
            for topic in event.call_topics
        )
        if event.cold_transfers:
            found.append(Friction("cold_transfer", "medium", event.ts, event.event_id))
        if event.transfers >= rules.transfers:
            found.append(
                Friction(
                    "many_transfers",
                    "medium",
                    event.ts,
                    event.event_id,
                    f"{event.transfers} transfers",
                )
            )
    if event.survey_score is not None and _low_score(event.survey_kind, event.survey_score, rules):
        found.append(
            Friction(
                f"low_{event.survey_kind}",
                "high" if event.survey_kind == "nps" else "medium",
                event.ts,
                event.event_id,
                f"{event.survey_kind} {event.survey_score:g}",
            )
        )
    if event.type in SUPPORT_TYPES:
        found.extend(_support_frictions(event, rules))
    if event.type in EMAIL_FRICTIONS:
        found.append(Friction(event.type, EMAIL_FRICTIONS[event.type], event.ts, event.event_id))
    if (event.status_code or 0) >= rules.error_status or event.type == "error":
        found.append(
            Friction("error_page", "low", event.ts, event.event_id, str(event.status_code or ""))
        )
    return found


def _support_frictions(event: JourneyEvent, rules: FrictionRules) -> list[Friction]:
    """A ticket's or chat's frictions, judged on what its record says so far: each appears once
    the ticket shows it (a friction's id is its event and reason, so a later version of the
    ticket neither repeats nor loses it, unless the fact itself changes)."""
    chat = event.type == "chat"
    first_reply = rules.chat_first_reply if chat else rules.ticket_first_reply
    resolution = rules.chat_resolution if chat else rules.ticket_resolution
    found = []
    waited = event.first_reply_seconds
    if waited is not None and waited >= first_reply.total_seconds():
        found.append(
            Friction("slow_first_reply", "medium", event.ts, event.event_id, f"{waited:.0f} s")
        )
    took = event.resolution_seconds
    if took is not None and took >= resolution.total_seconds():
        found.append(
            Friction("slow_resolution", "medium", event.ts, event.event_id, f"{took:.0f} s")
        )
    if rules.reopens and event.reopens >= rules.reopens:
        found.append(
            Friction("reopened", "high", event.ts, event.event_id, f"{event.reopens} reopens")
        )
    return found


def _low_score(kind: str, score: float, rules: FrictionRules) -> bool:
    if kind == "nps":
        return score <= rules.nps_at_most
    if kind == "csat":
        return score <= rules.csat_at_most
    return kind == "ces" and score >= rules.ces_at_least


# -- conversions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConversionRule:
    name: str
    types: frozenset[str]
    min_value: float | None = None


DEFAULT_CONVERSIONS: Final = (
    ConversionRule("purchase", frozenset({"purchase", "order_completed"}), 0.0),
)


@dataclass(frozen=True, slots=True)
class Conversion:
    name: str
    ts: datetime
    event_id: str
    value: float = field(default=0.0)


def conversions(
    events: Iterable[JourneyEvent], rules: Sequence[ConversionRule] = DEFAULT_CONVERSIONS
) -> list[Conversion]:
    found = []
    for event in _ordered(events):
        if rule := conversion_rule(event, rules):
            found.append(Conversion(rule.name, event.ts, event.event_id, event.value or 0.0))
    return found


def conversion_rule(
    event: JourneyEvent, rules: Sequence[ConversionRule] = DEFAULT_CONVERSIONS
) -> ConversionRule | None:
    """The first conversion rule the event matches, if any."""
    for rule in rules:
        if event.type not in rule.types:
            continue
        if rule.min_value is not None and (event.value is None or event.value <= rule.min_value):
            continue
        return rule
    return None


# -- surveys -------------------------------------------------------------------------------------


def rated_touchpoints(events: Iterable[JourneyEvent]) -> dict[str, str]:
    """For each survey answer, the event_id of the touchpoint it rates: the one the client named
    (``survey.touchpoint_id``), else the customer's most recent non-survey touchpoint before it
    in event time; empty when there is none."""
    rated: dict[str, str] = {}
    last = ""
    for event in _ordered(events):
        if event.is_survey:
            rated[event.event_id] = event.survey_touchpoint_id or last
        else:
            last = event.event_id
    return rated
