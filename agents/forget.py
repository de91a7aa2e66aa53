"""Forgetting a person: who an identifier belongs to, and erasing everything stored of them.

``tracker forget email:ada@example.com`` finds the customer the identifier resolves to and every
identifier of that customer (:func:`find_person`), suppresses all of them for good on the
compacted ``privacy.forgotten`` topic (ingest and the calls stage drop any event naming one, so
replays and late events cannot bring the person back), deletes their rows from every table in
:data:`FORGET_TABLES`, tombstones the worker state keys that hold their hashes
(:func:`state_keys`) and writes an audit row that never holds the identifier itself.

A table that stores personal data gets one line in :data:`FORGET_TABLES`, saying how it names
a person. Plain Python and SQL; agents/services.py (``ForgetService``) wires it to Kafka.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from agents.identity import (
    CRM_PROPERTY_PREFIX,
    Identifier,
    Link,
    customer_id_for,
    identifiers_of,
    link_key,
)
from tracker.store import ClickHouseStore
from tracker.touchpoint import Touchpoint

__all__ = [
    "AUDIT_COLUMNS",
    "ERASED_COLUMNS",
    "FORGET_TABLES",
    "Erasure",
    "ForgottenIdentifiers",
    "Naming",
    "Person",
    "StateKeys",
    "audit_row",
    "customer_key",
    "erase",
    "erase_person",
    "erase_statements",
    "find_person",
    "state_keys",
]

# Where each kind of identifier is stored in `touchpoints`.
ERASED_COLUMNS: Final = {
    "user": "user_id",
    "anon": "anonymous_id",
    "email": "email_hash",
    "phone": "phone_hash",
    "click": "click_id",
}
# Kinds whose values travel in clear, so a raw payload (a dead letter's) can name them.
_CLEAR_KINDS: Final = ("user", "anon", "click")


@dataclass(frozen=True, slots=True)
class Naming:
    """How a table names a person. Any column below matching the person's puts a row in the
    erasure:

    - ``customers``: columns holding a customer id;
    - ``keys``: columns holding an identifier key (``kind:value``, email and phone hashed);
    - ``values``: per identifier kind, columns holding the bare value (``email`` → ``email_hash``);
    - ``events``: columns holding the id of one of the person's touchpoints;
    - ``payload``: a column of raw JSON text, matched on the person's clear values (user, anon
      and click ids) as whole JSON strings; email and phone never reach it in clear.
    """

    customers: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    payload: str = ""


_TOUCHPOINT: Final = Naming(
    customers=("customer_id",),
    values={kind: (column,) for kind, column in ERASED_COLUMNS.items()},
    events=("event_id",),
)

# Every table that holds personal data, and how it names a person. One line per table: a new
# table of personal data (helpdesk tickets, call transcripts, ...) adds its line here, and
# `tracker forget` erases it. forget_audit is left out on purpose: it names nobody.
FORGET_TABLES: Final[dict[str, Naming]] = {
    "touchpoints": _TOUCHPOINT,  # every channel's events: web, email, calls, surveys, links
    "touchpoints_by_customer": _TOUCHPOINT,  # the copy ordered for journey lookups
    "sessions": Naming(customers=("customer_id",)),
    "journeys": Naming(customers=("customer_id", "merged_into")),
    "frictions": Naming(customers=("customer_id",), events=("event_id",)),
    "identities": Naming(customers=("customer_id",), keys=("identifier",)),
    # what a journey shows, under a customer id or an identifier key, as JSON (0015)
    "journey_lookup": Naming(customers=("owner",), keys=("owner", "id"), events=("id",)),
    "identity_conflicts": Naming(
        keys=("left_identifier", "right_identifier"), events=("event_id",)
    ),
    "calls": Naming(values={"phone": ("caller_hash", "called_hash")}, events=("call_uuid",)),
    "dead_letters": Naming(events=("event_id",), payload="payload"),
    # helpdesk tickets and chats name their requester (migration 0012)
    "tickets": Naming(
        values={"email": ("email_hash",), "phone": ("phone_hash",), "user": ("user_id",)},
        events=("ticket_uuid",),
    ),
}


@dataclass(frozen=True, slots=True)
class Person:
    """What names one person in the store: their identifier keys, the customer ids they were
    stitched under (a merge leaves older ids on older rows), and their touchpoints' event ids."""

    keys: frozenset[str]
    customers: frozenset[str] = frozenset()
    events: frozenset[str] = frozenset()

    def values(self, kind: str) -> list[str]:
        return sorted(v for k, _, v in (key.partition(":") for key in self.keys) if k == kind)


def customer_key(customer_id: str) -> str:
    """How a forgotten person's customer id is kept on the forgotten topic, beside their
    identifier keys (never a ``kind:value`` an event carries)."""
    return f"customer:{customer_id}"


