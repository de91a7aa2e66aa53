"""The ClickHouse store and sink against the real engine (embedded chDB, one per test session)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from agents.identity import IdentityResolver, identifiers_of
from agents.ingest import IngestPipeline, RawMessage, enriched
from tracker.deadletter import DeadLetter
from tracker.errors import QueryRefused, StoreError
from tracker.store import ClickHouseStore, QueryLimits, load_migrations
from tracker.store.sink import ClickHouseSink
from tracker.store.tables import ALIASES, DEAD_LETTERS, TOUCHPOINTS
from tracker.touchpoint import RequestContext, accept

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def store(chdb_path: Path) -> Iterator[ClickHouseStore]:
    fresh = ClickHouseStore(f"chdb://{chdb_path}", f"test_{uuid.uuid4().hex[:12]}")
    yield fresh
    fresh.close()


def test_migrate_is_idempotent(store: ClickHouseStore) -> None:
    every = [m.version for m in load_migrations()]
    assert store.run_sync(store.migrate_sync) == every
    assert store.run_sync(store.migrate_sync) == []
    tables = store.run_sync(store.query_sync, "SHOW TABLES").rows
    assert {"touchpoints", "dead_letters", "schema_migrations"} <= {t[0] for t in tables}


def test_contract_columns_exist(store: ClickHouseStore) -> None:
    store.run_sync(store.migrate_sync)
    columns = {
        r[0]
        for r in store.run_sync(
            store.query_sync,
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'touchpoints'",
        ).rows
    }
    assert {
        "event_id",
        "type",
        "name",
        "source",
        "channel",
        "ts",
        "customer_id",
        "session_id",
        "stage",
        "is_bot",
    } <= columns
    dead = {
        r[0]
        for r in store.run_sync(
            store.query_sync,
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'dead_letters'",
        ).rows
    }
    assert {"reason", "payload"} <= dead


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE touchpoints",
        "INSERT INTO touchpoints (event_id) VALUES (generateUUIDv4())",
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT 1 SETTINGS readonly = 0",
    ],
)
def test_console_queries_cannot_write_even_past_the_statement_check(
    store: ClickHouseStore, statement: str
) -> None:
    """The engine's readonly=1 is the second wall: the store refuses writes whatever it is sent."""
    store.run_sync(store.migrate_sync)
    with pytest.raises(StoreError, match="READONLY"):
        store.run_sync(store.raw_query_sync, statement, "TabSeparated", QueryLimits())
    assert store.run_sync(store.query_sync, "SELECT count() FROM touchpoints").rows == [(0,)]


def test_what_a_failed_console_query_wrote_never_reaches_the_next_answer(
    store: ClickHouseStore,
) -> None:
    store.run_sync(store.migrate_sync)
    with pytest.raises(StoreError):
        store.run_sync(
            store.raw_query_sync, "SELECT 'hx-leak'; DROP TABLE links", "TSV", QueryLimits()
        )
    # One statement that fails after its first block of output was written.
    with pytest.raises(StoreError):
        store.run_sync(
            store.raw_query_sync,
            "SELECT 'hx-leak', throwIf(number = 70000) FROM numbers(100000)",
            "TSV",
            QueryLimits(),
        )
    assert store.run_sync(store.raw_query_sync, "SELECT 'mine'", "TSV", QueryLimits()) == b"mine\n"


def test_what_a_failed_statement_wrote_never_reaches_the_pipelines_next_answer(
    store: ClickHouseStore,
) -> None:
    store.run_sync(store.migrate_sync)
    with pytest.raises(StoreError):
        store.run_sync(store.command_sync, "SELECT 'hx-leak'; SELECT throwIf(1)")
    assert store.run_sync(store.command_sync, "SELECT 'mine'") == "mine"
    assert store.run_sync(store.query_sync, "SELECT count() FROM touchpoints").rows == [(0,)]


@pytest.mark.parametrize(
    ("limits", "statement", "reason"),
    [
        (
            QueryLimits(max_seconds=0.5),
            "SELECT count() FROM numbers(1000000000000)",
            "TRACKER_QUERY_MAX_SECONDS",
        ),
        (
            QueryLimits(max_memory_bytes=32 * 1024 * 1024),
            "SELECT groupArray(number) FROM numbers(100000000)",
            "TRACKER_QUERY_MAX_MEMORY_BYTES",
        ),
        (QueryLimits(max_rows=10), "SELECT number FROM numbers(11)", "TRACKER_QUERY_MAX_ROWS"),
    ],
)
def test_a_console_query_past_a_limit_is_refused_with_the_limit_named(
    store: ClickHouseStore, limits: QueryLimits, statement: str, reason: str
) -> None:
    with pytest.raises(QueryRefused, match=reason):
        store.run_sync(store.raw_query_sync, statement, "TSV", limits)
    assert store.run_sync(store.raw_query_sync, "SELECT number FROM numbers(10)", "TSV", limits)


