from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest

from agents.forget import (
    AUDIT_COLUMNS,
    FORGET_TABLES,
    ForgottenIdentifiers,
    Person,
    audit_row,
    customer_key,
    erase_statements,
    find_person,
)
from agents.ingest import IngestPipeline, RawMessage
from agents.services import ForgetService
from tests.chdb_probe import probe
from tracker.privacy import InvalidIdentifier, hash_identifier, identifier_key, identifier_keys
from tracker.settings import Settings
from tracker.store import QueryResult
from tracker.store.sink import MemorySink
from tracker.touchpoint import RequestContext, accept

CONTEXT = RequestContext(
    source="web_beacon", received_ts=datetime(2026, 11, 22, tzinfo=UTC), hash_salt="s"
)


def test_identifiers_are_written_as_people_write_them_and_stored_as_touchpoints_store_them() -> (
    None
):
    assert (
        identifier_key(" email: Ada@Example.com", "s", "US")
        == f"email:{hash_identifier('email', 'ada@example.com', 's')}"
    )
    assert (
        identifier_key("phone:(415) 555-0100", "s", "US")
        == f"phone:{hash_identifier('phone', '+14155550100', 's')}"
    )
    assert identifier_key("user:u-1", "s", "US") == "user:u-1"
    for bad in ("ada@example.com", "name:ada", "user:", "email:not-an-address"):
        with pytest.raises(InvalidIdentifier):
            identifier_key(bad, "s", "US")


async def test_ingest_drops_events_that_carry_a_forgotten_identifier() -> None:
    forgotten = ForgottenIdentifiers([identifier_key("email:ada@example.com", "s", "US")])
    touchpoints = MemorySink()
    pipeline = IngestPipeline(touchpoints, MemorySink(), forgotten)
    events = [
        {
            "event_id": "00000000-0000-4000-8000-000000000001",
            "type": "page_view",
            "ts": "2026-11-21T10:00:00Z",
            "email": "ADA@example.com",
        },
        {
            "event_id": "00000000-0000-4000-8000-000000000002",
            "type": "page_view",
            "ts": "2026-11-21T10:00:00Z",
            "anonymous_id": "someone-else",
        },
    ]
    messages = [
        RawMessage(orjson.dumps(accept(e, CONTEXT).to_wire()), "raw", 0, n)
        for n, e in enumerate(events)
    ]

    await pipeline.handle_touchpoints(messages)

    assert list(touchpoints.rows) == [("00000000-0000-4000-8000-000000000002", 0)]


# -- a person's erasure --------------------------------------------------------------------------

PERSON = Person(
    keys=frozenset({"email:e-hash", "phone:p-hash", "user:u-1", "anon:a-1", "crm:sf:9"}),
    customers=frozenset({"c-1", "c-0"}),
    events=frozenset({"00000000-0000-4000-8000-000000000001"}),
)


def test_on_a_cluster_rows_are_counted_through_the_distributed_table_and_deleted_on_every_shard() -> (
    None
):
    count, delete, params = erase_statements(
        "touchpoints", FORGET_TABLES["touchpoints"], PERSON, "tracker", "main"
    ) or ("", "", {})
    assert count.startswith("SELECT count() FROM `tracker`.`touchpoints` WHERE ")
    assert delete.startswith(
        "DELETE FROM `tracker`.`touchpoints_local` ON CLUSTER `main` WHERE has("
    )
    assert count.split(" WHERE ", 1)[1] == delete.split(" WHERE ", 1)[1]
    assert params["customers"] == ["c-0", "c-1"]
    assert params["email_values"] == ["e-hash"] and params["user_values"] == ["u-1"]
    # Without a cluster, both go to the table itself.
    single = erase_statements("journeys", FORGET_TABLES["journeys"], PERSON, "tracker")
    assert single is not None
    assert single[1].startswith("DELETE FROM `tracker`.`journeys` WHERE ")
    assert "_local" not in single[1] and "ON CLUSTER" not in single[1]


