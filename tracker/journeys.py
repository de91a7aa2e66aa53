"""A customer's stitched journey, read from ClickHouse by primary key, never by a scan.

``tracker journey`` prints it and the console's journey map (``GET /api/journey``) draws it:
both read it here, through a ``Reader`` (one read-only query in, rows as dicts out), so they
show the same customer, the same events and the same identifiers.

A touchpoint keeps the customer it was stitched with; it belongs now to whichever customer its
identity key (the identifier the worker routed it by) resolves to in ``identities``, so merges
and splits show at once without rewriting anything.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from tracker.errors import TrackerError
from tracker.privacy import IDENTIFIER_KINDS, InvalidIdentifier, identifier_key
from tracker.settings import Settings

__all__ = [
    "HASHED_KINDS",
    "Journey",
    "Reader",
    "TimelineEvent",
    "belongs",
    "find_journey",
    "journey_document",
    "render_json",
    "rfc3339",
    "stored_key",
    "stored_keys",
    "typed_identifier",
]

HASHED_KINDS = frozenset({"email", "phone"})
_CRM = "crm:"
# A bare phone number as people type it: digits, spaces and punctuation, at least 7 digits.
_BARE_PHONE = re.compile(r"^\+?[0-9(][0-9 ().\-]*[0-9]$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
# Journey lookups read this table, ordered by customer id or identity key (0015); the customer
# of an identifier never linked to another is found in the touchpoints ordered by key (0008).
_BY_KEY = "touchpoints_by_customer"
_LOOKUP = "journey_lookup"

Reader = Callable[[str], list[dict[str, Any]]]
"""Runs one read-only query, returning its rows as dicts (as JSONEachRow prints them)."""


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    event_id: str
    ts: datetime
    type: str
    name: str
    channel: str
    source: str
    session_id: str
    stage: str
    value: float | None
    stitched_customer_id: str
    """The customer the touchpoint was stitched with (``touchpoints.customer_id``)."""
    frictions: tuple[tuple[str, str, str], ...] = ()
    """(reason, severity, detail) of each friction detected on this event and not retracted."""
    survey_kind: str = ""
    """For a survey answer: nps, csat or ces; empty otherwise."""
    survey_score: float | None = None


@dataclass(frozen=True, slots=True)
class Journey:
    customer_id: str
    identifiers: dict[str, list[str]]
    """Kind → the values (email and phone as salted hashes) that resolve to this customer."""
    merged_customer_ids: list[str]
    """Customer ids of identifiers that now resolve here, other than this one."""
    summary: dict[str, Any] | None
    """The customer's row of ``journeys FINAL``; None before the journey agent wrote it."""
    events: list[TimelineEvent] = field(default_factory=list)


def stored_key(raw: str, settings: Settings) -> str:
    """An identifier as a person writes it, as ``identities`` stores it: email and phone hashed
    with the deployment's salt; ``crm:<system>:<id>`` as it is."""
    kind = raw.partition(":")[0].strip().lower()
    if kind == "crm":
        system, _, value = raw.strip()[len(_CRM) :].partition(":")
        if not system or not value:
            raise TrackerError(f"identifier {raw!r} must be crm:<system>:<id>, e.g. crm:sf:0031")
        return f"{_CRM}{system}:{value}"
    if kind in HASHED_KINDS and not settings.hash_salt:
        raise TrackerError(
            "no hash salt: set TRACKER_HASH_SALT to the collectors' salt (or run where "
            "TRACKER_DATA_DIR holds the local one) to look up an email or a phone number"
        )
    try:
        return identifier_key(raw, settings.hash_salt.value, settings.default_phone_region)
    except InvalidIdentifier as exc:
        raise TrackerError(
            f"identifier {raw!r} {exc}; kinds: {', '.join(IDENTIFIER_KINDS)} or crm:<system>"
        ) from None


