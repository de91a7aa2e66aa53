"""Each table's one column list (tracker/store/tables.py) against the migrations as ClickHouse
runs them: a list naming a column the table lacks would fail every insert of that table, and a
list leaving one out would store its default instead of what the worker knows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracker.store import ClickHouseStore
from tracker.store.tables import TABLES, Table


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseStore]:
    path: Path = tmp_path_factory.mktemp("chdb-tables")
    store = ClickHouseStore(f"chdb://{path}", f"test_{uuid.uuid4().hex[:12]}")
    store.run_sync(store.migrate_sync)
    yield store
    store.close()


@pytest.mark.parametrize("table", TABLES.values(), ids=list(TABLES))
def test_the_column_list_is_the_migrated_table(migrated: ClickHouseStore, table: Table) -> None:
    rows = migrated.run_sync(
        migrated.query_sync,
        "SELECT name, default_kind, default_expression FROM system.columns "
        "WHERE database = {db:String} AND table = {table:String} ORDER BY position",
        {"db": migrated.database, "table": table.name},
    ).rows
    assert rows, f"no table {table.name} after the migrations"
    # What ClickHouse fills in itself: the time of the insert, and computed columns.
    by_engine = {
        name
        for name, kind, expression in rows
        if kind in ("MATERIALIZED", "ALIAS") or expression.startswith("now64(")
    }
    assert sorted(table.columns) == sorted(name for name, _, _ in rows if name not in by_engine)
    assert {table.key, table.time} <= set(table.columns)
    assert table.version is None or table.version in table.columns
