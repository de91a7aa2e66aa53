"""The ClickHouse store: connection, migrations, idempotent writes and read-only queries."""

from tracker.store._clickhouse import ClickHouseStore, QueryLimits, QueryResult
from tracker.store._migrations import Migration, load_migrations

__all__ = ["ClickHouseStore", "Migration", "QueryLimits", "QueryResult", "load_migrations"]
