"""A regroup in the same batch as the events it moves must not lose their touchpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from agents.customer import JourneyRules
from agents.identity import Identifier, customer_id_for
from agents.ingest import TOUCHPOINT_COLUMNS, RawMessage, touchpoint_row
from agents.sink import MemorySink
from agents.stitching import JourneyStage, Outgoing, encode_row, journey_key
from tracker.touchpoint import RequestContext, accept

CONTEXT = RequestContext(source="web_beacon", received_ts=datetime(2026, 11, 20, 12, tzinfo=UTC))


class Loopback:
    def __init__(self) -> None:
        self.sent: list[Outgoing] = []

    async def send_all(self, records: Sequence[Outgoing]) -> None:
        self.sent.extend(records)


def page_view(event_id: str, anon: str, minute: int) -> bytes:
    t = accept(
        {
            "event_id": event_id,
            "type": "page_view",
            "ts": f"2026-11-20T10:{minute:02d}:00Z",
            "anonymous_id": anon,
            "page": {"url": "https://shop.example/pricing"},
        },
        CONTEXT,
    )
    return encode_row(touchpoint_row(t))


def test_events_moved_in_their_own_batch_are_written_by_their_new_customer() -> None:
    outbox = Loopback()
    touchpoints = MemorySink()
    stage = JourneyStage(
        outbox,  # type: ignore[arg-type]
        "journey",
        touchpoints=touchpoints,
        sessions=MemorySink(),
        journeys=MemorySink(),
        frictions=MemorySink(),
        dead_letters=MemorySink(),
        rules=JourneyRules(),
    )
    device_b = Identifier("anon", "b1")
    before, after = customer_id_for(device_b), customer_id_for(Identifier("anon", "a1"))
    ids = ["0b8f3c2e-5d7a-4e1b-9c3f-2a6d8e4f1b7c", "1c9f4d3f-6e8b-4f2c-8d4a-3b7e9f5a2c8d"]
    records = [
        orjson.dumps({"kind": "event", "primary": device_b.key})[:-1]
        + b',"row":'
        + page_view(event_id, "b1", minute)
        + b"}"
        for minute, event_id in enumerate(ids)
    ]
    records.append(orjson.dumps({"kind": "regroup", "moves": {device_b.key: after}}))
    state: dict[str, Any] = {}

    def batch(values: list[tuple[str, bytes]]) -> list[tuple[str, bytes, RawMessage]]:
        return [(c, v, RawMessage(v, "journey", 0, i)) for i, (c, v) in enumerate(values)]

    asyncio.run(stage.handle(batch([(before, v) for v in records]), state))
    assert touchpoints.rows == {}  # moved before they were written: they travel with the restitch
    (restitch,) = outbox.sent
    assert restitch.key == journey_key(after)
    asyncio.run(stage.handle(batch([(after, restitch.value or b"")]), state))
    written = {key[0]: row for key, row in touchpoints.rows.items()}
    assert sorted(written) == sorted(ids)
    customer = TOUCHPOINT_COLUMNS.index("customer_id")
    assert {row[customer] for row in written.values()} == {after}
    assert [state[after]["events"][i][0] for i in range(2)] == ids
