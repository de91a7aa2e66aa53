"""Dead letters: events that could not be accepted, kept with the reason and the raw payload."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from tracker.bounds import MAX_DEPTH
from tracker.errors import FieldError

__all__ = ["MAX_PAYLOAD_CHARS", "DeadLetter"]

# A dead letter keeps this much of the payload, so that whatever a client sent, it fits one
# Kafka record; the rest is cut with a note of how much.
MAX_PAYLOAD_CHARS: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source: str
    stage: str
    reason: str
    payload: str
    received_ts: datetime
    errors: tuple[FieldError, ...] = ()
    event_id: str = ""
    dead_letter_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @classmethod
    def for_payload(
        cls,
        payload: Any,
        *,
        source: str,
        stage: str,
        errors: list[FieldError],
        received_ts: datetime | None = None,
    ) -> DeadLetter:
        raw = _bounded_text(payload if isinstance(payload, str) else _json(payload))
        event_id = payload.get("event_id", "") if isinstance(payload, dict) else ""
        return cls(
            source=source,
            stage=stage,
            reason="; ".join(f"{e.field}: {e.reason}" for e in errors),
            payload=raw,
            received_ts=received_ts or datetime.now(UTC),
            errors=tuple(errors),
            event_id=event_id if isinstance(event_id, str) else "",
        )

    @property
    def error_fields(self) -> list[str]:
        """The fields at fault, as the ``dead_letters`` table keeps them."""
        return [e.field for e in self.errors]

    def to_wire(self) -> dict[str, Any]:
        return {
            "dead_letter_id": self.dead_letter_id,
            "source": self.source,
            "stage": self.stage,
            "reason": self.reason,
            "errors": [e.as_dict() for e in self.errors],
            "event_id": self.event_id,
            "payload": self.payload,
            "received_ts": self.received_ts.isoformat(),
        }

    @classmethod
    def from_wire(cls, data: bytes | Mapping[str, Any]) -> DeadLetter:
        wire = orjson.loads(data) if isinstance(data, bytes) else data
        return cls(
            dead_letter_id=str(wire["dead_letter_id"]),
            source=str(wire["source"]),
            stage=str(wire["stage"]),
            reason=str(wire["reason"]),
            payload=str(wire["payload"]),
            received_ts=datetime.fromisoformat(wire["received_ts"]).astimezone(UTC),
            errors=tuple(FieldError(e["field"], e["reason"]) for e in wire.get("errors", [])),
            event_id=str(wire.get("event_id", "")),
        )


def _json(payload: Any) -> str:
    """``payload`` as JSON; what orjson cannot write (too deep, integers past 64 bits, odd keys)
    is written cut to :data:`~tracker.bounds.MAX_DEPTH` levels with the rest as text."""
    try:
        return orjson.dumps(payload).decode()
    except TypeError:
        return orjson.dumps(_writable(payload, 1)).decode()


def _writable(value: Any, depth: int) -> Any:
    if isinstance(value, dict | list) and depth > MAX_DEPTH:
        return f"<cut: nested deeper than {MAX_DEPTH} levels>"
    if isinstance(value, dict):
        return {str(k): _writable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_writable(v, depth + 1) for v in value]
    if isinstance(value, str | float | bool) or value is None:
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return value
    return str(value)


def _bounded_text(raw: str) -> str:
    if len(raw) <= MAX_PAYLOAD_CHARS:
        return raw
    return f"{raw[:MAX_PAYLOAD_CHARS]}<cut: {len(raw) - MAX_PAYLOAD_CHARS} more characters>"
