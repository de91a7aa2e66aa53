"""A call callback: one provider webhook about one call, verified and normalized.

Providers send several callbacks per call (ringing, answered, completed, a recording...). The
calls collector turns each into a :class:`CallCallback` and produces it to the calls topic, keyed
by :attr:`CallCallback.call_key`; the worker merges all callbacks of a call into one record.

Phone numbers never travel in clear: the caller and called numbers are E.164-normalized and
hashed with the deployment's salt. Only the business's own tracking number is kept in clear.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Final

from tracker.privacy import InvalidIdentifier, hash_identifier, normalize_phone

__all__ = [
    "CALL_STATUSES",
    "DISPOSITIONS",
    "TERMINAL_STATUSES",
    "CallCallback",
    "hash_number",
    "normalize_number",
    "status_rank",
]

# Normalized call statuses, in the order a call moves through them.
CALL_STATUSES: Final = (
    "updated",  # news about a call that does not move it on: a recording, a transfer
    "initiated",
    "ringing",
    "queued",
    "answered",
    "completed",
    "busy",
    "no-answer",
    "failed",
    "canceled",
    "voicemail",
)
TERMINAL_STATUSES: Final = frozenset(
    {"completed", "busy", "no-answer", "failed", "canceled", "voicemail"}
)
DISPOSITIONS: Final = ("answered", "abandoned", "busy", "no-answer", "failed", "voicemail")
_RANK: Final = {"initiated": 1, "ringing": 2, "queued": 2, "answered": 3}


def status_rank(status: str) -> int:
    """How far along a call a status is: later callbacks never move a call backwards."""
    if status in TERMINAL_STATUSES:
        return 4
    return _RANK.get(status, 0)


def normalize_number(raw: str, default_region: str) -> str:
    """E.164 for a phone number, ``""`` for what is not one (``anonymous``, a SIP user, empty)."""
    text = raw.strip()
    if text.lower().startswith(("sip:", "tel:")):
        text = text[4:].split("@", 1)[0]
    if not text:
        return ""
    try:
        return normalize_phone(text, default_region)
    except InvalidIdentifier:
        return ""


def hash_number(raw: str, default_region: str, salt: str) -> str:
    """The salted hash of a customer's number, the same one the beacon stores for ``phone``."""
    normalized = normalize_number(raw, default_region)
    return hash_identifier("phone", normalized, salt) if normalized else ""


@dataclass(frozen=True, slots=True)
class CallCallback:
    """One verified provider callback, normalized. Absent facts are ``""`` or ``None``."""

    provider: str
    call_id: str  # the whole call: every leg of it shares this id
    callback_id: str  # the same for a provider's retry of this callback
    status: str  # one of CALL_STATUSES
    event_ts: datetime  # when the provider says this happened
    received_ts: datetime
    leg_id: str = ""  # this leg of the call, where the provider tells legs apart
    direction: str = ""  # inbound or outbound
    caller_hash: str = ""
    called_hash: str = ""
    tracking_number: str = ""  # the business's number, E.164, in clear
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    ring_seconds: float | None = None
    queue_seconds: float | None = None
    talk_seconds: float | None = None
    hold_seconds: float | None = None
    transfer_ids: tuple[str, ...] = ()  # transfers this callback reports, each unique in the call
    transfer_kind: str = ""  # cold or warm
    queue: str = ""
    agent: str = ""
    recording: bool | None = None
    hangup_by: str = ""  # caller, callee or system

    @property
    def call_key(self) -> str:
        """The Kafka key and table key: every callback of one call shares it."""
        return f"{self.provider}:{self.call_id}"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, datetime):
                value = value.astimezone(UTC).isoformat()
            if value is None or value == "" or value == ():
                continue
            if isinstance(value, tuple):
                value = list(value)
            wire[spec.name] = value
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> CallCallback:
        """Read a callback back from the topic. Raises ``KeyError``, ``TypeError`` or ``ValueError``."""
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name not in wire:
                continue
            value = wire[spec.name]
            if spec.name.endswith(("_ts", "_at")):
                value = _parse_time(value)
            elif spec.name.endswith("_seconds"):
                value = float(value)
            elif spec.name == "recording":
                value = bool(value)
            elif spec.name == "transfer_ids":
                if not isinstance(value, list):
                    raise TypeError("transfer_ids must be a list")
                value = tuple(str(v) for v in value)
            else:
                value = str(value)
            values[spec.name] = value
        for required in ("provider", "call_id", "callback_id", "status", "event_ts", "received_ts"):
            if required not in values:
                raise KeyError(required)
        if values["status"] not in CALL_STATUSES:
            raise ValueError(f"unknown call status {values['status']!r}")
        return cls(**values)


def _parse_time(raw: Any) -> datetime:
    parsed = datetime.fromisoformat(str(raw))
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a UTC offset: {raw!r}")
    return parsed.astimezone(UTC)