def stored_keys(raw: str, settings: Settings) -> list[str]:
    """:func:`stored_key` under the current salt, then, during a salt rotation, under the
    previous one (``TRACKER_HASH_SALT_PREVIOUS``), where older events are stored."""
    keys = [stored_key(raw, settings)]
    kind = raw.partition(":")[0].strip().lower()
    if kind in HASHED_KINDS and len(settings.hash_salts) > 1:
        previous = settings.with_overrides(hash_salt=settings.hash_salt_previous)
        if (older := stored_key(raw, previous)) not in keys:
            keys.append(older)
    return keys


def typed_identifier(raw: str) -> str:
    """What a person typed, as ``kind:value``: a bare email address or phone number gets its
    kind; anything else is returned as typed (an identifier with its kind, or a customer id)."""
    text = raw.strip()
    if ":" in text:
        return text
    if "@" in text:
        return f"email:{text}"
    digits = sum(c.isdigit() for c in text)
    if _BARE_PHONE.match(text) and digits >= 7 and not _UUID.match(text):
        return f"phone:{text}"
    return text


Parts = dict[tuple[str, str, str], dict[str, Any]]
"""Rows of ``journey_lookup`` by (owner, part, id), each at its highest version, decoded."""


def find_journey(settings: Settings, raw: str, read: Reader) -> Journey | None:
    """The journey of the customer ``raw`` (an identifier, a bare email or phone number, or a
    customer id) belongs to now, in one read of ``journey_lookup`` (0015) through its primary
    key: the identifier's row, what is stored under its customer (identifiers, sessions,
    frictions, the journeys row, touchpoints) and under each identifier named there and the
    customer id it had on its own (touchpoints, and the identifier's current row, which says
    whether it still resolves here). A customer id, or an identifier never linked to another,
    takes a read or two more to find the customer. Reads skip FINAL and keep each key's highest
    version, as FINAL would, at a fraction of its cost."""
    typed = typed_identifier(raw)
    parts: Parts = {}
    customer: str | None = None
    keys: list[str] = []
    if ":" in typed.strip():
        keys = stored_keys(typed, settings)  # the current salt's hash first
        found = f"SELECT link FROM {_LOOKUP} WHERE part = 'identity' AND owner IN {_tuple(keys)}"
        parts = _latest(read(_journey_parts(found, keys)))
        asked = set(keys)
        customer = next(
            (parts[(k, "identity", k)]["customer_id"] for k in keys if (k, "identity", k) in parts),
            None,
        )
    if customer is None:
        customer = _current_customer(settings, typed, read)
        if customer is None:
            return None
        # Its rows, and, for an identifier never linked to another, its touchpoints routed by
        # that key: no identifier row names them.
        asked = {customer, *keys}
        parts = _latest(read(_journey_parts(_quote(customer), asked)))
    return _journey(customer, parts, asked, read)


def _journey_parts(customer: str, owners: Iterable[str]) -> str:
    """What a journey reads, given its customer (an SQL value or subquery): the rows stored
    under ``owners``, and under the customer, every identifier that was ever named under it
    (part ``identifier``) and the customer id each had on its own."""
    named = (
        f"SELECT arrayJoin([owner, id, link]) "
        f"FROM {_LOOKUP} WHERE part = 'identifier' AND owner IN ({customer})"
    )
    return (
        f"SELECT owner, part, id, version, doc FROM {_LOOKUP} "
        f"WHERE owner IN {_tuple(owners)} OR owner IN ({named})"
    )


