"""The ClickHouse cluster variant: the same migrations, rendered ON CLUSTER with replicated,
distributed tables when TRACKER_CLICKHOUSE_CLUSTER names a cluster; untouched without it."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

from tests.chdb_probe import probe
from tracker.errors import ConfigError
from tracker.settings import Settings
from tracker.store import ClickHouseStore, load_migrations
from tracker.store._migrations import on_cluster

CLUSTER = "tracker_cluster"


def _rendered() -> list[str]:
    return [s for m in load_migrations() for s in m.statements("tracker", CLUSTER)]


def _tables(sql: str) -> list[str]:
    return re.findall(r"^CREATE TABLE IF NOT EXISTS \{db\}\.(\w+)", sql, re.MULTILINE)


def test_without_a_cluster_the_statements_are_the_files_as_written() -> None:
    for migration in load_migrations():
        single = migration.statements("tracker")
        assert single == migration.statements("tracker", "")
        assert not any("ON CLUSTER" in s or "Replicated" in s for s in single)
        assert not any("Distributed" in s or "_local" in s for s in single)
    first = load_migrations()[0].statements("tracker")
    assert "CREATE TABLE IF NOT EXISTS `tracker`.touchpoints\n(" in first[0]
    assert "ENGINE = ReplacingMergeTree(version)\nPARTITION BY toYYYYMM(ts)" in first[0]


def test_every_table_becomes_replicated_shards_behind_a_distributed_table_of_its_own_name() -> None:
    statements = _rendered()
    tables = [t for m in load_migrations() for t in _tables(m.sql)]
    assert "touchpoints" in tables and "identities" in tables
    for table in tables:
        local = next(s for s in statements if f"`tracker`.{table}_local ON CLUSTER" in s)
        assert local.startswith(
            f"CREATE TABLE IF NOT EXISTS `tracker`.{table}_local ON CLUSTER `{CLUSTER}`"
        )
        assert re.search(
            r"ENGINE = Replicated\w*MergeTree\('/clickhouse/tables/\{shard\}/\{database\}/\{table\}', '\{replica\}'",
            local,
        ), local
        distributed = next(
            s
            for s in statements
            if s.startswith(f"CREATE TABLE IF NOT EXISTS `tracker`.{table} ON")
        )
        assert f"AS `tracker`.{table}_local" in distributed
        assert (
            f"ENGINE = Distributed('{CLUSTER}', 'tracker', '{table}_local', cityHash64("
            in distributed
        )
    # backfills run once, through the distributed tables; everything else on every node
    assert all("ON CLUSTER" in s for s in statements if not s.startswith("INSERT INTO"))


def test_replacing_keeps_its_version_column_and_each_table_shards_by_its_dedup_key() -> None:
    statements = _rendered()
    touchpoints = next(s for s in statements if "`tracker`.touchpoints_local ON CLUSTER" in s)
    assert "'{replica}', version)" in touchpoints
    assert "ORDER BY (toDate(ts), event_id)" in touchpoints
    keys = dict(re.findall(r"'(\w+)_local', (cityHash64\(\w+\))\)", "\n".join(statements)))
    # versions of one key must meet on one shard for ReplacingMergeTree to replace them
    assert keys == {
        "touchpoints": "cityHash64(event_id)",
        "dead_letters": "cityHash64(dead_letter_id)",
        "links": "cityHash64(slug)",
        "calls": "cityHash64(call_uuid)",
        "tickets": "cityHash64(ticket_uuid)",
        "identities": "cityHash64(identifier)",
        "identity_conflicts": "cityHash64(conflict_id)",
        "sessions": "cityHash64(session_id)",
        "journeys": "cityHash64(customer_id)",
        "frictions": "cityHash64(friction_id)",
        "touchpoints_by_customer": "cityHash64(event_id)",  # as touchpoints: its MV is per shard
        "forget_audit": "cityHash64(forget_id)",  # one row per forget, never replaced
        # hints filled per shard by its views; a duplicate on two shards is harmless
        "customer_refs": "cityHash64(customer_id)",
        # what a journey shows, per owner, filled per shard by its views (0015)
        "journey_lookup": "cityHash64(owner)",
    }


def test_column_changes_reach_the_shards_and_the_distributed_table_and_views_join_globally() -> (
    None
):
    statements = _rendered()
    seq = [s for s in statements if "ADD COLUMN IF NOT EXISTS seq" in s]
    assert [s.split("\n")[0] for s in seq] == [
        f"ALTER TABLE `tracker`.touchpoints_local ON CLUSTER `{CLUSTER}`",
        f"ALTER TABLE `tracker`.touchpoints ON CLUSTER `{CLUSTER}`",
    ]
    view = next(s for s in statements if "CREATE VIEW" in s)
    assert view.startswith(
        f"CREATE VIEW IF NOT EXISTS `tracker`.customer_touchpoints ON CLUSTER `{CLUSTER}` AS"
    )
    assert "GLOBAL LEFT JOIN" in view and "GLOBAL GLOBAL" not in view


def test_data_skipping_indexes_are_built_on_the_shards_tables_only() -> None:
    statements = [s for s in _rendered() if "customer_bloom" in s and "sessions" in s]
    assert [s.split("\n")[0] for s in statements] == [
        f"ALTER TABLE `tracker`.sessions_local ON CLUSTER `{CLUSTER}`",
        f"ALTER TABLE `tracker`.sessions_local ON CLUSTER `{CLUSTER}` MATERIALIZE INDEX customer_bloom",
    ]


def test_materialized_views_roll_up_each_shard_and_backfills_run_once_through_the_cluster() -> None:
    statements = _rendered()
    views = [s for s in statements if s.startswith("CREATE MATERIALIZED VIEW")]
    assert {v.split(" ON CLUSTER")[0].rsplit(".", 1)[1] for v in views} == {
        "touchpoints_by_customer_mv",
        "touchpoint_daily_touchpoints_mv",
        "touchpoint_daily_frictions_mv",
        "touchpoint_daily_surveys_mv",
        "customer_refs_identities_mv",
        "customer_refs_touchpoints_mv",
        "customer_refs_sessions_mv",
        "customer_refs_frictions_mv",
        "journey_lookup_identities_mv",
        "journey_lookup_touchpoints_mv",
        "journey_lookup_sessions_mv",
        "journey_lookup_frictions_mv",
        "journey_lookup_journeys_mv",
    }
    daily = next(v for v in views if "touchpoint_daily_touchpoints_mv" in v)
    assert f"ON CLUSTER `{CLUSTER}` TO `tracker`.touchpoint_daily_local AS" in daily
    assert "FROM `tracker`.touchpoints_local\n" in daily
    backfills = [s for s in statements if s.startswith("INSERT INTO")]
    assert backfills and all("_local" not in s and "ON CLUSTER" not in s for s in backfills)


def test_clickhouse_parses_every_statement_of_the_cluster_variant() -> None:
    statements = _rendered()
    errors = [a.error for a in probe(statements, parse_only=True)]
    assert errors == [None] * len(statements)


def test_a_statement_the_cluster_cannot_take_is_refused_not_half_rendered() -> None:
    with pytest.raises(ConfigError, match="sharding key"):
        on_cluster(
            "CREATE TABLE IF NOT EXISTS `tracker`.t\n(a UInt8)\nENGINE = MergeTree\nORDER BY a",
            "tracker",
            CLUSTER,
        )
    with pytest.raises(ConfigError, match="no cluster rendering"):
        on_cluster("ALTER TABLE `tracker`.t DELETE WHERE a = 1", "tracker", CLUSTER)
    with pytest.raises(ConfigError, match="no cluster rendering"):
        on_cluster("INSERT INTO `tracker`.t VALUES (1)", "tracker", CLUSTER)


def test_the_cluster_setting_is_read_and_checked() -> None:
    assert Settings.from_env({}).clickhouse_cluster == ""
    assert (
        Settings.from_env({"TRACKER_CLICKHOUSE_CLUSTER": "analytics"}).clickhouse_cluster
        == "analytics"
    )
    with pytest.raises(ConfigError, match="TRACKER_CLICKHOUSE_CLUSTER"):
        Settings.from_env({"TRACKER_CLICKHOUSE_CLUSTER": "a b"})


def test_tracker_migrate_on_a_cluster_keeps_its_ledger_on_the_cluster_too() -> None:
    store = ClickHouseStore("http://clickhouse:8123", "tracker", CLUSTER)
    sent: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def call(fn: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((fn, args, kwargs))
        return SimpleNamespace(result_rows=[])  # nothing applied yet

    store._call = call  # type: ignore[method-assign]
    try:
        applied = store.migrate_sync()
    finally:
        store.close()
    assert applied == [m.version for m in load_migrations()]
    commands = [args[0] for fn, args, _ in sent if fn == "command"]
    assert commands[0] == f"CREATE DATABASE IF NOT EXISTS `tracker` ON CLUSTER `{CLUSTER}`"
    assert commands[1].startswith(
        f"CREATE TABLE IF NOT EXISTS `tracker`.schema_migrations_local ON CLUSTER `{CLUSTER}`"
    )
    assert "ENGINE = Distributed" in commands[2] and "cityHash64" not in commands[2]
    assert all("ON CLUSTER" in c for c in commands if not c.startswith("INSERT INTO"))
    inserts = [kwargs for fn, _, kwargs in sent if fn == "insert"]
    assert len(inserts) == len(applied)
    assert all(k["settings"] == {"insert_distributed_sync": 1} for k in inserts)


def test_a_dropped_view_goes_from_every_server_and_a_dropped_table_from_every_shard() -> None:
    assert on_cluster("DROP VIEW IF EXISTS `tracker`.v_mv", "tracker", CLUSTER) == [
        f"DROP VIEW IF EXISTS `tracker`.v_mv ON CLUSTER `{CLUSTER}`"
    ]
    assert on_cluster("DROP TABLE IF EXISTS `tracker`.t", "tracker", CLUSTER) == [
        f"DROP TABLE IF EXISTS `tracker`.t ON CLUSTER `{CLUSTER}`",
        f"DROP TABLE IF EXISTS `tracker`.t_local ON CLUSTER `{CLUSTER}`",
    ]
    dropped = [s for s in _rendered() if s.startswith("DROP")]
    assert f"DROP TABLE IF EXISTS `tracker`.customer_refs_local ON CLUSTER `{CLUSTER}`" in dropped
