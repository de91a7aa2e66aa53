"""What the reports stand on, against the real engine (embedded chDB): journey lookups that read
a customer's granules instead of every touchpoint, and rollups that answer as a direct
aggregation of touchpoints and frictions would."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.forget import erase
from tracker.cli.journey import find_journey
from tracker.settings import Settings
from tracker.store import ClickHouseStore, QueryLimits

pytestmark = pytest.mark.integration

CUSTOMERS = 200_000
EVENTS = 600_000  # three per customer, far apart in the table's time order


@pytest.fixture(scope="module")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def store(chdb_path: Path) -> Iterator[ClickHouseStore]:
    fresh = ClickHouseStore(f"chdb://{chdb_path}", f"test_{uuid.uuid4().hex[:12]}")
    fresh.run_sync(fresh.migrate_sync)
    yield fresh
    fresh.close()


def _read(store: ClickHouseStore, sql: str) -> list[dict[str, Any]]:
    data: bytes = store.run_sync(store.raw_query_sync, sql, "JSONEachRow", QueryLimits())
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def _recorded(
    store: ClickHouseStore,
) -> tuple[list[str], Callable[[str], list[dict[str, Any]]]]:
    """A reader of ``store`` that keeps each query it ran, in order."""
    queries: list[str] = []

    def read(sql: str) -> list[dict[str, Any]]:
        queries.append(sql)
        return _read(store, sql)

    return queries, read


def _granules(store: ClickHouseStore, sql: str, table: str) -> tuple[int, int]:
    """(granules read, granules in all) of ``table`` in the plan of ``sql``."""
    plan = store.run_sync(
        store.raw_query_sync, f"EXPLAIN indexes = 1 {sql}", "TabSeparatedRaw", QueryLimits()
    ).decode()
    step = plan[plan.index(f"ReadFromMergeTree ({store.database}.{table})") :]
    read = int(re.search(r"Parts: \d+ \| Granules: (\d+)", step).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"Granules: \d+/(\d+)", step).group(1))  # type: ignore[union-attr]
    return read, total


def _granules_by_table(store: ClickHouseStore, sql: str) -> list[tuple[str, int, int]]:
    """(table, granules read, granules in all) of every table read in the plan of ``sql``,
    subqueries included."""
    plan = store.run_sync(
        store.raw_query_sync, f"EXPLAIN indexes = 1 {sql}", "TabSeparatedRaw", QueryLimits()
    ).decode()
    found = []
    for step in plan.split("ReadFromMergeTree (")[1:]:
        table = step[: step.index(")")].rsplit(".", 1)[-1]
        read = re.search(r"Parts: \d+ \| Granules: (\d+)", step)
        total = re.search(r"Granules: \d+/(\d+)", step)
        if read and total:
            found.append((table, int(read.group(1)), int(total.group(1))))
    return found


def _many_customers(store: ClickHouseStore) -> None:
    """EVENTS page views of CUSTOMERS anonymous visitors, each stitched to its own customer."""
    store.run_sync(
        store.command_sync,
        "INSERT INTO touchpoints (event_id, version, type, source, channel, ts, device_ts, "
        "received_ts, customer_id, anonymous_id, page_path) "
        "SELECT generateUUIDv4(number), 1, 'page_view', 'web_beacon', 'direct', "
        "toDateTime64('2026-11-01 00:00:00', 3, 'UTC') + number, "
        "toDateTime64('2026-11-01 00:00:00', 3, 'UTC') + number, now64(3), "
        f"concat('c-', toString(number % {CUSTOMERS})), "
        f"concat('a-', toString(number % {CUSTOMERS})), concat('/p', toString(number % 7)) "
        f"FROM numbers({EVENTS})",
    )
    store.run_sync(
        store.command_sync,
        "INSERT INTO identities (identifier, kind, customer_id, own_customer_id, version, ts) "
        "SELECT concat('anon:a-', toString(number)), 'anon', concat('c-', toString(number)), "
        "concat('c-', toString(number)), 1, toDateTime64('2026-11-01 00:00:00', 3, 'UTC') "
        f"FROM numbers({CUSTOMERS})",
    )


def test_a_journey_lookup_reads_a_few_granules_among_many_customers(
    store: ClickHouseStore,
) -> None:
    _many_customers(store)
    # Customer c-42 merged with c-43 since: a-43 resolves to c-42 now.
    store.run_sync(
        store.command_sync,
        "INSERT INTO identities (identifier, kind, customer_id, own_customer_id, version, ts) "
        "VALUES ('anon:a-43', 'anon', 'c-42', 'c-43', 2, now64(3))",
    )
    queries, read = _recorded(store)
    journey = find_journey(Settings.from_env({}), "anon:a-42", read)
    assert journey is not None and journey.customer_id == "c-42"
    assert len(journey.events) == 6  # three of a-42, three of a-43 that merged in
    assert journey.merged_customer_ids == ["c-43"]
    # One read, of the table ordered by owner (0015), through its primary key: a few granules
    # of thousands, and no other table (the plan leaves out the IN subqueries, which read the
    # same table by the same key).
    assert len(queries) == 1 and "journey_lookup" in queries[0]
    plans = _granules_by_table(store, queries[0])
    assert [t for t, _, _ in plans] == ["journey_lookup"]
    for _, read_granules, total in plans:
        assert total >= 1000, total  # the table is large enough for a scan to show
        assert read_granules * 100 <= total, (read_granules, total)


def test_a_lookup_follows_moved_keys_and_finds_frictions_stitched_under_another_id(
    store: ClickHouseStore,
) -> None:
    """A touchpoint stitched to the customer whose key has moved on since is not its; one routed
    by its key but stitched to a customer id it never had is, with the friction stored there."""
    own, moved, elsewhere = (str(uuid.UUID(int=i)) for i in (1, 2, 3))
    store.run_sync(
        store.command_sync,
        "INSERT INTO touchpoints (event_id, version, type, source, channel, ts, device_ts, "
        "received_ts, customer_id, anonymous_id, page_path) VALUES "
        f"('{own}', 1, 'page_view', 'web', 'direct', '2026-11-01 09:00:00', "
        "'2026-11-01 09:00:00', now64(3), 'c-1', 'a-1', '/'), "
        f"('{moved}', 1, 'page_view', 'web', 'direct', '2026-11-01 09:01:00', "
        "'2026-11-01 09:01:00', now64(3), 'c-1', 'a-2', '/pricing'), "
        f"('{elsewhere}', 1, 'page_view', 'web', 'direct', '2026-11-01 09:02:00', "
        "'2026-11-01 09:02:00', now64(3), 'c-9', 'a-1', '/signup')",
    )
    # a-2 was c-1's, then split off to a customer of its own.
    store.run_sync(
        store.command_sync,
        "INSERT INTO identities (identifier, kind, customer_id, own_customer_id, version, ts) "
        "VALUES ('anon:a-1', 'anon', 'c-1', 'c-1', 1, now64(3)), "
        "('anon:a-2', 'anon', 'c-1', 'c-2', 2, now64(3)), "
        "('anon:a-2', 'anon', 'c-2', 'c-2', 3, now64(3))",
    )
    store.run_sync(
        store.command_sync,
        "INSERT INTO frictions (friction_id, version, customer_id, event_id, ts, reason, "
        f"severity, detail, retracted) VALUES ('f-1', 1, 'c-9', '{elsewhere}', "
        "'2026-11-01 09:02:00', 'error_page', 'high', 'HTTP 500', false)",
    )
    queries, read = _recorded(store)
    journey = find_journey(Settings.from_env({}), "anon:a-1", read)
    assert journey is not None and journey.customer_id == "c-1"
    assert journey.identifiers == {"anon": ["a-1"]} and journey.merged_customer_ids == []
    assert [e.event_id for e in journey.events] == [own, elsewhere]
    assert [e.frictions for e in journey.events] == [(), (("error_page", "high", "HTTP 500"),)]
    assert len(queries) == 2  # the second for the frictions stored under c-9
    moved_away = find_journey(Settings.from_env({}), "anon:a-2", read)
    assert moved_away is not None and moved_away.customer_id == "c-2"
    assert [e.event_id for e in moved_away.events] == [moved]
    # Looked up by a customer id it had on its own, and by one it never had.
    by_id = find_journey(Settings.from_env({}), "c-2", read)
    assert by_id is not None and [e.event_id for e in by_id.events] == [moved]
    assert find_journey(Settings.from_env({}), "c-404", read) is None


def test_a_lookup_by_an_identifier_never_linked_finds_its_touchpoints(
    store: ClickHouseStore,
) -> None:
    event = str(uuid.UUID(int=5))
    store.run_sync(
        store.command_sync,
        "INSERT INTO touchpoints (event_id, version, type, source, channel, ts, device_ts, "
        f"received_ts, customer_id, anonymous_id, page_path) VALUES ('{event}', 1, "
        "'page_view', 'web', 'direct', '2026-11-01 09:00:00', '2026-11-01 09:00:00', now64(3), "
        "'c-5', 'a-5', '/')",
    )
    for raw in ("anon:a-5", "c-5"):
        journey = find_journey(Settings.from_env({}), raw, lambda sql: _read(store, sql))
        assert journey is not None and journey.customer_id == "c-5", raw
        assert [e.event_id for e in journey.events] == [event], raw
        assert journey.identifiers == {}, raw


def test_the_view_reads_a_customer_by_identity_key_and_attributes_merges(
    store: ClickHouseStore,
) -> None:
    _many_customers(store)
    by_customer = (
        "SELECT count() AS n, any(current_customer_id) AS customer FROM customer_touchpoints "
        "WHERE identity_key IN (SELECT identifier FROM identities FINAL WHERE customer_id = 'c-7')"
    )
    assert _read(store, by_customer) == [{"n": 3, "customer": "c-7"}]
    read_granules, total = _granules(store, by_customer, "touchpoints_by_customer")
    assert total >= 70 and read_granules * 10 <= total, (read_granules, total)


def test_the_lookup_table_keeps_every_touchpoint_column_and_forgetting_erases_it_there(
    store: ClickHouseStore,
) -> None:
    columns = (
        "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
        "AND table = '{table}' AND default_kind != 'ALIAS' ORDER BY name"
    )
    touchpoints = _read(store, columns.format(table="touchpoints"))
    by_customer = _read(store, columns.format(table="touchpoints_by_customer"))
    assert [c for c in by_customer if c["name"] != "identity_key"] == touchpoints
    _many_customers(store)
    asyncio.run(erase(store, "anon:a-5"))
    left = "SELECT count() AS n FROM {table} WHERE anonymous_id = 'a-5'"
    assert _read(store, left.format(table="touchpoints_by_customer")) == [{"n": 0}]
    assert _read(store, left.format(table="touchpoints")) == [{"n": 0}]


# -- rollups -------------------------------------------------------------------------------------

_DIMENSIONS = "day, channel, type, touchpoint_name, stage, is_bot"
_ROLLUP = f"""
SELECT {_DIMENSIONS},
       sumMerge(events) + uniqMerge(versioned_events) AS events,
       uniqMerge(customers) AS customers,
       sumMerge(conversions) AS conversions, round(sumMerge(conversion_value), 2) AS value,
       sumMerge(frictions) AS frictions,
       sumMerge(nps_n) AS nps_n, sumMerge(nps_sum) AS nps_sum,
       sumMerge(nps_promoters) AS nps_promoters, sumMerge(nps_detractors) AS nps_detractors,
       sumMerge(csat_n) AS csat_n, sumMerge(csat_sum) AS csat_sum,
       sumMerge(csat_satisfied) AS csat_satisfied,
       sumMerge(ces_n) AS ces_n, sumMerge(ces_sum) AS ces_sum,
       sumMerge(ces_sum_squares) AS ces_sum_squares