async def test_sink_writes_each_key_once_even_when_its_time_moved(store: ClickHouseStore) -> None:
    await store.migrate()
    sink = ClickHouseSink(store, TOUCHPOINTS)
    received = datetime(2026, 11, 22, 10, tzinfo=UTC)
    ids = [str(uuid.uuid4()) for _ in range(3)]

    def add(event_id: str, received_ts: datetime, version: int = 0) -> None:
        context = RequestContext(source="web_beacon", received_ts=received_ts, hash_salt="s")
        touchpoint = accept(
            {
                "event_id": event_id,
                "type": "page_view",
                "ts": "2026-11-22T09:00:00Z",
                "sent_ts": "2026-11-22T09:00:05Z",
            },
            context,
        )
        touchpoint.version = version
        sink.add(touchpoint.event_id, touchpoint.ts, enriched(touchpoint), version)

    add(ids[0], received)
    add(ids[1], received)
    assert (await sink.flush()).written == 2

    # A client retry an hour later: the corrected time differs, the event does not.
    add(ids[1], received + timedelta(hours=1))
    add(ids[2], received)
    result = await sink.flush()

    assert (result.written, result.duplicates) == (1, 1)
    rows = (
        await store.query("SELECT toString(event_id), count() FROM touchpoints GROUP BY event_id")
    ).rows
    assert sorted(rows) == sorted((i, 1) for i in ids)


async def test_a_new_version_replaces_the_old_one(store: ClickHouseStore) -> None:
    await store.migrate()
    sink = ClickHouseSink(store, TOUCHPOINTS)
    context = RequestContext(
        source="server", received_ts=datetime(2026, 11, 22, 10, tzinfo=UTC), hash_salt="s"
    )
    event_id = str(uuid.uuid4())
    for version, name in ((1, "ringing"), (2, "answered"), (1, "ringing")):
        touchpoint = accept(
            {"event_id": event_id, "type": "call", "name": name, "ts": "2026-11-22T09:00:00Z"},
            context,
        )
        touchpoint.version = version
        sink.add(event_id, touchpoint.ts, enriched(touchpoint), version)
        await sink.flush()

    assert (await store.query("SELECT count() FROM touchpoints")).rows == [(2,)]
    assert (await store.query("SELECT name, version FROM touchpoints FINAL")).rows == [
        ("answered", 2)
    ]


async def test_a_batch_clickhouse_refuses_is_written_row_by_row(store: ClickHouseStore) -> None:
    # 101 events in 101 different months: more partitions than one INSERT may touch.
    await store.migrate()
    pipeline = IngestPipeline(
        ClickHouseSink(store, TOUCHPOINTS),
        ClickHouseSink(store, DEAD_LETTERS),
    )
    context = RequestContext(
        source="server",
        received_ts=datetime(2026, 11, 22, tzinfo=UTC),
        hash_salt="s",
        max_event_age=timedelta(days=3700),
    )
    messages = []
    for month in range(101):
        ts = datetime(2018, 1, 15, tzinfo=UTC) + timedelta(days=31 * month)
        touchpoint = accept(
            {"event_id": str(uuid.uuid4()), "type": "purchase", "ts": ts.isoformat()}, context
        )
        messages.append(RawMessage(orjson.dumps(touchpoint.to_wire()), "raw", 0, month))

    await pipeline.handle_touchpoints(messages)

    assert (await store.query("SELECT count(), uniqExact(toYYYYMM(ts)) FROM touchpoints")).rows == [
        (101, 101)
    ]
    assert (await store.query("SELECT count() FROM dead_letters")).rows == [(0,)]


async def test_rows_clickhouse_refuses_on_their_own_are_handed_back(store: ClickHouseStore) -> None:
    await store.migrate()
    sink = ClickHouseSink(store, DEAD_LETTERS)
    now = datetime(2026, 11, 22, tzinfo=UTC)
    good = [str(uuid.uuid4()) for _ in range(2)]
    for dead_letter_id in good:
        sink.add(dead_letter_id, now, letter(dead_letter_id, now))
    sink.add("not-a-uuid", now, letter("not-a-uuid", now))

    result = await sink.flush()

    assert result.written == 2 and list(result.refused) == [("not-a-uuid", 0)]
    stored = {
        r[0] for r in (await store.query("SELECT toString(dead_letter_id) FROM dead_letters")).rows
    }
    assert stored == set(good)


