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

from tracker.bounds import parse_aware
from tracker.privacy import InvalidIdentifier, hash_identifier, normalize_phone

__all__ = [
    "CALL_STATUSES",
    "DISPOSITIONS",
    "MAX_CALLBACK_ID_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_SECONDS",
    "MAX_TOPICS",
    "MAX_TRANSCRIPT_LENGTH",
    "MAX_TRANSFERS",
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

# The bounds of a callback (docs/calls.md), so that no call's record can grow without limit.
MAX_ID_LENGTH: Final = 256  # call_id, leg_id, each transfer id, queue, agent, any field read
MAX_CALLBACK_ID_LENGTH: Final = 1024  # some providers' callback ids join several fields
MAX_TRANSFERS: Final = 64  # transfers one callback reports
MAX_SECONDS: Final = 7 * 24 * 3600  # ring, queue, talk and hold durations: one week at most
MAX_TOPICS: Final = 64  # topics one transcript flags (collectors/calls/transcripts.py)
MAX_TRANSCRIPT_LENGTH: Final = 32_000  # characters of transcript text one callback keeps
_BOUNDED_TEXT: Final = ("call_id", "leg_id", "queue", "agent", "provider", "tracking_number")


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
    transcribed: bool = False  # a transcript of (part of) the call
    topics: tuple[str, ...] = ()  # topics its phrases flag (TRACKER_CALL_TOPICS)
    transcript: str = ""  # its text, redacted; only with TRACKER_CALL_TRANSCRIPTS=store

    def limit_errors(self) -> list[tuple[str, str]]:
        """(field, reason) for each bound this callback breaks; empty when it keeps them all."""
        errors = [
            (name, f"must be at most {MAX_ID_LENGTH} characters")
            for name in _BOUNDED_TEXT
            if len(getattr(self, name)) > MAX_ID_LENGTH
        ]
        if len(self.callback_id) > MAX_CALLBACK_ID_LENGTH:
            errors.append(("callback_id", f"must be at most {MAX_CALLBACK_ID_LENGTH} characters"))
        if len(self.transfer_ids) > MAX_TRANSFERS:
            errors.append(("transfer_ids", f"must list at most {MAX_TRANSFERS} transfers"))
        elif any(len(t) > MAX_ID_LENGTH for t in self.transfer_ids):
            errors.append(("transfer_ids", f"each must be at most {MAX_ID_LENGTH} characters"))
        if len(self.topics) > MAX_TOPICS or any(len(t) > MAX_ID_LENGTH for t in self.topics):
            errors.append(("topics", f"must list at most {MAX_TOPICS} short topic names"))
        if len(self.transcript) > MAX_TRANSCRIPT_LENGTH:
            errors.append(("transcript", f"must be at most {MAX_TRANSCRIPT_LENGTH} characters"))
        for name in ("ring_seconds", "queue_seconds", "talk_seconds", "hold_seconds"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_SECONDS:
                errors.append((name, f"must be from 0 to {MAX_SECONDS} seconds"))
        return errors

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
            if (
                value is None
                or value == ""
                or value == ()
                or (spec.name == "transcribed" and not value)
            ):
                continue
            if isinstance(value, tuple):
                value = list(value)
            wire[spec.name] = value
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> CallCallback:
        """Read a callback back from the topic. Raises ``KeyError``, ``TypeError`` or ``ValueError``
        (also for one outside the bounds, such as one written before they were checked)."""
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name not in wire:
                continue
            value = wire[spec.name]
            if spec.name.endswith(("_ts", "_at")):
                value = parse_aware(value)
            elif spec.name.endswith("_seconds"):
                value = float(value)
            elif spec.name in ("recording", "transcribed"):
                value = bool(value)
            elif spec.name in ("transfer_ids", "topics"):
                if not isinstance(value, list):
                    raise TypeError(f"{spec.name} must be a list")
                value = tuple(str(v) for v in value)
            else:
                value = str(value)
            values[spec.name] = value
        for required in ("provider", "call_id", "callback_id", "status", "event_ts", "received_ts"):
            if required not in values:
                raise KeyError(required)
        if values["status"] not in CALL_STATUSES:
            raise ValueError(f"unknown call status {str(values['status'])[:40]!r}")
        callback = cls(**values)
        if errors := callback.limit_errors():
            raise ValueError("; ".join(f"{name}: {reason}" for name, reason in errors))
        return callback
