"""Tickets: many helpdesk callbacks per ticket converge to one ticket record. Plain Python, no Faust.

The state of a ticket is the set of its distinct callbacks, keyed by callback id. The record is a
pure function of that set, so any arrival order, and any number of retries, give the same record.
Its version is the number of distinct callbacks merged, so it only grows as the ticket is learnt.

A ticket (or chat) becomes one ``ticket`` (or ``chat``) touchpoint on the ``helpdesk`` (or
``chat``) channel, whose properties carry the first-reply time, the resolution time and the
reopens that the journey rules judge (agents/journey.py). A satisfaction rating becomes a second
touchpoint: a CSAT survey answer whose ``survey.touchpoint_id`` is the ticket's touchpoint.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from agents.callback_state import CallbackState
from agents.forget import ForgottenIdentifiers
from agents.ingest import RawMessage, enriched
from collectors.helpdesk.records import KINDS, LIFECYCLE, SOURCE, SupportCallback
from tracker.metrics import TICKET_CALLBACKS_MERGED
from tracker.store.sink import Sink
from tracker.touchpoint import Touchpoint

__all__ = [
    "MAX_CALLBACKS_PER_TICKET",
    "TicketRecord",
    "TicketsPipeline",
    "csat_event_id",
    "csat_touchpoint",
    "merge_callbacks",
    "ticket_event_id",
    "ticket_row",
    "ticket_touchpoint",
]

log = logging.getLogger(__name__)

# Fixed forever: the touchpoint of a ticket is uuid5(this, "provider:ticket_id").
TICKET_NAMESPACE: Final = uuid.UUID("6f2a9c1e-4b7d-4e8a-9c3f-1d5e7b2a8c40")
# A ticket with more callbacks than this is a runaway; further callbacks are counted, not kept.
MAX_CALLBACKS_PER_TICKET: Final = 500


@dataclass(frozen=True, slots=True)
class TicketRecord:
    """Everything known about one ticket or conversation, merged from its callbacks."""

    provider: str
    ticket_id: str
    kind: str
    version: int
    opened_at: datetime
    received_ts: datetime
    status: str  # open or solved
    provider_status: str
    email_hash: str
    phone_hash: str
    user_id: str
    agent: str
    queue: str
    priority: str
    via: str
    first_reply_at: datetime | None
    solved_at: datetime | None
    reopens: int
    rating: float | None
    rated_at: datetime | None

    @property
    def event_id(self) -> str:
        return ticket_event_id(self.provider, self.ticket_id)

    @property
    def channel(self) -> str:
        return KINDS[self.kind]

    @property
    def first_reply_seconds(self) -> float | None:
        if self.first_reply_at is None:
            return None
        return max(0.0, (self.first_reply_at - self.opened_at).total_seconds())

    @property
    def resolution_seconds(self) -> float | None:
        if self.solved_at is None:
            return None
        return max(0.0, (self.solved_at - self.opened_at).total_seconds())


def ticket_event_id(provider: str, ticket_id: str) -> str:
    return str(uuid.uuid5(TICKET_NAMESPACE, f"{provider}:{ticket_id}"))


def csat_event_id(provider: str, ticket_id: str) -> str:
    """The event_id of a ticket's CSAT answer: one per ticket, the latest rating wins."""
    return str(uuid.uuid5(TICKET_NAMESPACE, f"{provider}:{ticket_id}|csat"))


def _order(callback: SupportCallback) -> tuple[datetime, int, str]:
    """Provider time first; between equals, the lifecycle's order; then the id, for a total order."""
    return (callback.event_ts, LIFECYCLE.index(callback.event), callback.callback_id)


def merge_callbacks(callbacks: Iterable[SupportCallback]) -> TicketRecord:
    """The ticket record of a set of callbacks; duplicates (same callback id) count once."""
    distinct = {c.callback_id: c for c in sorted(callbacks, key=_order)}
    if not distinct:
        raise ValueError("a ticket record needs at least one callback")
    ordered = sorted(distinct.values(), key=_order)

    def latest(name: str) -> str:
        """What moves (status, agent, queue): the latest callback that knows."""
        for callback in reversed(ordered):
            if value := getattr(callback, name):
                return str(value)
        return ""

    def first(name: str) -> str:
        """Who asked, and how the ticket came in: the earliest callback that knows."""
        for callback in ordered:
            if value := getattr(callback, name):
                return str(value)
        return ""

    opens = [c.opened_at for c in ordered if c.opened_at] or [
        c.event_ts for c in ordered if c.event == "opened"
    ]
    opened_at = min(opens) if opens else ordered[0].event_ts
    replies = [c.first_reply_at for c in ordered if c.first_reply_at] + [
        c.event_ts for c in ordered if c.event == "replied"
    ]
    # The lifecycle, walked in time order: a solve closes the ticket; an explicit reopen, or the
    # requester writing again after a solve, opens it again.
    solved_at: datetime | None = None
    reopened = 0
    for callback in ordered:
        if callback.event == "solved":
            solved_at = callback.solved_at or callback.event_ts
        elif solved_at is not None and callback.event in ("reopened", "customer_replied"):
            solved_at = None
            reopened += 1
    reported = [c.reopens for c in ordered if c.reopens is not None]
    rated = [c for c in ordered if c.rating is not None]
    return TicketRecord(
        provider=ordered[0].provider,
        ticket_id=ordered[0].ticket_id,
        kind=first("kind"),
        version=len(distinct),
        opened_at=opened_at,
        received_ts=min(c.received_ts for c in ordered),
        status="solved" if solved_at is not None else "open",
        provider_status=latest("status"),
        email_hash=first("email_hash"),
        phone_hash=first("phone_hash"),
        user_id=first("user_id"),
        agent=latest("agent"),
        queue=latest("queue"),
        priority=latest("priority"),
        via=first("via"),
        first_reply_at=max(opened_at, min(replies)) if replies else None,
        solved_at=max(opened_at, solved_at) if solved_at is not None else None,
        reopens=max([reopened, *reported]),
        rating=rated[-1].rating if rated else None,
        rated_at=rated[-1].event_ts if rated else None,
    )


