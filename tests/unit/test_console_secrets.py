"""The console reads the tracker tables, not what ClickHouse keeps about access control, its
configuration or other sessions' queries: found by the fuzz harness (bench/fuzz.py), whose
`system.users`, `SHOW GRANTS` and `SHOW CREATE USER` were answered 200 under `readonly`."""

from __future__ import annotations

import pytest

from tracker.errors import QueryRefused
from tracker.readonly_sql import check_query


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM system.users",
        "SELECT name, auth_type FROM system.users",
        'SELECT * FROM "system"."grants"',
        "SELECT * FROM `system`.`named_collections`",
        "SELECT * FROM system . role_grants",
        "SELECT query FROM system.query_log",
        "SELECT query FROM system.processes",
        "SELECT * FROM system.server_settings",
        "WITH 1 AS a SELECT * FROM system.quotas",
        "SELECT 1 UNION ALL SELECT count() FROM system.settings_profiles",
        "SELECT * FROM touchpoints WHERE 0 IN (SELECT 1 FROM system.row_policies)",
        "SELECT * FROM merge('system', '^users$')",
        "SHOW GRANTS",
        "SHOW ACCESS",
        "SHOW USERS",
        "SHOW CREATE USER default",
        "SHOW CREATE ROLE admin",
        "SHOW CREATE QUOTA default",
        "SHOW PROCESSLIST",
        "SHOW ROW POLICIES",
        "SHOW CURRENT ROLES",
    ],
)
def test_access_control_and_other_sessions_are_refused(sql: str) -> None:
    with pytest.raises(QueryRefused) as refused:
        check_query(sql)
    assert "console" in str(refused.value) or "tracker tables" in str(refused.value)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 FROM system.one",
        "SELECT number FROM system.numbers LIMIT 3",
        "SELECT name, type FROM system.columns WHERE table = 'touchpoints'",
        "SELECT name FROM system.tables",
        "SELECT name, value FROM system.settings",
        "SHOW TABLES",
        "SHOW CREATE TABLE touchpoints",
        "SHOW DATABASES",
        "SELECT 'system.users' AS text",
        "SELECT count() FROM touchpoints WHERE page_url LIKE '%system.users%'",
    ],
)
def test_the_data_and_its_shape_stay_readable(sql: str) -> None:
    assert check_query(sql).statement


def test_sql_longer_than_clickhouse_reads_is_refused_before_it_is_tokenized() -> None:
    with pytest.raises(QueryRefused, match="at most 262144"):
        check_query("SELECT " + "1+" * 140_000 + "1")
    assert check_query("SELECT " + "1+" * 1000 + "1").statement  # a long but readable one