def _journey(customer: str, parts: Parts, asked: set[str], read: Reader) -> Journey:
    """The journey of ``customer`` from what ``_journey_parts`` read, ``asked`` the owners it
    named (and, rarely, one more read of where other identity keys resolve now)."""
    identities = _sorted_identities(
        (doc for (_, part, _), doc in parts.items() if part == "identity"), customer
    )
    keys = {r["identifier"] for r in identities}
    old_ids = {r["own_customer_id"] for r in identities} | {customer}
    owners = keys | old_ids
    candidates: dict[str, dict[str, Any]] = {}
    for (owner, part, i), doc in parts.items():
        # A touchpoint is stored under its customer id and its identity key: the highest
        # version of the two counts.
        newer = i not in candidates or doc["version"] > candidates[i]["version"]
        if part == "touchpoint" and owner in owners and newer:
            candidates[i] = doc
    resolved = {i: doc["customer_id"] for (_, part, i), doc in parts.items() if part == "identity"}
    # Rarely (after a split, or before identities has a key), a touchpoint under the customer
    # carries a key read nowhere above, or was stitched to a customer id outside its own:
    # where those keys resolve now, and the frictions stored under those ids, in one more read.
    elsewhere = {r["identity_key"] for r in candidates.values()} - asked - set(resolved) - {""}
    read_owners = {owner for owner, _, _ in parts}
    stitched_elsewhere = {r["customer_id"] for r in candidates.values()} - read_owners - {""}
    if elsewhere or stitched_elsewhere:
        more = _latest(read(_more_parts(elsewhere, stitched_elsewhere)))
        parts = {**parts, **more}
        resolved.update(
            {i: doc["customer_id"] for (_, part, i), doc in more.items() if part == "identity"}
        )
    rows = [
        r
        for r in candidates.values()
        if belongs(r["identity_key"], r["customer_id"], customer, keys, old_ids, resolved)
    ]
    event_ids = {r["event_id"] for r in rows}
    sessions: dict[str, str] = {}
    stored_frictions: list[dict[str, Any]] = []
    summary: dict[str, Any] | None = None
    for (owner, part, id_), doc in parts.items():
        if part == "session" and owner == customer and not doc["retired"]:
            sessions.update(dict.fromkeys(doc["event_ids"], id_))
        elif part == "friction" and not doc["retracted"] and doc["event_id"] in event_ids:
            stored_frictions.append(doc)
        elif part == "journey" and owner == customer:
            summary = doc
    frictions: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for f in sorted(stored_frictions, key=lambda f: (f["ts"], f["reason"])):
        frictions[f["event_id"]].append((f["reason"], f["severity"], f["detail"]))
    events = [
        TimelineEvent(
            event_id=r["event_id"],
            ts=_time(r["ts"]),
            type=r["type"],
            name=r["name"],
            channel=r["channel"],
            source=r["source"],
            # The session as it stands now (a merge or a late event may have reshaped it).
            session_id=str(sessions.get(r["event_id"], r["session_id"])),
            stage=r["stage"],
            value=r["value"],
            stitched_customer_id=r["customer_id"],
            frictions=tuple(frictions.get(r["event_id"], ())),
            survey_kind=r.get("survey_kind") or "",
            survey_score=r.get("survey_score"),
        )
        for r in rows
    ]
    events.sort(key=lambda e: (e.ts, e.event_id))
    by_kind: dict[str, list[str]] = defaultdict(list)
    for r in identities:
        by_kind[r["kind"]].append(r["identifier"][len(r["kind"]) + 1 :])
    return Journey(
        customer_id=customer,
        identifiers=dict(by_kind),
        merged_customer_ids=sorted(old_ids - {customer}),
        summary=_summary(summary) if summary is not None else None,
        events=events,
    )


def _latest(rows: Iterable[dict[str, Any]]) -> Parts:
    """Rows of ``journey_lookup`` by (owner, part, id), each at its highest version (as FINAL
    would keep it): its ``doc`` decoded, with that ``version``."""
    best: dict[tuple[str, str, str], tuple[int, str]] = {}
    for r in rows:
        key, version = (r["owner"], r["part"], r["id"]), int(r["version"])
        if key not in best or version > best[key][0]:
            best[key] = (version, r["doc"])
    return {key: {**orjson.loads(doc), "version": version} for key, (version, doc) in best.items()}


def _sorted_identities(rows: Iterable[dict[str, Any]], customer: str) -> list[dict[str, Any]]:
    return sorted(
        (r for r in rows if r["customer_id"] == customer),
        key=lambda r: (r["kind"], r["identifier"]),
    )


def _more_parts(keys: Iterable[str], customers: Iterable[str]) -> str:
    """Where identity ``keys`` resolve now, and the frictions stored under ``customers``."""
    wanted = [(part, set(owners)) for part, owners in (("identity", keys), ("friction", customers))]
    where = " OR ".join(
        f"(part = '{part}' AND owner IN {_tuple(owners)})" for part, owners in wanted if owners
    )
    return f"SELECT owner, part, id, version, doc FROM {_LOOKUP} WHERE {where}"