class ForgottenIdentifiers:
    """The identifier keys (``kind:value``) whose events are never stored again: ingest and the
    calls stage drop events naming one, the identity and journey stages drop records naming one
    (a replay of their topics), and dead letters naming a clear one are not stored."""

    def __init__(self, keys: Iterable[str] = (), *, loading: bool = False) -> None:
        self._keys: set[str] = set()
        self._clear: set[str] = set()  # clear values as JSON strings, plain and escaped
        for key in keys:
            self.add(key)
        self._loaded = asyncio.Event()
        if not loading:
            self._loaded.set()

    def mark_loaded(self) -> None:
        """The forgotten topic as it stood at start is read (agents/services.py)."""
        self._loaded.set()

    async def loaded(self) -> None:
        """Return once the list is complete: a stage that reads a topic from its start must not
        pass anything before then (a replay would bring a forgotten person back)."""
        await self._loaded.wait()

    def add(self, key: str) -> None:
        self._keys.add(key)
        kind, _, value = key.partition(":")
        if kind in _CLEAR_KINDS:
            quoted = orjson.dumps(value).decode()
            self._clear.update((quoted, orjson.dumps(quoted).decode()[1:-1]))

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def forgets(self, touchpoint: Touchpoint) -> bool:
        if not self._keys:
            return False
        keys = touchpoint.identifier_keys()
        keys.update(
            f"crm:{name.removeprefix(CRM_PROPERTY_PREFIX)}:{value}"
            for name, value in touchpoint.properties.items()
            if name.startswith(CRM_PROPERTY_PREFIX) and value
        )
        return not self._keys.isdisjoint(keys)

    def names_record(self, value: bytes | None) -> bool:
        """Whether a record of the identity log or the journey topic names a forgotten
        identifier (in its touchpoint rows, a regroup's moves or a split). A malformed record is
        left to its stage, which makes it a dead letter."""
        if not self._keys or not value:
            return False
        try:
            wire = orjson.loads(value)
        except orjson.JSONDecodeError:
            return False
        return isinstance(wire, dict) and not self._keys.isdisjoint(_record_keys(wire))

    def names_customer(self, customer_id: str) -> bool:
        """Whether a customer id is a forgotten person's (suppressed as ``customer:<id>``): the
        journey topic's records are keyed by customer, and a regroup or restitch of a forgotten
        person may carry no identifier at all."""
        return bool(self._keys) and customer_key(customer_id) in self._keys

    def names_text(self, text: str) -> bool:
        """Whether raw JSON text (a dead letter and its payload) holds a forgotten clear id as
        a whole JSON string."""
        return any(value in text for value in self._clear)


def _record_keys(wire: Mapping[str, Any]) -> set[str]:
    rows: list[Any] = [wire] if "kind" not in wire else []
    rows.append(wire.get("row"))
    if isinstance(wire.get("rows"), dict):
        rows.extend(wire["rows"].values())
    keys: set[str] = set()
    for row in rows:
        if isinstance(row, dict):
            properties = row.get("properties")
            anon, user, email, phone, click = (
                str(row.get(c) or "")
                for c in ("anonymous_id", "user_id", "email_hash", "phone_hash", "click_id")
            )
            props = properties if isinstance(properties, dict) else {}
            found = identifiers_of(anon, user, email, phone, click, props)
            keys.update(i.key for i in found)
    for named in (wire.get("moves"), wire.get("split")):
        if isinstance(named, dict | list):
            keys.update(str(k) for k in named)
    return keys


# -- the SQL -----------------------------------------------------------------------------------


def _where(naming: Naming, person: Person) -> tuple[str, dict[str, Any]]:
    """The condition naming ``person`` in a table, and its parameters; empty when the person
    has nothing this table could name them by."""
    terms: list[str] = []
    params: dict[str, Any] = {}
    if person.customers and naming.customers:
        params["customers"] = sorted(person.customers)
        terms += [f"has({{customers:Array(String)}}, {c})" for c in naming.customers]
    if person.keys and naming.keys:
        params["keys"] = sorted(person.keys)
        terms += [f"has({{keys:Array(String)}}, {c})" for c in naming.keys]
    for kind, columns in sorted(naming.values.items()):
        if values := person.values(kind):
            params[f"{kind}_values"] = values
            terms += [f"has({{{kind}_values:Array(String)}}, {c})" for c in columns]
    if person.events and naming.events:
        params["events"] = sorted(person.events)
        terms += [f"has({{events:Array(String)}}, toString({c}))" for c in naming.events]
    clear = [orjson.dumps(v).decode() for kind in _CLEAR_KINDS for v in person.values(kind)]
    if clear and naming.payload:
        # The payload is the event's JSON: a value matches as a whole JSON string, not a part.
        params["clear_values"] = clear
        terms.append(f"multiSearchAny({naming.payload}, {{clear_values:Array(String)}})")
    return " OR ".join(terms), params


