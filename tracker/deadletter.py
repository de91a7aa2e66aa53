"""Dead letters: events that could not be accepted, kept with the reason and the raw payload."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from tracker.errors import FieldError

__all__ = ["DeadLetter"]


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
        raw = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
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
    def from_wire(cls, wire: dict[str, Any]) -> DeadLetter:
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
