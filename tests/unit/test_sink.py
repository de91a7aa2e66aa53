"""The sink's retry rules, against a store that is down for a while (ClickHouse cannot be stopped
under chDB, so the outage is played by a stand-in; tests/integration covers the real engine)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tracker.errors import StoreError
from tracker.store import QueryResult
from tracker.store.sink import ClickHouseSink
from tracker.store.tables import Table

NOW = datetime(2026, 11, 22, tzinfo=UTC)
TABLE = Table("t", ("k", "v"), key="k", time="ts", look_before_writing=True)


class FlakyStore:
    """Unreachable for the first ``outage`` calls, then a dict of tables."""

    database = "tracker"

    def __init__(self, outage: int) -> None:
        self.outage = outage
        self.calls = 0
        self.rows: list[Sequence[Any]] = []

    def _maybe_down(self) -> None:
        self.calls += 1
        if self.calls <= self.outage:
            raise StoreError("ClickHouse is unreachable: connection refused", retriable=True)

    async def query(
        self, sql: str, parameters: dict[str, Any] | None = None, readonly: bool = False
    ) -> QueryResult:
        self._maybe_down()
        keys = set(parameters["keys"]) if parameters else set()
        return QueryResult(["k", "v"], [(r[0], 0) for r in self.rows if r[0] in keys])

    async def insert(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
    ) -> None:
        self._maybe_down()
        self.rows.extend(rows)


async def test_an_outage_delays_the_batch_and_loses_nothing() -> None:
    store = FlakyStore(outage=4)
    sink = ClickHouseSink(store, TABLE, max_backoff_seconds=0.01)
    for key in ("a", "b", "c"):
        sink.add(key, NOW, {"k": key, "v": 1})

    result = await sink.flush()

    assert (result.written, result.duplicates, result.refused) == (3, 0, {})
    assert sorted(r[0] for r in store.rows) == ["a", "b", "c"]
    assert store.calls == 6  # four failed attempts, then the check and the insert


async def test_outages_never_split_a_batch_into_dead_letters() -> None:
    store = FlakyStore(outage=12)
    sink = ClickHouseSink(store, TABLE, max_backoff_seconds=0.01)
    sink.add("a", NOW, {"k": "a", "v": 1})

    result = await sink.flush()

    assert result.written == 1 and result.refused == {}