def test_clickhouse_parses_every_erasure_on_a_cluster_and_every_named_column_exists() -> None:
    statements = [
        s
        for table, naming in FORGET_TABLES.items()
        for s in (erase_statements(table, naming, PERSON, "tracker", "main") or ())[:2]
    ]
    assert len(statements) == 2 * len(FORGET_TABLES)
    assert [a.error for a in probe(statements, parse_only=True)] == [None] * len(statements)

    columns, stored = (
        answer.rows
        for answer in probe(
            [
                "SELECT table, name FROM system.columns WHERE database = 'tracker'",
                "SELECT name FROM system.tables WHERE database = 'tracker' "
                "AND engine LIKE '%MergeTree'",
            ]
        )
    )
    existing = {(table, name) for table, name in columns}
    named = {
        (table, column)
        for table, naming in FORGET_TABLES.items()
        for column in (
            *naming.customers,
            *naming.keys,
            *(c for cs in naming.values.values() for c in cs),
            *naming.events,
            *([naming.payload] if naming.payload else []),
        )
    }
    assert named - existing == set()
    # Every stored table that holds a customer id or an identifier is on the forget list.
    tables = {row[0] for row in stored}
    naming = {
        "customer_id",
        "identifier",
        "anonymous_id",
        "email_hash",
        "phone_hash",
        "caller_hash",
    }
    personal = {t for t, name in existing if name in naming}
    assert (personal & tables) - set(FORGET_TABLES) == set()
    assert {"touchpoints", "journeys", "identities", "calls"} <= personal & tables


def test_identifier_only_names_the_identifier_and_no_customer() -> None:
    narrow = Person(frozenset({"user:u-1"}))
    assert erase_statements("sessions", FORGET_TABLES["sessions"], narrow, "tracker") is None
    statements = erase_statements("dead_letters", FORGET_TABLES["dead_letters"], narrow, "t")
    assert statements is not None
    # A clear id matches dead letters' raw JSON as a whole string, never a part of one.
    assert statements[2] == {"clear_values": ['"u-1"']}
    hashed = Person(frozenset({"email:e-hash"}))
    assert erase_statements("dead_letters", FORGET_TABLES["dead_letters"], hashed, "t") is None


def test_a_crm_id_is_suppressed_too() -> None:
    forgotten = ForgottenIdentifiers(["crm:salesforce:0031"])
    crm = accept(
        {
            "event_id": "00000000-0000-4000-8000-000000000003",
            "type": "track",
            "name": "renewal",
            "ts": "2026-11-21T10:00:00Z",
            "anonymous_id": "new-device",
            "properties": {"crm.salesforce": "0031"},
        },
        CONTEXT,
    )
    assert forgotten.forgets(crm)


def test_the_audit_row_names_nobody() -> None:
    row = audit_row(
        "cli",
        "email",
        "person",
        PERSON,
        {"touchpoints": 4},
        {"journey_state": 2},
        at=datetime(2026, 11, 30, tzinfo=UTC),
    )
    audit_id, *rest = row
    uuid.UUID(audit_id)
    # The random id is left out: its hex can happen to contain "a-1" or "c-1".
    text = repr(rest)
    assert not any(part in text for part in ("e-hash", "p-hash", "u-1", "a-1", "c-1", "sf:9"))
    assert dict(zip(AUDIT_COLUMNS, row, strict=True))["rows"] == {"touchpoints": 4}
    assert dict(zip(AUDIT_COLUMNS, row, strict=True))["identifiers"] == 5


def test_records_of_the_stitching_topics_that_name_a_forgotten_identifier_are_recognised() -> None:
    forgotten = ForgottenIdentifiers(["anon:ada-laptop", "email:e-hash"])
    row = {"event_id": "e-1", "anonymous_id": "ada-laptop", "email_hash": "", "properties": {}}
    other = {**row, "anonymous_id": "bob-phone"}
    named = [
        orjson.dumps(row),  # the identity log carries the row itself
        orjson.dumps({"kind": "event", "primary": "anon:ada-laptop", "row": row}),
        orjson.dumps({"kind": "restitch", "events": [], "rows": {"e-1": row}}),
        orjson.dumps({"kind": "regroup", "moves": {"email:e-hash": "c-2"}, "v": 4}),
        orjson.dumps({"split": ["email:e-hash", "user:u-9"], "requested_at": "x"}),
    ]
    kept = [
        orjson.dumps(other),
        orjson.dumps({"kind": "event", "primary": "anon:bob-phone", "row": other}),
        b"not json",
    ]
    assert [forgotten.names_record(v) for v in named] == [True] * len(named)
    assert [forgotten.names_record(v) for v in kept] == [False] * len(kept)
    # A restitch or regroup may carry no identifier: the journey topic's key, their customer, says.
    forgotten.add(customer_key("c-ada"))
    assert forgotten.names_customer("c-ada") and not forgotten.names_customer("c-bob")
    # A dead letter holds the raw event as a JSON string inside its own JSON.
    letter = orjson.dumps({"payload": orjson.dumps({"anonymous_id": "ada-laptop"}).decode()})
    assert forgotten.names_text(letter.decode())
    assert not forgotten.names_text(letter.decode().replace("ada-laptop", "ada-laptop-2"))