def belongs(
    identity_key: str,
    stitched_customer: str,
    customer: str,
    keys: set[str],
    old_ids: set[str],
    resolved: Mapping[str, str],
) -> bool:
    """Whether a touchpoint belongs to ``customer`` now. It follows its identity key wherever
    that resolves (``keys`` are the customer's own identifiers, ``resolved`` where others' are);
    without one, or before ``identities`` has the key, it stays where it was stitched."""
    if identity_key in keys:
        return True
    if identity_key and identity_key in resolved:
        return resolved[identity_key] == customer
    return stitched_customer in old_ids


def _current_customer(settings: Settings, raw: str, read: Reader) -> str | None:
    text = raw.strip()
    if ":" in text:
        keys = stored_keys(text, settings)  # the current salt's hash first
        for key in keys:
            sql = f"SELECT customer_id FROM identities FINAL WHERE identifier = {_quote(key)}"
            if found := read(sql):
                return str(found[0]["customer_id"])
        # Never linked to another identifier: its events went straight to its own customer,
        # routed by this very key (the table's order, so this reads a granule or two).
        for key in keys:
            found = read(
                f"SELECT customer_id FROM {_BY_KEY} WHERE identity_key = {_quote(key)} LIMIT 1"
            )
            if found:
                return str(found[0]["customer_id"])
        return None
    # A customer id: the one an identifier had on its own (current, or merged since), or that
    # of an event without identifiers.
    found = read(
        f"SELECT customer_id FROM identities FINAL WHERE own_customer_id = {_quote(text)} LIMIT 1",
    )
    if found:
        return str(found[0]["customer_id"])
    for table in ("journeys", _BY_KEY):
        if read(f"SELECT 1 AS x FROM {table} WHERE customer_id = {_quote(text)} LIMIT 1"):
            return text
    return None


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _tuple(values: Iterable[str]) -> str:
    return "(" + ", ".join(_quote(v) for v in sorted(values)) + ")"


def _time(text: str) -> datetime:
    """ClickHouse writes a DateTime64(3, 'UTC') as ``2026-11-20 09:30:00.000``, in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _maybe_time(text: str | None) -> datetime | None:
    return None if text is None else _time(text)


_SUMMARY_NUMBERS = ("events", "sessions", "conversions", "frictions", "late_events")


def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
    summary = {
        "first_seen": _maybe_time(row["first_seen"]),
        "last_seen": _maybe_time(row["last_seen"]),
        "channels": list(row["channels"]),
        "stage": row["stage"],
        "stage_since": _maybe_time(row["stage_since"]),
        "value": float(row["value"]),
    }
    summary.update({name: int(row[name]) for name in _SUMMARY_NUMBERS})
    return summary


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def journey_document(journey: Journey) -> dict[str, Any]:
    """The journey for machines: identifiers in full, times in RFC 3339 UTC."""

    def clean(value: Any) -> Any:
        if isinstance(value, datetime):
            return rfc3339(value)
        return value

    return {
        "customer_id": journey.customer_id,
        "identifiers": journey.identifiers,
        "merged_customer_ids": journey.merged_customer_ids,
        "journey": (
            {k: clean(v) for k, v in journey.summary.items()}
            if journey.summary is not None
            else None
        ),
        "timeline": [
            {
                "event_id": e.event_id,
                "ts": rfc3339(e.ts),
                "type": e.type,
                "name": e.name,
                "channel": e.channel,
                "source": e.source,
                "session_id": e.session_id,
                "stage": e.stage,
                "value": e.value,
                "stitched_customer_id": e.stitched_customer_id,
                "frictions": [{"reason": r, "severity": s, "detail": d} for r, s, d in e.frictions],
                "survey": (
                    {"kind": e.survey_kind, "score": e.survey_score} if e.survey_kind else None
                ),
            }
            for e in journey.events
        ],
    }


def render_json(journey: Journey) -> bytes:
    """``journey_document`` as one line of JSON, as ``tracker journey --format json`` prints it."""
    return orjson.dumps(journey_document(journey))