def ticket_row(record: TicketRecord) -> dict[str, Any]:
    """The ``tickets`` table's row, by column name (tracker/store/tables.py: ``TICKETS``)."""
    return {
        "ticket_uuid": record.event_id,
        "version": record.version,
        "provider": record.provider,
        "ticket_id": record.ticket_id,
        "kind": record.kind,
        "channel": record.channel,
        "opened_at": record.opened_at,
        "status": record.status,
        "provider_status": record.provider_status,
        "email_hash": record.email_hash,
        "phone_hash": record.phone_hash,
        "user_id": record.user_id,
        "agent": record.agent,
        "queue": record.queue,
        "priority": record.priority,
        "via": record.via,
        "first_reply_at": record.first_reply_at,
        "solved_at": record.solved_at,
        "first_reply_seconds": record.first_reply_seconds,
        "resolution_seconds": record.resolution_seconds,
        "reopens": record.reopens,
        "rating": record.rating,
        "rated_at": record.rated_at,
        "callbacks": record.version,
    }


def ticket_touchpoint(record: TicketRecord) -> Touchpoint:
    """The ticket as a touchpoint: one event_id per ticket, a higher version each time it is learnt."""
    properties = {
        "provider": record.provider,
        "ticket_id": record.ticket_id,
        "status": record.status,
        "provider_status": record.provider_status,
        "agent": record.agent,
        "queue": record.queue,
        "priority": record.priority,
        "via": record.via,
        "first_reply_seconds": _seconds(record.first_reply_seconds),
        "resolution_seconds": _seconds(record.resolution_seconds),
        "reopens": str(record.reopens) if record.reopens else "",
        "csat": "" if record.rating is None else f"{record.rating:g}",
    }
    return Touchpoint(
        event_id=record.event_id,
        type=record.kind,
        name=f"{record.kind} {record.status}",
        source=SOURCE,
        channel=record.channel,
        ts=record.opened_at,
        device_ts=record.opened_at,
        received_ts=record.received_ts,
        version=record.version,
        user_id=record.user_id,
        email_hash=record.email_hash,
        phone_hash=record.phone_hash,
        properties={k: v for k, v in properties.items() if v},
    )


def csat_touchpoint(record: TicketRecord) -> Touchpoint | None:
    """The requester's satisfaction rating as a CSAT answer that rates the ticket's touchpoint;
    None while the ticket is unrated."""
    if record.rating is None or record.rated_at is None:
        return None
    return Touchpoint(
        event_id=csat_event_id(record.provider, record.ticket_id),
        type="survey_response",
        name=f"{record.kind} satisfaction",
        source=SOURCE,
        channel=record.channel,
        ts=record.rated_at,
        device_ts=record.rated_at,
        received_ts=record.received_ts,
        version=record.version,
        user_id=record.user_id,
        email_hash=record.email_hash,
        phone_hash=record.phone_hash,
        properties={"provider": record.provider, "ticket_id": record.ticket_id},
        survey={"kind": "csat", "score": record.rating, "touchpoint_id": record.event_id},
    )


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


class TicketsPipeline:
    """Merges a batch of callbacks into per-ticket state and writes each touched ticket's record.

    ``state`` is any mutable mapping from ticket key to ``{callback_id: wire}``: a changelog-backed
    Faust table in the worker, a dict in tests. Rows are written before the caller acknowledges
    the batch; a replay finds the callbacks already merged and writes nothing new.
    """

    def __init__(
        self,
        tickets: Sink,
        touchpoints: Sink,
        dead_letters: Sink,
        forgotten: ForgottenIdentifiers | None = None,
        max_state_bytes: int = 262_144,
    ) -> None:
        self.tickets = tickets
        self.touchpoints = touchpoints
        self.dead_letters = dead_letters
        self.forgotten = ForgottenIdentifiers() if forgotten is None else forgotten
        self.state = CallbackState(
            stage="tickets",
            noun="ticket",
            namespace=TICKET_NAMESPACE,
            read=SupportCallback.from_wire,
            key=lambda callback: callback.ticket_key,
            merged=TICKET_CALLBACKS_MERGED,
            max_callbacks=MAX_CALLBACKS_PER_TICKET,
            max_state_bytes=max_state_bytes,
            dead_letters=dead_letters,
        )

    def discard(self) -> None:
        """Forget the rows a failed attempt added and did not write."""
        for sink in (self.tickets, self.touchpoints, self.dead_letters):
            sink.discard()

    async def handle(self, messages: Sequence[RawMessage], state: MutableMapping[str, Any]) -> None:
        """Outputs first, state last: a batch that fails midway leaves the state as it was."""
        folded = self.state.fold(messages, state)
        written: dict[str, dict[str, Any]] = {}
        for key in folded.changed:  # a batch of retries alone rewrites nothing
            known = folded.touched[key]
            record = merge_callbacks(SupportCallback.from_wire(w) for w in known.values())
            touchpoint = ticket_touchpoint(record)
            if self.forgotten.forgets(touchpoint):
                continue  # a forgotten person's tickets are not stored again
            written[record.event_id] = known
            self.tickets.add(record.event_id, record.opened_at, ticket_row(record), record.version)
            for made in (touchpoint, csat_touchpoint(record)):
                if made is not None:
                    self.touchpoints.add(made.event_id, made.ts, enriched(made), made.version)
        await self.state.write((self.tickets, self.touchpoints), written, folded, state)