def erase_statements(
    table: str, naming: Naming, person: Person, database: str, cluster: str = ""
) -> tuple[str, str, dict[str, Any]] | None:
    """The count and the delete of ``person``'s rows in ``table``, with their parameters; None
    when the table cannot name them.

    On a cluster (TRACKER_CLICKHOUSE_CLUSTER) ``table`` is a Distributed table over
    ``table_local`` on every shard (tracker/store/_migrations.py): rows are counted through it,
    and deleted from the local tables ``ON CLUSTER``, since a Distributed table takes no DELETE.
    """
    where, params = _where(naming, person)
    if not where:
        return None
    qualified = f"`{database}`.`{table}`"
    target = f"`{database}`.`{table}_local` ON CLUSTER `{cluster}`" if cluster else qualified
    return (
        f"SELECT count() FROM {qualified} WHERE {where}",
        f"DELETE FROM {target} WHERE {where}",
        params,
    )


async def erase_person(
    store: ClickHouseStore, person: Person, tables: Mapping[str, Naming] = FORGET_TABLES
) -> dict[str, int]:
    """Delete ``person``'s rows from every table; return the rows deleted, per table."""
    deleted: dict[str, int] = {}
    for table, naming in tables.items():
        statements = erase_statements(table, naming, person, store.database, store.cluster)
        if statements is None:
            deleted[table] = 0
            continue
        count, delete, params = statements
        found = int((await store.query(count, params)).rows[0][0])
        if found:
            await store.command_with(delete, params)
        deleted[table] = found
    return deleted


# -- who a person is ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Touchpoint:
    event_id: str
    ts: datetime
    customer_id: str
    identifiers: tuple[Identifier, ...]
    stitched: bool


async def find_person(store: ClickHouseStore, key: str | Iterable[str], rounds: int = 6) -> Person:
    """The person ``key`` resolves to, from the identity graph as ClickHouse holds it.

    ``key`` may be several keys of one identifier: during a salt rotation
    (``TRACKER_HASH_SALT_PREVIOUS``) an email or phone is stored under either salt's hash
    (``tracker.privacy.identifier_keys``), and the person is whoever any of them names.

    Starting from the identifiers, repeatedly: the customers it resolves to (``identities``,
    and the customer it would have on its own), every identifier resolving to one of them,
    older customer ids those identifiers were merged from, and the identifiers on touchpoints
    stitched to any of those customers, unless the graph now places that identifier with
    someone else (a split). Stops when nothing new turns up.
    """
    keys = {key} if isinstance(key, str) else set(key)
    customers = {
        customer_id_for(Identifier(kind, value))
        for kind, _, value in (k.partition(":") for k in keys)
    }
    events: set[str] = set()
    for _ in range(rounds):
        before = (len(keys), len(customers))
        known = await store.query(
            "SELECT identifier, customer_id, own_customer_id FROM identities FINAL "
            "WHERE has({keys:Array(String)}, identifier) "
            "OR has({customers:Array(String)}, customer_id)",
            {"keys": sorted(keys), "customers": sorted(customers)},
        )
        for identifier, customer, own in known.rows:
            if identifier in keys or customer in customers:
                keys.add(identifier)
                customers.update(c for c in (customer, own) if c)
        candidates: set[str] = set()
        for touchpoint in await _touchpoints(store, Person(frozenset(keys), frozenset(customers))):
            events.add(touchpoint.event_id)
            names = {i.key for i in touchpoint.identifiers}
            if touchpoint.customer_id and not names.isdisjoint(keys):
                customers.add(touchpoint.customer_id)
            if touchpoint.customer_id in customers:
                candidates |= names - keys
        if candidates:  # not an identifier the graph now places with someone else (a split)
            placed = await store.query(
                "SELECT identifier, customer_id FROM identities FINAL "
                "WHERE has({keys:Array(String)}, identifier)",
                {"keys": sorted(candidates)},
            )
            candidates -= {i for i, customer in placed.rows if customer not in customers}
            keys |= candidates
        merged = await store.query(
            "SELECT DISTINCT customer_id FROM journeys "
            "WHERE has({customers:Array(String)}, merged_into)",
            {"customers": sorted(customers)},
        )
        customers.update(row[0] for row in merged.rows if row[0])
        if (len(keys), len(customers)) == before:
            break
    return Person(frozenset(keys), frozenset(customers), frozenset(events))


