from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.exceptions import OperationalError

from tracker.errors import ConfigError, StoreError
from tracker.store._migrations import load_migrations

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


class ClickHouseStore:
    """ClickHouse through clickhouse-connect: embedded chDB for ``chdb://``, a server for ``http(s)://``.

    Calls are blocking in the driver, so they run on one thread of their own; the async methods
    never block the event loop.
    """

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.database = database
        self._client: Any = None
        self._reader: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")

    @property
    def embedded(self) -> bool:
        return self.url.startswith("chdb:")

    # -- synchronous API: runs on the store's thread -------------------------------------------

    def _connect(self) -> Any:
        """A client whose default database is this store's, created first if need be."""
        if self._client is not None:
            return self._client
        if self.embedded:
            path = urlparse(self.url).path
            if not path.startswith("/"):
                raise ConfigError(
                    f"TRACKER_CLICKHOUSE_URL must be chdb:///absolute/path, got {self.url!r}"
                )
            dsn = f"chdb://{path}"
        elif self.url.startswith(("http://", "https://")):
            dsn = self.url
        else:
            raise ConfigError(
                f"TRACKER_CLICKHOUSE_URL must start with chdb://, http:// or https://, got {self.url!r}"
            )
        bootstrap = clickhouse_connect.get_client(dsn=dsn)
        try:
            bootstrap.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        finally:
            bootstrap.close()
        self._client = clickhouse_connect.get_client(dsn=dsn, database=self.database)
        # Settings stick to a chDB handle, so read-only queries get a handle of their own.
        self._reader = clickhouse_connect.get_client(
            dsn=dsn, database=self.database, settings={"readonly": 1}
        )
        return self._client

    def _call(self, fn: str, *args: Any, readonly: bool = False, **kwargs: Any) -> Any:
        try:
            client = self._connect()
            return getattr(self._reader if readonly else client, fn)(*args, **kwargs)
        except ConfigError:
            raise
        except OperationalError as exc:
            raise StoreError(f"ClickHouse is unreachable: {exc}", retriable=True) from exc
        except Exception as exc:
            raise StoreError(f"ClickHouse {fn} failed: {exc}", retriable=False) from exc

    def migrate_sync(self) -> list[int]:
        """Apply the migrations not yet applied; return their numbers. Safe to run again."""
        db = f"`{self.database}`"
        self._call("command", f"CREATE DATABASE IF NOT EXISTS {db}")
        self._call(
            "command",
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
            "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
            "ENGINE = ReplacingMergeTree ORDER BY version",
        )
        done = {
            row[0]
            for row in self._call(
                "query", f"SELECT version FROM {db}.schema_migrations"
            ).result_rows
        }
        applied = []
        for migration in load_migrations():
            if migration.version in done:
                continue
            for statement in migration.statements(self.database):
                self._call("command", statement)
            self._call(
                "insert",
                f"{self.database}.schema_migrations",
                [[migration.version, migration.name, datetime.now(UTC)]],
                column_names=["version", "name", "applied_at"],
            )
            applied.append(migration.version)
            log.info(
                "applied migration",
                extra={"version": migration.version, "migration": migration.name},
            )
        return applied

    def query_sync(
        self, sql: str, parameters: dict[str, Any] | None = None, readonly: bool = False
    ) -> QueryResult:
        result = self._call("query", sql, parameters=parameters, readonly=readonly)
        return QueryResult(list(result.column_names), [tuple(r) for r in result.result_rows])

    def raw_query_sync(self, sql: str, fmt: str, readonly: bool = True) -> bytes:
        data: bytes = self._call("raw_query", sql, fmt=fmt, readonly=readonly)
        return data

    def insert_sync(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> None:
        self._call("insert", f"{self.database}.{table}", rows, column_names=list(columns))

    def command_sync(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return self._call("command", sql, parameters=parameters)

    # -- async API --------------------------------------------------------------------------

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def migrate(self) -> list[int]:
        result: list[int] = await self._run(self.migrate_sync)
        return result

    async def query(
        self, sql: str, parameters: dict[str, Any] | None = None, readonly: bool = False
    ) -> QueryResult:
        result: QueryResult = await self._run(self.query_sync, sql, parameters, readonly)
        return result

    async def raw_query(self, sql: str, fmt: str, readonly: bool = True) -> bytes:
        result: bytes = await self._run(self.raw_query_sync, sql, fmt, readonly)
        return result

    async def insert(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> None:
        await self._run(self.insert_sync, table, rows, columns)

    async def command(self, sql: str) -> Any:
        return await self._run(self.command_sync, sql)

    async def command_with(self, sql: str, parameters: dict[str, Any]) -> Any:
        """A statement with bound parameters (``{name:Type}`` in the SQL)."""
        return await self._run(self.command_sync, sql, parameters)

    async def ping(self) -> bool:
        try:
            await self.query("SELECT 1")
        except StoreError:
            return False
        return True

    def run_sync(self, fn: Any, *args: Any) -> Any:
        """Run a synchronous store method on the store's thread, from code with no event loop."""
        return self._executor.submit(fn, *args).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for client in (self._client, self._reader):
            if client is not None:
                client.close()
        self._client = self._reader = None
