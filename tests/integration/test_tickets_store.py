"""The tickets table on the real ClickHouse engine (chDB): the rows the tickets stage writes fit the
migration, versions replace each other, and forgetting a requester erases their tickets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agents.forget import erase
from agents.tickets import merge_callbacks, ticket_row
from collectors.helpdesk.records import SupportCallback
from tracker.store import ClickHouseStore
from tracker.store.sink import ClickHouseSink
from tracker.store.tables import TICKETS

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ClickHouseStore]:
    fresh = ClickHouseStore(f"chdb://{tmp_path / 'chdb'}", f"test_{uuid.uuid4().hex[:12]}")
    fresh.run_sync(fresh.migrate_sync)
    yield fresh
    fresh.close()


def _callback(ticket: str, n: int, event: str, **fields: Any) -> SupportCallback:
    return SupportCallback(
        provider="zendesk",
        kind="ticket",
        ticket_id=ticket,
        callback_id=f"{ticket}-{n}",
        event=event,
        event_ts=T0 + timedelta(hours=n),
        received_ts=T0 + timedelta(hours=n, seconds=1),
        **fields,
    )


def _write(store: ClickHouseStore, *versions: list[SupportCallback]) -> None:
    sink = ClickHouseSink(store, TICKETS)
    for callbacks in versions:
        record = merge_callbacks(callbacks)
        sink.add(record.event_id, record.opened_at, ticket_row(record), record.version)
    result = asyncio.run(sink.flush())
    assert not result.refused, result.refused


def test_versions_replace_each_other_and_a_forgotten_requester_s_tickets_go(
    store: ClickHouseStore,
) -> None:
    ada = [
        _callback("1", 0, "opened", email_hash="h-ada", phone_hash="p-ada"),
        _callback("1", 2, "replied", agent="agent-7"),
        _callback("1", 5, "solved"),
        _callback("1", 6, "rated", rating=4.0),
    ]
    bob = [_callback("2", 0, "opened", email_hash="h-bob", user_id="u-bob")]
    _write(store, ada[:2], ada, bob)

    latest = asyncio.run(
        store.query(
            "SELECT ticket_id, version, status, first_reply_seconds, resolution_seconds, rating, "
            "agent FROM tickets FINAL ORDER BY ticket_id"
        )
    ).rows
    assert [list(r) for r in latest] == [
        ["1", 4, "solved", 7200.0, 18000.0, 4.0, "agent-7"],
        ["2", 1, "open", None, None, None, ""],
    ]

    asyncio.run(erase(store, "email:h-ada"))
    asyncio.run(erase(store, "user:u-bob"))
    left = asyncio.run(store.query("SELECT count() FROM tickets")).rows
    assert left[0][0] == 0
