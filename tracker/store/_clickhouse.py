from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from tracker.errors import ConfigError, QueryRefused, StoreError
from tracker.store._migrations import load_migrations, on_cluster

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """What one console query may spend (TRACKER_QUERY_MAX_SECONDS, _MEMORY_BYTES, _ROWS)."""

    max_seconds: float = 30.0
    max_memory_bytes: int = 1_073_741_824
    max_rows: int = 100_000

    def settings(self) -> dict[str, Any]:
        # readonly comes last: once it is set, the session may change no setting at all.
        return {
            "max_execution_time": self.max_seconds,
            "max_memory_usage": self.max_memory_bytes,
            "max_result_rows": self.max_rows,
            "result_overflow_mode": "throw",
            "readonly": 1,
        }

    def passed(self, code: int | None) -> str | None:
        """The limit a ClickHouse error code says the query passed, in words; None for others."""
        if code == _TIMEOUT_EXCEEDED:
            return (
                f"the query ran longer than the console allows ({self.max_seconds:g} s, "
                "TRACKER_QUERY_MAX_SECONDS); narrow it, e.g. with a WHERE on ts"
            )
        if code == _MEMORY_LIMIT_EXCEEDED:
            return (
                f"the query needed more memory than the console allows "
                f"({self.max_memory_bytes} bytes, TRACKER_QUERY_MAX_MEMORY_BYTES)"
            )
        if code == _TOO_MANY_ROWS:
            return (
                f"the result has more rows than the console returns ({self.max_rows}, "
                "TRACKER_QUERY_MAX_ROWS); add a LIMIT or aggregate"
            )
        return None


# ClickHouse error codes of the limits above.
_TIMEOUT_EXCEEDED = 159
_MEMORY_LIMIT_EXCEEDED = 241
_TOO_MANY_ROWS = 396