# -- forget during a salt rotation -----------------------------------------------------------------


class _Graph:
    """A stand-in for the store's identity graph: ``identities`` rows only (identifier,
    customer, own customer), answering the queries find_person and the erase send."""

    database, cluster = "tracker", ""

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        self.rows = rows
        self.deleted: list[dict[str, Any]] = []

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> QueryResult:
        params = params or {}
        keys, customers = set(params.get("keys", ())), set(params.get("customers", ()))
        if sql.startswith("SELECT identifier, customer_id, own_customer_id FROM identities"):
            return QueryResult([], [r for r in self.rows if r[0] in keys or r[1] in customers])
        if sql.startswith("SELECT count() FROM `tracker`.`identities`"):
            found = [r for r in self.rows if r[0] in keys or r[1] in customers]
            return QueryResult([], [(len(found),)])
        if sql.startswith("SELECT count()"):
            return QueryResult([], [(0,)])
        return QueryResult([], [])  # no touchpoints, merges or calls

    async def command_with(self, sql: str, params: dict[str, Any]) -> None:
        self.deleted.append(params)

    async def insert(self, *_: Any) -> None:
        pass


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, _value: bytes | None, key: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, key))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


OLD_SALT, NEW_SALT = "salt-2025", "salt-2026"
OLD_EMAIL = identifier_key("email:ada@example.com", OLD_SALT, "US")


def _stored_under_the_old_salt() -> _Graph:
    """Ada, stitched before the rotation: her email hashed with the old salt, and her device."""
    return _Graph([(OLD_EMAIL, "c-ada", "c-ada-email"), ("anon:ada-laptop", "c-ada", "c-ada")])


async def test_during_a_salt_rotation_forget_finds_a_person_stored_under_the_previous_salt() -> (
    None
):
    settings = Settings.from_env(
        {"TRACKER_HASH_SALT": NEW_SALT, "TRACKER_HASH_SALT_PREVIOUS": OLD_SALT}
    )
    graph, producer = _stored_under_the_old_salt(), _Producer()
    ingest: Any = SimpleNamespace(lock=asyncio.Lock())
    service = ForgetService(settings, "forgotten", cast(Any, graph), ForgottenIdentifiers(), ingest)
    service._producer = cast(Any, producer)

    answer = await service.forget("email:ada@example.com")

    new_email = identifier_key("email:ada@example.com", NEW_SALT, "US")
    suppressed = {key.decode() for topic, key in producer.sent if topic == "forgotten"}
    # Both hashes of her email, her device and her customer are suppressed and erased.
    assert {OLD_EMAIL, new_email, "anon:ada-laptop", "customer:c-ada"} <= suppressed
    assert answer["rows"]["identities"] == 2
    assert "c-ada" in graph.deleted[0]["customers"]


async def test_without_the_previous_salt_the_person_under_the_old_hash_is_not_found() -> None:
    graph = _stored_under_the_old_salt()
    current_only = identifier_key("email:ada@example.com", NEW_SALT, "US")

    person = await find_person(graph, current_only)  # type: ignore[arg-type]
    both = await find_person(
        graph,  # type: ignore[arg-type]
        identifier_keys("email:ada@example.com", (NEW_SALT, OLD_SALT), "US"),
    )

    assert "anon:ada-laptop" not in person.keys and "c-ada" not in person.customers
    assert {"anon:ada-laptop", OLD_EMAIL} <= both.keys and "c-ada" in both.customers
