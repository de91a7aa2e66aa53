"""Sinks: batched, idempotent writes. Agents depend on :class:`Sink`, not on ClickHouse."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from tracker.errors import StoreError
from tracker.metrics import SINK_FAILURES, SINK_FLUSH_SECONDS, SINK_ROWS
from tracker.store import ClickHouseStore
from tracker.store.tables import Table

__all__ = ["ClickHouseSink", "FlushResult", "Key", "MemorySink", "Sink"]

log = logging.getLogger(__name__)

# Replays can move an event's corrected time a little; look this far either side for its key.
_KEY_WINDOW = timedelta(days=1)


# After this many refusals of a whole batch, rows are written one at a time to find the bad ones.
_REFUSALS_BEFORE_SPLIT = 3


Key = tuple[str, int]
"""An idempotency key and its version."""


@dataclass(frozen=True, slots=True)
class FlushResult:
    written: int
    duplicates: int
    refused: dict[Key, str] = field(default_factory=dict)
    """Rows ClickHouse refused on their own, with its reason: the caller dead-letters them."""
    forwarded: int = 0
    """Rows handed on to a later step (which writes them, and counts them then)."""


class Sink(Protocol):
    """Records keyed by an idempotency key and a version. ``flush`` writes each pair at most
    once, ever. A record is a typed record (:mod:`tracker.records`, a
    :class:`~tracker.deadletter.DeadLetter`) or a mapping by column name; only the ClickHouse
    sink turns it into a row, by column name (:mod:`tracker.store.tables`).

    A higher version of a key is an update: it is written, and the table keeps the highest.
    """

    def add(self, key: str, ts: datetime, record: Any, version: int = 0) -> None: ...

    async def flush(self) -> FlushResult: ...

    def discard(self) -> None:
        """Drop the rows added since the last flush (a failed attempt's, to be made again)."""


class ClickHouseSink:
    """Buffers rows for one table and writes them in one insert, skipping (key, version) pairs
    already stored.

    ``flush`` retries until ClickHouse takes the batch: an outage delays the pipeline, and because
    offsets are committed only after a flush, it never loses or duplicates rows. A batch that
    ClickHouse keeps refusing is written row by row, and the rows it refuses on their own are
    handed back in ``FlushResult.refused`` instead of blocking everything behind them.
    """

    def __init__(
        self, store: ClickHouseStore, table: Table, max_backoff_seconds: float = 10.0
    ) -> None:
        self._store = store
        self._spec = table
        self._table = table.name
        self._columns = list(table.columns)
        self._key_column = table.key
        self._time_column = table.time
        self._version_sql = f"toUInt64({table.version})" if table.version else "toUInt64(0)"
        self._max_backoff = max_backoff_seconds
        # Off for tables where a second copy of a (key, version) is harmless, because FINAL and
        # argMax read it as one (derived state, versioned by position): it saves a query a batch.
        self._look_before_writing = table.look_before_writing
        self._rows: dict[Key, Any] = {}
        self._times: list[datetime] = []

    @property
    def table(self) -> Table:
        return self._spec

    def add(self, key: str, ts: datetime, record: Any, version: int = 0) -> None:
        if (key, version) not in self._rows:
            self._rows[(key, version)] = record
            self._times.append(ts)

    def discard(self) -> None:
        self._rows = {}
        self._times = []

    async def flush(self) -> FlushResult:
        if not self._rows:
            return FlushResult(0, 0)
        backoff, refusals = 0.2, 0
        while True:
            try:
                if refusals >= _REFUSALS_BEFORE_SPLIT:
                    result = await self._write_rows_apart()
                else:
                    result = await self._write_once()
            except StoreError as exc:
                refusals += 0 if exc.retriable else 1
                SINK_FAILURES.labels(self._table).inc()
                log.warning(
                    "clickhouse write failed; retrying",
                    extra={
                        "table": self._table,
                        "rows": len(self._rows),
                        "error": str(exc)[:500],
                        "retry_in": backoff,
                    },
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            self._rows = {}
            self._times = []
            return result

    async def _write_once(self) -> FlushResult:
        started = time.perf_counter()
        keys = list(self._rows)
        existing: set[Key] = set()
        if self._look_before_writing:
            existing = await self._existing_keys(sorted({key for key, _ in keys}))
        row = self._spec.row
        fresh = [row(record) for key, record in self._rows.items() if key not in existing]
        if fresh:
            await self._store.insert(self._table, fresh, self._columns)
        SINK_FLUSH_SECONDS.labels(self._table).observe(time.perf_counter() - started)
        SINK_ROWS.labels(self._table).inc(len(fresh))
        return FlushResult(written=len(fresh), duplicates=len(keys) - len(fresh))

    async def _write_rows_apart(self) -> FlushResult:
        """Slow path for a refused batch: check and write each row alone, so one bad row (even a
        malformed key) cannot block the rest. An outage midway raises, and the retry skips what
        landed."""
        written, duplicates, refused = 0, 0, {}
        for key, record in self._rows.items():
            try:
                if key in await self._existing_keys([key[0]]):
                    duplicates += 1
                    continue
                await self._store.insert(self._table, [self._spec.row(record)], self._columns)
            except StoreError as exc:
                if exc.retriable:
                    raise
                refused[key] = str(exc)[:1000]
                continue
            written += 1
        SINK_ROWS.labels(self._table).inc(written)
        log.error(
            "clickhouse refused rows; they go to dead letters",
            extra={"table": self._table, "refused": len(refused), "written": written},
        )
        return FlushResult(written, duplicates, refused)

    async def _existing_keys(self, keys: list[str]) -> set[Key]:
        db = self._store.database
        result = await self._store.query(
            f"SELECT toString({self._key_column}), {self._version_sql} FROM `{db}`.{self._table} "
            f"WHERE {self._time_column} BETWEEN {{start:DateTime64(3)}} AND {{end:DateTime64(3)}} "
            f"AND {self._key_column} IN {{keys:Array(String)}}",
            parameters={
                "start": min(self._times) - _KEY_WINDOW,
                "end": max(self._times) + _KEY_WINDOW,
                "keys": keys,
            },
        )
        return {(row[0], int(row[1])) for row in result.rows}


class MemorySink:
    """An in-memory sink for unit tests: same contract, a dict for a table.

    ``added`` records every ``add`` as it came, copies included, so a test can see what the
    caller handed over rather than what this sink's own de-duplication kept. ``rows`` holds the
    records as added (read one as columns with ``Table.named``).
    """

    def __init__(self) -> None:
        self.rows: dict[Key, Any] = {}
        self.added: list[tuple[Key, datetime, Any]] = []
        self._pending: dict[Key, Any] = {}

    def add(self, key: str, ts: datetime, record: Any, version: int = 0) -> None:
        self.added.append(((key, version), ts, record))
        self._pending.setdefault((key, version), record)

    def discard(self) -> None:
        self._pending = {}

    async def flush(self) -> FlushResult:
        fresh = {k: v for k, v in self._pending.items() if k not in self.rows}
        self.rows.update(fresh)
        duplicates = len(self._pending) - len(fresh)
        self._pending = {}
        return FlushResult(len(fresh), duplicates)
