"""ClickHouse failing for a reason of its own (a disk that refuses files, no space, no memory)
is an outage to wait out, not a refusal of the rows. The engine's errors are played by a
stand-in client here; tests/integration/test_faults.py makes the real engine refuse."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from tracker.errors import StoreError
from tracker.store import ClickHouseStore
from tracker.store._clickhouse import engine_fault
from tracker.store.sink import ClickHouseSink
from tracker.store.tables import Table

NOW = datetime(2026, 11, 22, tzinfo=UTC)
TABLE = Table("touchpoints", ("k", "v"), key="k", time="ts", look_before_writing=False)

# What chDB raised when the table's folder was made immutable (chattr +i) under an insert.
READ_ONLY_FOLDER = (
    "Code: 1001. DB::Exception: std::__1::filesystem::filesystem_error: filesystem error: in "
    'create_directories: Operation not permitted ["/data/store/b51/b5154f95/tmp_insert_1_1_1"]. '
    "(STD_EXCEPTION)"
)
TYPE_MISMATCH = "Code: 53. DB::Exception: Type mismatch in IN or VALUES section. (TYPE_MISMATCH)"


class Client:
    """A clickhouse-connect client whose inserts fail with ``errors`` first, then succeed."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        self.rows: list[Sequence[Any]] = []

    def insert(self, table: str, rows: Sequence[Sequence[Any]], column_names: Any) -> None:
        if self.errors:
            raise DatabaseError(self.errors.pop(0))
        self.rows.extend(rows)

    def close(self) -> None:
        pass


def store_with(client: Client) -> ClickHouseStore:
    store = ClickHouseStore("http://clickhouse.invalid:8123", "tracker")
    store._client = client
    return store


@pytest.mark.parametrize(
    ("message", "passes"),
    [
        (READ_ONLY_FOLDER, True),
        (
            "Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)",
            True,
        ),
        ("Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)", True),
        (
            "Code: 1000. DB::Exception: Access to file denied: Permission denied. (POCO_EXCEPTION)",
            True,
        ),
        (
            "Code: 252. DB::Exception: Too many parts (3001 with average size of 1.00 KiB) in "
            "table 'tracker.touchpoints'. Merges are processing significantly slower than "
            "inserts. (TOO_MANY_PARTS)",
            True,
        ),
        # One batch spanning too many partitions is the rows' doing: written one by one.
        (
            "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than "
            "100). The limit is controlled by 'max_partitions_per_insert_block' setting. "
            "(TOO_MANY_PARTS)",
            False,
        ),
        (TYPE_MISMATCH, False),
        ("Code: 1001. DB::Exception: std::out_of_range: vector. (STD_EXCEPTION)", False),
        (
            "Code: 27. DB::Exception: Cannot parse input. (CANNOT_PARSE_INPUT_ASSERTION_FAILED)",
            False,
        ),
    ],
)
def test_the_engines_own_faults_pass_and_the_statements_do_not(message: str, passes: bool) -> None:
    assert engine_fault(DatabaseError(message)) is passes


def test_a_refusing_disk_is_a_retriable_store_error_and_shows_until_a_write_lands() -> None:
    client = Client([READ_ONLY_FOLDER])
    store = store_with(client)

    with pytest.raises(StoreError) as refused:
        store.insert_sync("touchpoints", [("a", 1)], ["k", "v"])
    assert refused.value.retriable
    assert "Operation not permitted" in store.write_faults()["touchpoints"]

    store.insert_sync("touchpoints", [("a", 1)], ["k", "v"])
    assert store.write_faults() == {}
    assert client.rows == [("a", 1)]


def test_a_refused_statement_is_not_retried_and_is_no_write_fault() -> None:
    store = store_with(Client([TYPE_MISMATCH]))

    with pytest.raises(StoreError) as refused:
        store.insert_sync("touchpoints", [("a", 1)], ["k", "v"])
    assert not refused.value.retriable
    assert store.write_faults() == {}


async def test_a_disk_refusing_for_a_while_never_turns_healthy_rows_into_dead_letters() -> None:
    # More refusals than the sink takes before it writes rows one by one to find bad ones.
    client = Client([READ_ONLY_FOLDER] * 8)
    sink = ClickHouseSink(store_with(client), TABLE, max_backoff_seconds=0.01)
    for key in ("a", "b", "c"):
        sink.add(key, NOW, {"k": key, "v": 1})

    result = await sink.flush()

    assert (result.written, result.refused) == (3, {})
    assert sorted(r[0] for r in client.rows) == ["a", "b", "c"]
