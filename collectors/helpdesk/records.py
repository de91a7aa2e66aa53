"""A support callback: one helpdesk or chat webhook about one ticket or conversation, verified
and normalized.

Helpdesks send several callbacks per ticket (opened, an agent's reply, solved, reopened, a
satisfaction rating...). The helpdesk collector turns each into a :class:`SupportCallback` and
produces it to the tickets topic, keyed by :attr:`SupportCallback.ticket_key`; the worker merges
every callback of a ticket into one versioned record (agents/tickets.py). Nothing here knows HTTP.

The requester's email and phone never travel in clear: they are normalized and hashed with the
deployment's salt, the same hashes the beacon stores, so a ticket joins the customer's journey.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Final

from tracker.bounds import parse_aware
from tracker.privacy import InvalidIdentifier, hash_identifier, normalize_email, normalize_phone

__all__ = [
    "KINDS",
    "LIFECYCLE",
    "MAX_CALLBACK_ID_LENGTH",
    "MAX_ID_LENGTH",
    "SOURCE",
    "SupportCallback",
    "hash_email",
    "hash_phone",
]

SOURCE: Final = "support_webhook"
# A ticket lands on the helpdesk channel, a live chat or messenger conversation on chat.
KINDS: Final = {"ticket": "helpdesk", "chat": "chat"}
# What one callback says happened, in the order a ticket usually moves through them.
LIFECYCLE: Final = (
    "updated",  # news that does not move the ticket on: an assignment, a priority, a note
    "opened",
    "customer_replied",
    "replied",  # an agent answered the requester
    "solved",  # solved or closed
    "reopened",
    "rated",  # the requester rated the support (CSAT)
)

# The bounds of a callback (docs/helpdesk.md), so that no ticket's record can grow without limit.
MAX_ID_LENGTH: Final = 256  # ticket_id, agent, queue, priority, via, status, any text read
MAX_CALLBACK_ID_LENGTH: Final = 1024
MAX_REOPENS: Final = 10_000
_BOUNDED_TEXT: Final = ("provider", "ticket_id", "status", "agent", "queue", "priority", "via")


def hash_email(raw: str, salt: str) -> str:
    """The salted hash of an email as the beacon stores it; ``""`` for what is not an address."""
    try:
        return hash_identifier("email", normalize_email(raw), salt) if raw.strip() else ""
    except InvalidIdentifier:
        return ""


def hash_phone(raw: str, region: str, salt: str) -> str:
    try:
        return hash_identifier("phone", normalize_phone(raw, region), salt) if raw.strip() else ""
    except InvalidIdentifier:
        return ""


@dataclass(frozen=True, slots=True)
class SupportCallback:
    """One verified helpdesk callback, normalized. Absent facts are ``""`` or ``None``."""

    provider: str  # zendesk, intercom, or the tool named by a generic sender
    kind: str  # ticket or chat (KINDS)
    ticket_id: str  # the provider's id of the ticket or conversation
    callback_id: str  # the same for a provider's retry of this callback
    event: str  # one of LIFECYCLE
    event_ts: datetime  # when the provider says this happened
    received_ts: datetime
    email_hash: str = ""
    phone_hash: str = ""
    user_id: str = ""  # the requester's id in the business's own systems, when the tool knows it
    status: str = ""  # the provider's own status word, as sent
    agent: str = ""
    queue: str = ""  # group, team or inbox
    priority: str = ""
    via: str = ""  # how the ticket came in: email, web, chat, phone...
    opened_at: datetime | None = None
    first_reply_at: datetime | None = None
    solved_at: datetime | None = None
    reopens: int | None = None  # as the provider counts them, where it does
    rating: float | None = None  # CSAT, 1 (very unsatisfied) to 5 (very satisfied)

    @property
    def ticket_key(self) -> str:
        """The Kafka key and table key: every callback of one ticket shares it."""
        return f"{self.provider}:{self.ticket_id}"

    @property
    def channel(self) -> str:
        return KINDS[self.kind]

    def limit_errors(self) -> list[tuple[str, str]]:
        """(field, reason) for each bound this callback breaks; empty when it keeps them all."""
        errors = [
            (name, f"must be at most {MAX_ID_LENGTH} characters")
            for name in _BOUNDED_TEXT
            if len(getattr(self, name)) > MAX_ID_LENGTH
        ]
        if len(self.user_id) > MAX_ID_LENGTH:
            errors.append(("user_id", f"must be at most {MAX_ID_LENGTH} characters"))
        if len(self.callback_id) > MAX_CALLBACK_ID_LENGTH:
            errors.append(("callback_id", f"must be at most {MAX_CALLBACK_ID_LENGTH} characters"))
        if self.reopens is not None and not 0 <= self.reopens <= MAX_REOPENS:
            errors.append(("reopens", f"must be from 0 to {MAX_REOPENS}"))
        if self.rating is not None and not 1 <= self.rating <= 5:
            errors.append(("rating", "must be from 1 to 5"))
        if self.kind not in KINDS:
            errors.append(("kind", f"must be one of {', '.join(KINDS)}"))
        if self.event not in LIFECYCLE:
            errors.append(("event", f"must be one of {', '.join(LIFECYCLE)}"))
        if not self.ticket_id:
            errors.append(("ticket_id", "is required"))
        return errors

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, datetime):
                value = value.astimezone(UTC).isoformat()
            if value is None or value == "":
                continue
            wire[spec.name] = value
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> SupportCallback:
        """Read a callback back from the topic. Raises ``KeyError``, ``TypeError`` or
        ``ValueError`` (also for one outside the bounds)."""
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name not in wire:
                continue
            value = wire[spec.name]
            if spec.name.endswith(("_ts", "_at")):
                value = parse_aware(value)
            elif spec.name == "rating":
                value = float(value)
            elif spec.name == "reopens":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError("reopens must be an integer")
            elif isinstance(value, (dict, list)):
                raise TypeError(f"{spec.name} must be a string")
            else:
                value = str(value)
            values[spec.name] = value
        for required in (
            "provider",
            "kind",
            "ticket_id",
            "callback_id",
            "event",
            "event_ts",
            "received_ts",
        ):
            if required not in values:
                raise KeyError(required)
        callback = cls(**values)
        if errors := callback.limit_errors():
            raise ValueError("; ".join(f"{name}: {reason}" for name, reason in errors))
        return callback
