from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from agents.forget import ForgottenIdentifiers
from agents.ingest import IngestPipeline, RawMessage
from tracker.privacy import InvalidIdentifier, hash_identifier, identifier_key
from tracker.store.sink import MemorySink
from tracker.touchpoint import RequestContext, accept

CONTEXT = RequestContext(
    source="web_beacon", received_ts=datetime(2026, 11, 22, tzinfo=UTC), hash_salt="s"
)


def test_identifiers_are_written_as_people_write_them_and_stored_as_touchpoints_store_them() -> (
    None
):
    assert (
        identifier_key(" email: Ada@Example.com", "s", "US")
        == f"email:{hash_identifier('email', 'ada@example.com', 's')}"
    )
    assert (
        identifier_key("phone:(415) 555-0100", "s", "US")
        == f"phone:{hash_identifier('phone', '+14155550100', 's')}"
    )
    assert identifier_key("user:u-1", "s", "US") == "user:u-1"
    for bad in ("ada@example.com", "name:ada", "user:", "email:not-an-address"):
        with pytest.raises(InvalidIdentifier):
            identifier_key(bad, "s", "US")


async def test_ingest_drops_events_that_carry_a_forgotten_identifier() -> None:
    forgotten = ForgottenIdentifiers([identifier_key("email:ada@example.com", "s", "US")])
    touchpoints = MemorySink()
    pipeline = IngestPipeline(touchpoints, MemorySink(), forgotten)
    events = [
        {
            "event_id": "00000000-0000-4000-8000-000000000001",
            "type": "page_view",
            "ts": "2026-11-21T10:00:00Z",
            "email": "ADA@example.com",
        },
        {
            "event_id": "00000000-0000-4000-8000-000000000002",
            "type": "page_view",
            "ts": "2026-11-21T10:00:00Z",
            "anonymous_id": "someone-else",
        },
    ]
    messages = [
        RawMessage(orjson.dumps(accept(e, CONTEXT).to_wire()), "raw", 0, n)
        for n, e in enumerate(events)
    ]

    await pipeline.handle_touchpoints(messages)

    assert list(touchpoints.rows) == [("00000000-0000-4000-8000-000000000002", 0)]
