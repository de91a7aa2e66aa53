"""The tables the worker writes: one column list each, in one place.

A sink is given records (:mod:`tracker.records`, :class:`tracker.deadletter.DeadLetter`, or a
mapping by column name for the calls and links mirrors) and builds each row here, by column
name, as it inserts. ``tests/integration/test_tables.py`` checks every list against the
migrations in ``schemas/clickhouse``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from operator import attrgetter, itemgetter
from typing import Any, Final

from tracker.deadletter import DeadLetter
from tracker.records import (
    Alias,
    EnrichedTouchpoint,
    FrictionRecord,
    IdentityConflict,
    JourneySummary,
    SessionRecord,
)

__all__ = [
    "ALIASES",
    "CALLS",
    "CONFLICTS",
    "DEAD_LETTERS",
    "FRICTIONS",
    "JOURNEYS",
    "LINKS",
    "SESSIONS",
    "TABLES",
    "TICKETS",
    "TOUCHPOINTS",
    "Table",
]


@dataclass(frozen=True)
class Table:
    """How one ClickHouse table is written: its columns, the idempotency key and version, the
    event-time column a key is looked up around, and (for tables the writer role receives
    through Kafka) the record type that decodes its wire form."""

    name: str
    columns: tuple[str, ...]
    key: str
    time: str
    version: str | None = None
    look_before_writing: bool = False
    """Touchpoints and dead letters are looked up before writing, so a replay adds no second
    row; the derived tables are read with FINAL, where a replayed copy is one row."""
    record: Callable[[Any], Any] | None = None
    _of_record: Callable[[Any], tuple[Any, ...]] = field(init=False, repr=False, compare=False)
    _of_mapping: Callable[[Any], tuple[Any, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_of_record", attrgetter(*self.columns))
        object.__setattr__(self, "_of_mapping", itemgetter(*self.columns))

    def row(self, record: Any) -> tuple[Any, ...]:
        """The insert row of ``record``, by column name."""
        if isinstance(record, Mapping):
            return self._of_mapping(record)
        return self._of_record(record)

    def named(self, record: Any) -> dict[str, Any]:
        """The row as a mapping from column to value (for tests and logs)."""
        return dict(zip(self.columns, self.row(record), strict=True))


TOUCHPOINTS: Final = Table(
    "touchpoints",
    tuple(f.name for f in fields(EnrichedTouchpoint)),
    key="event_id",
    time="ts",
    version="version",
    look_before_writing=True,
    record=EnrichedTouchpoint.from_wire,
)
DEAD_LETTERS: Final = Table(
    "dead_letters",
    (
        "dead_letter_id",
        "received_ts",
        "source",
        "stage",
        "reason",
        "error_fields",
        "event_id",
        "payload",
    ),
    key="dead_letter_id",
    time="received_ts",
    look_before_writing=True,
    record=DeadLetter.from_wire,
)
ALIASES: Final = Table(
    "identities",
    ("identifier", "kind", "customer_id", "own_customer_id", "version", "ts"),
    key="identifier",
    time="ts",
    version="version",
    record=Alias.from_wire,
)
CONFLICTS: Final = Table(
    "identity_conflicts",
    ("conflict_id", "event_id", "ts", "left_identifier", "right_identifier", "rule"),
    key="conflict_id",
    time="ts",
    record=IdentityConflict.from_wire,
)
SESSIONS: Final = Table(
    "sessions",
    (
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
    ),
    key="session_id",
    time="start",
    version="version",
    record=SessionRecord.from_wire,
)
JOURNEYS: Final = Table(
    "journeys",
    (
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
    ),
    key="customer_id",
    time="as_of",
    version="version",
    record=JourneySummary.from_wire,
)
FRICTIONS: Final = Table(
    "frictions",
    (
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
    ),
    key="friction_id",
    time="ts",
    version="version",
    record=FrictionRecord.from_wire,
)
CALLS: Final = Table(
    "calls",
    (
        "call_uuid",
        "version",
        "provider",
        "call_id",
        "leg_ids",
        "call_ts",
        "direction",
        "status",
        "disposition",
        "caller_hash",
        "called_hash",
        "tracking_number",
        "campaign_source",
        "campaign_medium",
        "campaign_name",
        "channel",
        "started_at",
        "answered_at",
        "ended_at",
        "ring_seconds",
        "queue_seconds",
        "talk_seconds",
        "hold_seconds",
        "transfer_count",
        "transfer_kind",
        "queue",
        "agent",
        "recording",
        "hangup_by",
        "callbacks",
        "topics",
        "transcribed",
        "transcript",
    ),
    key="call_uuid",
    time="call_ts",
    version="version",
    look_before_writing=True,
)
LINKS: Final = Table(
    "links",
    (
        "slug",
        "version",
        "deleted",
        "target",
        "status_code",
        "tags",
        "campaign",
        "channel",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "utm_term",
        "utm_content",
        "forward_query",
        "valid_since",
        "valid_until",
        "fallback_url",
        "max_clicks",
        "disabled",
        "rules",
        "created_at",
        "updated_at",
    ),
    key="slug",
    time="updated_at",
    version="version",
    look_before_writing=True,
)
TICKETS: Final = Table(
    "tickets",
    (
        "ticket_uuid",
        "version",
        "provider",
        "ticket_id",
        "kind",
        "channel",
        "opened_at",
        "status",
        "provider_status",
        "email_hash",
        "phone_hash",
        "user_id",
        "agent",
        "queue",
        "priority",
        "via",
        "first_reply_at",
        "solved_at",
        "first_reply_seconds",
        "resolution_seconds",
        "reopens",
        "rating",
        "rated_at",
        "callbacks",
    ),
    key="ticket_uuid",
    time="opened_at",
    version="version",
    look_before_writing=True,
)
TABLES: Final = {
    t.name: t
    for t in (
        TOUCHPOINTS,
        DEAD_LETTERS,
        ALIASES,
        CONFLICTS,
        SESSIONS,
        JOURNEYS,
        FRICTIONS,
        CALLS,
        LINKS,
        TICKETS,
    )
}