# Errors of the engine's own storage and resources, not of the statement: the same statement
# succeeds once the disk, memory or files are back, so a write waits them out.
_ENGINE_FAULTS = frozenset(
    {
        74,  # CANNOT_READ_FROM_FILE_DESCRIPTOR
        75,  # CANNOT_WRITE_TO_FILE_DESCRIPTOR
        76,  # CANNOT_OPEN_FILE
        77,  # CANNOT_CLOSE_FILE
        159,  # TIMEOUT_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        236,  # ABORTED
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        243,  # NOT_ENOUGH_SPACE
        252,  # TOO_MANY_PARTS
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)
# A C++ exception (POCO_EXCEPTION, STD_EXCEPTION) is the engine's when the file system refused it.
_WRAPPED = frozenset({1000, 1001})
_FILE_SYSTEM_REFUSALS = (
    "filesystem error",
    "Operation not permitted",
    "Permission denied",
    "No space left on device",
    "Read-only file system",
    "Disk quota exceeded",
)
_CODE = re.compile(r"Code: (\d+)\.")
# TOO_MANY_PARTS also says that one batch spans too many partitions: that is the rows' doing, so
# the sink writes them one by one (as any refusal of rows), never retries the batch as it is.
_ROWS_NOT_ENGINE = ("Too many partitions for single INSERT block",)


def engine_fault(exc: BaseException) -> bool:
    """Whether ClickHouse failed for a reason of its own (storage, memory, files), which passes,
    rather than because of the statement or its rows."""
    code = getattr(exc, "code", None)
    if not isinstance(code, int):
        found = _CODE.search(str(exc))
        code = int(found.group(1)) if found else None
    message = str(exc)
    if code in _ENGINE_FAULTS:
        return not any(rows in message for rows in _ROWS_NOT_ENGINE)
    return code in _WRAPPED and any(refusal in message for refusal in _FILE_SYSTEM_REFUSALS)


class ClickHouseStore:
    """ClickHouse through clickhouse-connect: embedded chDB for ``chdb://``, a server for ``http(s)://``.

    Calls are blocking in the driver, so they run on one thread of their own; the async methods
    never block the event loop.
    """

    def __init__(self, url: str, database: str, cluster: str = "") -> None:
        self.url = url
        self.database = database
        self.cluster = cluster  # TRACKER_CLICKHOUSE_CLUSTER: migrations run ON CLUSTER, replicated
        self._client: Any = None
        self._readers: dict[QueryLimits, Any] = {}  # read-only clients, one per set of limits
        self._database_ready = False
        self._write_faults: dict[str, str] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")

    @property
    def embedded(self) -> bool:
        return self.url.startswith("chdb:")

    # -- synchronous API: runs on the store's thread -------------------------------------------

    def _dsn(self) -> str:
        if self.embedded:
            path = urlparse(self.url).path
            if not path.startswith("/"):
                raise ConfigError(
                    f"TRACKER_CLICKHOUSE_URL must be chdb:///absolute/path, got {self.url!r}"
                )
            return f"chdb://{path}"
        if self.url.startswith(("http://", "https://")):
            return self.url
        raise ConfigError(
            f"TRACKER_CLICKHOUSE_URL must start with chdb://, http:// or https://, got {self.url!r}"
        )

    def _open(self, settings: dict[str, Any] | None = None) -> Any:
        """A new client on this store's database, which is created first if need be."""
        dsn = self._dsn()
        if not self._database_ready:
            bootstrap = clickhouse_connect.get_client(dsn=dsn)
            try:
                bootstrap.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            finally:
                bootstrap.close()
            self._database_ready = True
        return clickhouse_connect.get_client(dsn=dsn, database=self.database, settings=settings)

    def _connect(self) -> Any:
        if self._client is None:
            self._client = self._open()
        return self._client

    def _forget_client(self) -> None:
        """Drop the shared client after a failed statement. chDB keeps what a failed statement
        had written so far in its connection handle and puts it in front of the next answer on
        that handle, so a handle that saw a failure is never used again. The new handle is
        opened before the old one closes: the engine stops when its last handle closes."""
        if not self.embedded or self._client is None:
            return
        spent, self._client = self._client, None
        try:
            self._client = self._open()
        except Exception as exc:  # the next call opens one, or says why it cannot
            log.warning("could not reopen ClickHouse", extra={"error": repr(exc)})
        finally:
            spent.close()

    def _call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._connect(), fn)(*args, **kwargs)
        except ConfigError:
            raise
        except OperationalError as exc:
            self._forget_client()
            raise StoreError(f"ClickHouse is unreachable: {exc}", retriable=True) from exc
        except Exception as exc:
            self._forget_client()
            raise StoreError(f"ClickHouse {fn} failed: {exc}", retriable=engine_fault(exc)) from exc

    def _read_only(self, fn: str, limits: QueryLimits | None, *args: Any, **kwargs: Any) -> Any:
        """One read-only call, within ``limits``. ClickHouse itself refuses any write and any
        change of setting (readonly=1), so nothing of one call reaches the next."""
        try:
            return self._on_reader(limits or QueryLimits(), fn, *args, **kwargs)
        except ConfigError:
            raise
        except OperationalError as exc:
            raise StoreError(f"ClickHouse is unreachable: {exc}", retriable=True) from exc
        except DatabaseError as exc:
            if limits is not None and (passed := limits.passed(exc.code)):
                raise QueryRefused(passed) from exc
            raise StoreError(f"ClickHouse {fn} failed: {exc}", retriable=False) from exc
        except Exception as exc:
            raise StoreError(f"ClickHouse {fn} failed: {exc}", retriable=False) from exc

    def _on_reader(self, limits: QueryLimits, fn: str, *args: Any, **kwargs: Any) -> Any:
        """``fn`` on the read-only client kept for ``limits``: opening one costs more than a
        small query. A client that saw a failure is closed, since chDB may put what the failed
        call left in front of the next answer on that client."""
        client = self._readers.get(limits)
        if client is None:
            client = self._readers[limits] = self._open(limits.settings())
        try:
            return getattr(client, fn)(*args, **kwargs)
        except BaseException:
            del self._readers[limits]
            client.close()
            raise

    def migrate_sync(self) -> list[int]:
        """Apply the migrations not yet applied; return their numbers. Safe to run again."""
        db = f"`{self.database}`"
        on = f" ON CLUSTER `{self.cluster}`" if self.cluster else ""
        self._call("command", f"CREATE DATABASE IF NOT EXISTS {db}{on}")
        ledger = (
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations\n"
            "(version UInt32, name String, applied_at DateTime64(3, 'UTC'))\n"
            "-- sharding key: version\n"
            "ENGINE = ReplacingMergeTree\nORDER BY version"
        )
        for statement in on_cluster(ledger, self.database, self.cluster) if on else [ledger]:
            self._call("command", statement)
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
            for statement in migration.statements(self.database, self.cluster):
                self._call("command", statement)
            self._call(
                "insert",
                f"{self.database}.schema_migrations",
                [[migration.version, migration.name, datetime.now(UTC)]],
                column_names=["version", "name", "applied_at"],
                # on a cluster, the record is on its shard before the next reader looks
                settings={"insert_distributed_sync": 1} if self.cluster else None,
            )
            applied.append(migration.version)
            log.info(
                "applied migration",
                extra={"version": migration.version, "migration": migration.name},
            )
        return applied

    def query_sync(
        self,
        sql: str,
        parameters: dict[str, Any] | None = None,
        readonly: bool = False,
        limits: QueryLimits | None = None,
    ) -> QueryResult:
        """Rows of ``sql``. Read-only on a client of its own when ``readonly`` or ``limits``;
        with ``limits``, raises ``QueryRefused`` when the query passes one."""
        if limits is not None:
            result = self._read_only("query", limits, sql, parameters=parameters)
        elif readonly:
            result = self._read_only("query", None, sql, parameters=parameters)
        else:
            result = self._call("query", sql, parameters=parameters)
        return QueryResult(list(result.column_names), [tuple(r) for r in result.result_rows])

    def raw_query_sync(self, sql: str, fmt: str, limits: QueryLimits) -> bytes:
        """A console query: read-only, within ``limits``, on a client of its own.

        Raises ``QueryRefused`` when the query passes one of the limits."""
        data: bytes = self._read_only("raw_query", limits, sql, fmt=fmt)
        return data

    def insert_sync(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> None:
        try:
            self._call("insert", f"{self.database}.{table}", rows, column_names=list(columns))
        except StoreError as exc:
            if exc.retriable:
                self._write_faults[table] = str(exc)[:300]
            raise
        self._write_faults.pop(table, None)

    def write_faults(self) -> dict[str, str]:
        """The tables whose last insert failed for a reason that passes, with that reason:
        reads may still answer while writes wait (a full or read-only disk)."""
        return dict(self._write_faults)

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

    async def raw_query(self, sql: str, fmt: str, limits: QueryLimits) -> bytes:
        result: bytes = await self._run(self.raw_query_sync, sql, fmt, limits)
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
        for reader in self._readers.values():
            reader.close()
        self._readers = {}
        if self._client is not None:
            self._client.close()
        self._client = None