FROM touchpoint_daily GROUP BY {_DIMENSIONS}
HAVING events > 0 OR frictions != 0 OR nps_n + csat_n + ces_n > 0
ORDER BY {_DIMENSIONS}
"""
_DIRECT = f"""
SELECT {_DIMENSIONS},
       sum(e) AS events, sum(c) AS customers, sum(conv) AS conversions,
       round(sum(val), 2) AS value, sum(f) AS frictions,
       sum(nn) AS nps_n, sum(ns) AS nps_sum, sum(np) AS nps_promoters, sum(nd) AS nps_detractors,
       sum(cn) AS csat_n, sum(cs) AS csat_sum, sum(csat) AS csat_satisfied,
       sum(en) AS ces_n, sum(es) AS ces_sum, sum(eq) AS ces_sum_squares
FROM (
    SELECT toDate(ts) AS day, channel, type,
           if(type = 'page_view', page_path, name) AS touchpoint_name, stage, is_bot,
           count() AS e, uniqExactIf(identity_key, identity_key != '') AS c,
           countIf(conversion != '') AS conv, sumIf(ifNull(value, 0), conversion != '') AS val,
           0 AS f, 0 AS nn, 0 AS ns, 0 AS np, 0 AS nd, 0 AS cn, 0 AS cs, 0 AS csat, 0 AS en,
           0 AS es, 0 AS eq
    FROM touchpoints FINAL
    GROUP BY {_DIMENSIONS}
    UNION ALL
    -- an answer's scores count where the touchpoint it rates is, else under '(unrated)'
    SELECT toDate(ts) AS day, if(rated_type != '', rated_channel, '') AS channel,
           if(rated_type != '', rated_type, '(unrated)') AS type,
           if(rated_type != '', rated_name, '') AS touchpoint_name,
           if(rated_type != '', rated_stage, '') AS stage, is_bot,
           0, 0, 0, 0, 0,
           countIf(survey_kind = 'nps') AS nn, sumIf(toFloat64(ifNull(survey_score, 0)), survey_kind = 'nps') AS ns,
           countIf(survey_kind = 'nps' AND survey_score >= 9) AS np,
           countIf(survey_kind = 'nps' AND survey_score <= 6) AS nd,
           countIf(survey_kind = 'csat') AS cn, sumIf(toFloat64(ifNull(survey_score, 0)), survey_kind = 'csat') AS cs,
           countIf(survey_kind = 'csat' AND survey_score >= 4) AS csat,
           countIf(survey_kind = 'ces') AS en, sumIf(toFloat64(ifNull(survey_score, 0)), survey_kind = 'ces') AS es,
           sumIf(pow(toFloat64(ifNull(survey_score, 0)), 2), survey_kind = 'ces') AS eq
    FROM touchpoints FINAL WHERE survey_kind != '' AND customer_id != ''
    GROUP BY {_DIMENSIONS}
    UNION ALL
    SELECT toDate(ts), channel, type, name, stage, is_bot, 0, 0, 0, 0, count(),
           0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    FROM frictions FINAL WHERE NOT retracted
    GROUP BY toDate(ts), channel, type, name, stage, is_bot
)
GROUP BY {_DIMENSIONS}
HAVING events > 0 OR frictions != 0 OR nps_n + csat_n + ces_n > 0
ORDER BY {_DIMENSIONS}
"""


def _touchpoint(n: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": str(uuid.UUID(int=n)),
        "version": 0,  # a touchpoint of one version, as the worker writes a web event
        "type": "page_view",
        "source": "web_beacon",
        "channel": "web",
        "ts": f"2026-11-{20 + n % 3} 09:{n % 60:02d}:00",
        "customer_id": f"c-{n % 5}",
        "anonymous_id": f"a-{n % 5}",
        "page_path": f"/p{n % 2}",
        "stage": "awareness",
        "is_bot": n % 11 == 0,
    }
    row.update(fields)
    return row


def _insert(store: ClickHouseStore, table: str, rows: list[dict[str, Any]]) -> None:
    lines = b"\n".join(orjson.dumps(r) for r in rows).decode()
    store.run_sync(store.command_sync, f"INSERT INTO {table} FORMAT JSONEachRow {lines}")


_RATED_PAGE = {
    "rated_channel": "web",
    "rated_type": "page_view",
    "rated_name": "/p1",
    "rated_stage": "consideration",
}


def test_rollups_answer_as_a_direct_aggregation_of_touchpoints_and_frictions(
    store: ClickHouseStore,
) -> None:
    rows = [_touchpoint(n) for n in range(60)]
    rows += [
        _touchpoint(100 + n, type="purchase", name="order", conversion="purchase", value=10.5 * n)
        for n in range(7)
    ]
    rows += [_touchpoint(120, type="purchase", name="order", value=0.0)]  # no conversion
    scores = {"nps": [0, 6, 7, 9, 10, 10], "csat": [1, 4, 5, 5], "ces": [2, 7, 5]}
    n = 200
    for kind, values in scores.items():
        for i, score in enumerate(values):
            # the first two answers of each kind rate a page the journey held; the rest, none
            rated = _RATED_PAGE if i < 2 else {}
            rows.append(
                _touchpoint(
                    n, type="survey_response", survey_kind=kind, survey_score=score, **rated
                )
            )
            n += 1
    # an answer never stitched to a customer (no consent): a touchpoint, rating nothing
    rows.append(
        _touchpoint(n, type="survey_response", survey_kind="nps", survey_score=0, customer_id="")
    )
    _insert(store, "touchpoints", rows)
    # A call learns its outcome: a second version of the same touchpoint counts once.
    call = _touchpoint(
        300, type="call", name="support", channel="phone", source="call_webhook", version=1
    )
    _insert(store, "touchpoints", [call])
    _insert(store, "touchpoints", [{**call, "version": 2}])
    # Frictions on touchpoints, one of them retracted later.
    frictions = [
        {
            "friction_id": f"f-{i}",
            "version": 1,
            "customer_id": "c-1",
            "event_id": str(uuid.UUID(int=i)),
            "ts": _touchpoint(i)["ts"],
            "reason": "bounce",
            "severity": "low",
            "retracted": False,
            "channel": "web",
            "type": "page_view",
            "name": f"/p{i % 2}",
            "stage": "awareness",
            "is_bot": i % 11 == 0,
        }
        for i in range(1, 6)
    ]
    _insert(store, "frictions", frictions)
    _insert(store, "frictions", [{**frictions[0], "version": 2, "retracted": True}])

    rollup, direct = _read(store, _ROLLUP), _read(store, _DIRECT)
    assert rollup == direct
    totals = _read(
        store,
        "SELECT sumMerge(events) + uniqMerge(versioned_events) AS events, "
        "sumMerge(conversions) AS conversions, "
        "sumMerge(frictions) AS frictions, sumMerge(nps_promoters) AS promoters "
        "FROM touchpoint_daily",
    )
    # 60 page views, 8 purchases (7 of them conversions), 14 survey answers, 1 call in 2 versions
    assert totals == [{"events": 83, "conversions": 7, "frictions": 4, "promoters": 3}]
    answers = _read(
        store,
        "SELECT type, touchpoint_name AS name, stage, sumMerge(nps_n) AS nps, "
        "sumMerge(csat_n) AS csat, sumMerge(ces_n) AS ces FROM touchpoint_daily "
        "GROUP BY type, name, stage HAVING nps + csat + ces > 0 ORDER BY type",
    )
    # two answers of each kind on the page they rate, the other seven where the scorecard
    # looks for them at query time, and the unstitched answer nowhere
    assert answers == [
        {"type": "(unrated)", "name": "", "stage": "", "nps": 4, "csat": 2, "ces": 1},
        {
            "type": "page_view",
            "name": "/p1",
            "stage": "consideration",
            "nps": 2,
            "csat": 2,
            "ces": 2,
        },
    ]
