"""The typed records the worker's stages pass to each other, each with one codec.

A record is a dataclass whose fields are named as the columns of the ClickHouse table it ends
in, so the store builds a row by column name (:mod:`tracker.store.tables`) and nothing else
knows a column's position. On Kafka each record is JSON: ``to_wire`` is ``orjson.dumps`` of the
dataclass (orjson writes dataclasses and aware datetimes natively) and ``from_wire`` reads it
back, parsing the time fields. The journey topic's commands (:class:`RoutedEvent`,
:class:`Regroup`, :class:`Restitch`) carry a ``kind`` to tell them apart
(:func:`journey_command`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, ClassVar, Final, Union

import orjson

__all__ = [
    "TOUCHPOINT_SCHEMA",
    "Alias",
    "EnrichedTouchpoint",
    "FrictionRecord",
    "IdentityConflict",
    "JourneyCommand",
    "JourneySummary",
    "Regroup",
    "Restitch",
    "RoutedEvent",
    "SessionRecord",
    "journey_command",
]

TOUCHPOINT_SCHEMA: Final = "tracker/touchpoint/1-0-0"

Wire = bytes | Mapping[str, Any]


def _loaded(data: Wire) -> Mapping[str, Any]:
    return orjson.loads(data) if isinstance(data, bytes | bytearray | memoryview) else data


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _built(cls: type[Any], wire: dict[str, Any]) -> Any:
    """``cls(**wire)``, by position when ``wire`` has exactly the fields: keyword arguments from
    decoded JSON (keys that are not interned) cost a string comparison per field pair, about
    35 µs for a touchpoint. Anything else (a field missing, one unknown) goes by keyword, so it
    fails or takes a default as it always did."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls) if f.init)
    if len(wire) == len(names):
        try:
            return cls(*[wire[name] for name in names])
        except KeyError:
            pass
    return cls(**wire)