async def _touchpoints(store: ClickHouseStore, person: Person) -> list[_Touchpoint]:
    where, params = _where(Naming(customers=("customer_id",), values=_TOUCHPOINT.values), person)
    found = await store.query(
        "SELECT toString(event_id), ts, customer_id, anonymous_id, user_id, email_hash, "
        f"phone_hash, click_id, properties, consent_analytics FROM touchpoints WHERE {where}",
        params,
    )
    return [
        _Touchpoint(
            event_id,
            ts if ts.tzinfo else ts.replace(tzinfo=UTC),
            customer,
            Link.of(
                event_id, ts, identifiers_of(anon, user, email, phone, click, properties)
            ).identifiers,
            consent is not False,
        )
        for (
            event_id,
            ts,
            customer,
            anon,
            user,
            email,
            phone,
            click,
            properties,
            consent,
        ) in found.rows
    ]


# -- the worker state that holds the person's hashes ---------------------------------------------


@dataclass(frozen=True, slots=True)
class StateKeys:
    """The keys of compacted topics that name a person, to tombstone: the Faust tables'
    changelogs (journey_state by customer, identity_links by identifier set, call_state by
    call, ticket_state by ticket) and the aliases topic (by identifier, and by identifier set)."""

    journey_state: frozenset[bytes] = frozenset()
    identity_links: frozenset[bytes] = frozenset()
    call_state: frozenset[bytes] = frozenset()
    ticket_state: frozenset[bytes] = frozenset()
    aliases: frozenset[bytes] = frozenset()

    def counts(self) -> dict[str, int]:
        return {
            "journey_state": len(self.journey_state),
            "identity_links": len(self.identity_links),
            "call_state": len(self.call_state),
            "ticket_state": len(self.ticket_state),
            "aliases": len(self.aliases),
        }


async def state_keys(store: ClickHouseStore, person: Person) -> StateKeys:
    """Read before the rows are deleted: the identifier sets come from the person's touchpoints,
    the call and ticket keys from their call and ticket records. Faust tables key by JSON (a ``str`` table's key is
    the JSON string), the aliases topic by the plain key."""
    links: set[tuple[Identifier, ...]] = set()
    for touchpoint in await _touchpoints(store, person):
        if touchpoint.stitched and touchpoint.identifiers:
            links.add(touchpoint.identifiers)
    calls: set[str] = set()
    where, params = _where(FORGET_TABLES["calls"], person)
    if where:
        found = await store.query(f"SELECT provider, call_id FROM calls WHERE {where}", params)
        calls = {f"{provider}:{call_id}" for provider, call_id in found.rows}
    tickets: set[str] = set()
    where, params = _where(FORGET_TABLES["tickets"], person)
    if where:
        found = await store.query(f"SELECT provider, ticket_id FROM tickets WHERE {where}", params)
        tickets = {f"{provider}:{ticket_id}" for provider, ticket_id in found.rows}
    return StateKeys(
        journey_state=frozenset(orjson.dumps(c) for c in person.customers),
        identity_links=frozenset(orjson.dumps("|".join(i.key for i in link)) for link in links),
        call_state=frozenset(orjson.dumps(c) for c in calls),
        ticket_state=frozenset(orjson.dumps(t) for t in tickets),
        aliases=frozenset(
            [k.encode() for k in person.keys] + [link_key(link).encode() for link in links]
        ),
    )


# -- the audit ---------------------------------------------------------------------------------

AUDIT_COLUMNS: Final = (
    "forget_id",
    "requested_at",
    "requested_by",
    "identifier_kind",
    "scope",
    "identifiers",
    "customers",
    "rows",
    "state_tombstones",
)


def audit_row(
    requested_by: str,
    kind: str,
    scope: str,
    person: Person,
    rows: Mapping[str, int],
    tombstones: Mapping[str, int],
    at: datetime | None = None,
) -> tuple[Any, ...]:
    """One ``forget_audit`` row: who, when, what kind of identifier, how much went. Never the
    identifier, nor any other of the person's keys or ids."""
    return (
        str(uuid.uuid4()),
        at or datetime.now(UTC),
        requested_by,
        kind,
        scope,
        len(person.keys),
        len(person.customers),
        dict(rows),
        dict(tombstones),
    )


# -- the narrower forget: one identifier -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Erasure:
    identifier: str
    touchpoints: int
    dead_letters: int
    rows: Mapping[str, int] = field(default_factory=dict)


async def erase(store: ClickHouseStore, key: str) -> Erasure:
    """``--identifier-only``: delete the rows stored under ``key`` alone (its touchpoints, its
    identity records and conflicts, call records naming a phone, dead letters naming a clear
    id), not the rest of its customer."""
    rows = await erase_person(store, Person(frozenset({key})))
    return Erasure(key, rows["touchpoints"], rows["dead_letters"], rows)