def test_tracker_migrate_applies_once_then_says_up_to_date(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(TRACKER_DATA_DIR=str(tmp_path), TRACKER_CLICKHOUSE_URL=f"chdb://{tmp_path / 'ch'}")
    command = [sys.executable, "-m", "tracker", "migrate"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    versions = [m.version for m in load_migrations()]
    assert (first.returncode, first.stdout) == (
        0,
        f"applied {len(versions)} migration(s): {versions}\n",
    )
    assert (second.returncode, second.stdout) == (0, "up to date\n")


# -- re-attribution (0006): the identity key in SQL is the one the worker routes by ------------

_ID_VALUES = (
    "",
    "v-1",
    "V-2",
    "null",
    " NULL ",
    "Anonymous",
    "\tundefined\n",
    "0",
    "00",
    "0000",
    "aaaa",
    "AaAa",
    "ÉÉéé",
    "ééé",
    "n/a",
    "[object Object]",
    "00000000-0000-0000-0000-000000000000",
    "42",
    " 42",
    "x y",
    "ümlaut",
)


def _python_identity_key(
    event_id: str,
    ids: tuple[str, str, str, str, str],
    properties: dict[str, str],
    consent: bool | None,
) -> str:
    anon, user, email, phone, click = ids
    found = (
        identifiers_of(anon, user, email, phone, click, properties) if consent is not False else []
    )
    resolution = IdentityResolver().resolve(event_id, datetime(2026, 11, 22, tzinfo=UTC), found)
    return "" if resolution.primary.startswith("event:") else resolution.primary


def test_identity_key_in_sql_is_the_identifier_the_worker_routes_by(
    store: ClickHouseStore,
) -> None:
    store.run_sync(store.migrate_sync)
    chooser = random.Random(5)
    rows, expected = [], {}
    for _ in range(600):
        event_id = str(uuid.uuid4())
        ids = tuple(chooser.choice(_ID_VALUES) for _ in range(5))
        properties = {
            chooser.choice(("crm.sf", "crm.hub-spot", "crm.a", "crm.a-b", "plan")): chooser.choice(
                _ID_VALUES
            )
            for _ in range(chooser.randrange(3))
        }
        consent = chooser.choice((None, None, True, False))
        rows.append([event_id, datetime(2026, 11, 22, tzinfo=UTC), *ids, properties, consent])
        expected[event_id] = _python_identity_key(event_id, ids, properties, consent)  # type: ignore[arg-type]
    columns = ["event_id", "ts", "anonymous_id", "user_id", "email_hash", "phone_hash", "click_id"]
    store.run_sync(
        store.insert_sync, "touchpoints", rows, [*columns, "properties", "consent_analytics"]
    )

    found = dict(
        store.run_sync(
            store.query_sync, "SELECT toString(event_id), identity_key FROM touchpoints"
        ).rows
    )

    assert found == expected


def test_customer_touchpoints_follow_their_identifier_through_merges_and_splits(
    store: ClickHouseStore,
) -> None:
    store.run_sync(store.migrate_sync)
    ts = datetime(2026, 11, 22, 9, tzinfo=UTC)
    visit, identify, lone = (str(uuid.uuid4()) for _ in range(3))
    # Both events were stitched into customer A: the visit by its anonymous id, the identify
    # (anon + email) by its email. A split has since moved the email to customer E.
    store.run_sync(
        store.insert_sync,
        "touchpoints",
        [
            [visit, ts, "A", "v-1", ""],
            [identify, ts + timedelta(minutes=5), "A", "v-1", "e1"],
            [lone, ts, "L", "", ""],
        ],
        ["event_id", "ts", "customer_id", "anonymous_id", "email_hash"],
    )
    identities = [
        ["anon:v-1", "anon", "A", "A", 1, ts],
        ["email:e1", "email", "A", "E", 2, ts],
        ["email:e1", "email", "E", "E", 7, ts],  # the split, later in the identity log
    ]
    store.run_sync(store.insert_sync, "identities", identities, list(ALIASES.columns))

    rows = store.run_sync(
        store.query_sync,
        "SELECT toString(event_id), customer_id, identity_key, current_customer_id "
        "FROM customer_touchpoints",
    ).rows

    assert sorted(rows) == sorted(
        [
            (visit, "A", "anon:v-1", "A"),
            (identify, "A", "email:e1", "E"),
            (lone, "L", "", "L"),  # no identifier: it stays where it was stitched
        ]
    )


def letter(dead_letter_id: str, at: datetime) -> DeadLetter:
    return DeadLetter("beacon", "collect", "r", "{}", at, dead_letter_id=dead_letter_id)