class _Codec:
    """``to_wire`` / ``from_wire`` for a flat dataclass whose ``_TIMES`` fields are datetimes."""

    __slots__ = ()
    _TIMES: ClassVar[tuple[str, ...]] = ()

    def to_wire(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_wire(cls, data: Wire) -> Any:
        wire = dict(_loaded(data))
        for name in cls._TIMES:
            wire[name] = _time(wire[name])
        return _built(cls, wire)


@dataclass(slots=True)
class EnrichedTouchpoint(_Codec):
    """A touchpoint as ingest leaves it (enriched: channel, device, hosts, campaign) and, once
    the journey step has placed it, stitched: ``customer_id``, ``session_id``, ``stage``,
    ``seq`` filled in (:meth:`stitched`). The ``touchpoints`` table's row."""

    _TIMES: ClassVar[tuple[str, ...]] = ("ts", "device_ts", "sent_ts", "received_ts")

    event_id: str
    version: int
    schema: str
    type: str
    name: str
    source: str
    channel: str
    ts: datetime
    device_ts: datetime
    sent_ts: datetime | None
    received_ts: datetime
    customer_id: str
    anonymous_id: str
    user_id: str
    email_hash: str
    phone_hash: str
    session_id: str
    client_session_id: str
    click_id: str
    ad_click_ids: dict[str, str]
    stage: str
    seq: int
    page_url: str
    page_host: str
    page_path: str
    page_title: str
    referrer: str
    referrer_host: str
    campaign_source: str
    campaign_medium: str
    campaign_name: str
    campaign_term: str
    campaign_content: str
    properties: dict[str, str]
    value: float | None
    currency: str
    survey_kind: str
    survey_score: int | None
    survey_comment: str
    consent_analytics: bool | None
    consent_marketing: bool | None
    ip: str
    user_agent: str
    device_type: str
    os: str
    browser: str
    is_bot: bool
    bot_reason: str
    locale: str
    timezone: str
    screen: str
    library: str
    conversion: str = ""
    """The conversion it counts as, decided when stitched."""
    survey_touchpoint_id: str = ""
    """The touchpoint a survey answer rates: named by the client, or found when stitched."""
    rated_channel: str = ""
    """For a survey answer, the rated touchpoint's channel, when the journey held it."""
    rated_type: str = ""
    rated_name: str = ""
    """The rated touchpoint's name; for a page view, its path."""
    rated_stage: str = ""

    @classmethod
    def from_wire(cls, data: Wire) -> EnrichedTouchpoint:
        wire = dict(_loaded(data))
        wire["ts"] = datetime.fromisoformat(wire["ts"])
        wire["device_ts"] = datetime.fromisoformat(wire["device_ts"])
        wire["received_ts"] = datetime.fromisoformat(wire["received_ts"])
        wire["sent_ts"] = _time(wire["sent_ts"])
        built: EnrichedTouchpoint = _built(cls, wire)
        return built

    def stitched(
        self,
        customer_id: str,
        session_id: str,
        stage: str,
        seq: int,
        conversion: str,
        survey_touchpoint_id: str,
        rated: tuple[str, str, str, str],
    ) -> None:
        """Place it in its customer's journey (in place: the record is this batch's own)."""
        self.customer_id = customer_id
        self.session_id = session_id
        self.stage = stage
        self.seq = seq
        self.conversion = conversion
        self.survey_touchpoint_id = survey_touchpoint_id
        self.rated_channel, self.rated_type, self.rated_name, self.rated_stage = rated

    @property
    def may_stitch(self) -> bool:
        """Without consent to analytics it is stored, never joined to anyone."""
        return self.consent_analytics is not False


@dataclass(frozen=True, slots=True)
class Alias(_Codec):
    """An identifier and the customer it resolves to from identity-log position ``version``."""

    _TIMES: ClassVar[tuple[str, ...]] = ("ts",)

    identifier: str
    kind: str
    customer_id: str
    own_customer_id: str
    version: int
    ts: datetime


@dataclass(frozen=True, slots=True)
class IdentityConflict(_Codec):
    """A link a rule refused (say, two user ids on one event)."""

    _TIMES: ClassVar[tuple[str, ...]] = ("ts",)

    conflict_id: str
    event_id: str
    ts: datetime
    left_identifier: str
    right_identifier: str
    rule: str


@dataclass(frozen=True, slots=True)
class SessionRecord(_Codec):
    """A session of a customer as of ``version``; ``retired`` when a restitch dissolved it."""

    _TIMES: ClassVar[tuple[str, ...]] = ("start", "end")

    session_id: str
    version: int
    customer_id: str
    start: datetime
    end: datetime
    events: int
    page_views: int
    channel: str
    campaign: str
    is_bounce: bool
    event_ids: list[str]
    retired: bool = False


@dataclass(frozen=True, slots=True)
class JourneySummary(_Codec):
    """A customer's journey as of ``version``."""

    _TIMES: ClassVar[tuple[str, ...]] = ("as_of", "first_seen", "last_seen", "stage_since")

    customer_id: str
    version: int
    as_of: datetime
    first_seen: datetime | None
    last_seen: datetime | None
    events: int
    sessions: int
    channels: list[str]
    stage: str
    stage_since: datetime | None
    conversions: int
    value: float
    frictions: int
    late_events: int
    merged_into: str


@dataclass(frozen=True, slots=True)
class FrictionRecord(_Codec):
    """A friction of a customer's journey; ``retracted`` once later events explain it away."""

    _TIMES: ClassVar[tuple[str, ...]] = ("ts",)

    friction_id: str
    version: int
    customer_id: str
    event_id: str
    ts: datetime
    reason: str
    severity: str
    detail: str
    retracted: bool
    # Where the touchpoint it is on sits (for the rollups); none for one stored before they were.
    channel: str = ""
    type: str = ""
    name: str = ""
    stage: str = ""
    is_bot: bool = False


# -- the journey topic's commands ---------------------------------------------------------------


@dataclass(slots=True)
class RoutedEvent:
    """A touchpoint routed to its customer: by the identity step, or straight from ingest by the
    alias replica. ``primary`` is the identifier it was routed by and ``v`` the identity-log
    position of that decision; ``stitch`` is false without consent to analytics."""

    kind: ClassVar[str] = "event"

    primary: str
    v: int
    stitch: bool
    touchpoint: EnrichedTouchpoint

    def to_wire(self) -> bytes:
        return self.encode(self.primary, self.v, self.stitch, self.touchpoint.to_wire())

    @staticmethod
    def encode(primary: str, v: int, stitch: bool, touchpoint: bytes) -> bytes:
        """The wire form around a touchpoint already encoded: the identity step forwards the
        bytes it read, without decoding and encoding them again."""
        head = orjson.dumps({"kind": "event", "primary": primary, "v": v, "stitch": stitch})
        return head[:-1] + b',"touchpoint":' + touchpoint + b"}"

    @classmethod
    def from_wire(cls, data: Wire) -> RoutedEvent:
        wire = _loaded(data)
        return cls(
            wire["primary"],
            wire["v"],
            wire["stitch"],
            # "row": the same fields, as releases before typed records named them
            EnrichedTouchpoint.from_wire(
                wire["touchpoint"] if "touchpoint" in wire else wire["row"]
            ),
        )


@dataclass(frozen=True, slots=True)
class Regroup:
    """Identifiers that left customer (the key) at identity-log position ``v``: ``moves`` maps
    each identifier key to the customer it went to."""

    kind: ClassVar[str] = "regroup"

    moves: dict[str, str]
    v: int

    def to_wire(self) -> bytes:
        return orjson.dumps({"kind": "regroup", "moves": self.moves, "v": self.v})

    @classmethod
    def from_wire(cls, data: Wire) -> Regroup:
        wire = _loaded(data)
        return cls(wire["moves"], wire["v"])


@dataclass(frozen=True, slots=True)
class Restitch:
    """Events moved to customer (the key), in the journey rules' saved form, with the
    touchpoints among them not yet written (``touchpoints``, by event id) and, when a whole
    customer merged in, its history."""

    kind: ClassVar[str] = "restitch"

    events: list[Any]
    touchpoints: dict[str, EnrichedTouchpoint] = field(default_factory=dict)
    history: Mapping[str, Any] | None = None

    def to_wire(self) -> bytes:
        wire: dict[str, Any] = {
            "kind": "restitch",
            "events": self.events,
            "touchpoints": self.touchpoints,
        }
        if self.history is not None:
            wire["history"] = self.history
        return orjson.dumps(wire)

    @classmethod
    def from_wire(cls, data: Wire) -> Restitch:
        wire = _loaded(data)
        touchpoints = {
            event_id: EnrichedTouchpoint.from_wire(t)
            for event_id, t in wire.get("touchpoints", wire.get("rows", {})).items()
        }
        return cls(wire["events"], touchpoints, wire.get("history"))


JourneyCommand = Union[RoutedEvent, Regroup, Restitch]  # noqa: UP007 (a runtime alias)

_COMMANDS: Final[dict[str, Any]] = {c.kind: c for c in (RoutedEvent, Regroup, Restitch)}


def journey_command(data: Wire) -> JourneyCommand:
    """A record of the journey topic, whichever command it is."""
    wire = _loaded(data)
    command: JourneyCommand = _COMMANDS[wire["kind"]].from_wire(wire)
    return command


def copy_of(touchpoint: EnrichedTouchpoint) -> EnrichedTouchpoint:
    """A copy to stitch, leaving the original as it came."""
    return replace(touchpoint)
