from __future__ import annotations

from datetime import UTC, datetime

import orjson

from agents.ingest import IngestPipeline, RawMessage
from tracker.deadletter import DeadLetter
from tracker.errors import FieldError
from tracker.store.sink import MemorySink
from tracker.store.tables import DEAD_LETTERS, TOUCHPOINTS
from tracker.touchpoint import RequestContext, accept

CONTEXT = RequestContext(
    source="web_beacon", received_ts=datetime(2026, 11, 22, tzinfo=UTC), hash_salt="s"
)


def raw(event_id: str, offset: int, version: int = 0) -> RawMessage:
    touchpoint = accept(
        {"event_id": event_id, "type": "page_view", "ts": "2026-11-21T10:00:00Z"}, CONTEXT
    )
    touchpoint.version = version
    return RawMessage(orjson.dumps(touchpoint.to_wire()), "touchpoints.raw", 0, offset)


IDS = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(4)]


async def test_every_copy_of_an_event_reaches_the_sink_under_its_key_and_time() -> None:
    # Writing each event once is the sink's promise: ClickHouseSink looks every (key, version) up
    # around the given time before writing (tests/integration/test_store.py). The pipeline's part,
    # read from what it handed the sink, not from what this in-memory sink kept: every copy comes
    # under the event id and version its row stores, at the time its row stores, as the same row.
    touchpoints, dead = MemorySink(), MemorySink()
    pipeline = IngestPipeline(touchpoints, dead)

    await pipeline.handle_touchpoints([raw(IDS[0], 0), raw(IDS[1], 1), raw(IDS[0], 2)])
    await pipeline.handle_touchpoints([raw(IDS[1], 3), raw(IDS[2], 4)])

    assert sorted({key for key, _, _ in touchpoints.added}) == [(i, 0) for i in IDS[:3]]
    first: dict[tuple[str, int], object] = {}
    for key, ts, row in touchpoints.added:
        stored = TOUCHPOINTS.named(row)
        assert (stored["event_id"], stored["version"], stored["ts"]) == (*key, ts)
        assert first.setdefault(key, row) == row
    assert dead.added == []


async def test_a_higher_version_is_an_update_not_a_duplicate() -> None:
    touchpoints = MemorySink()
    pipeline = IngestPipeline(touchpoints, MemorySink())

    await pipeline.handle_touchpoints([raw(IDS[0], 0, version=1), raw(IDS[0], 1, version=2)])
    await pipeline.handle_touchpoints([raw(IDS[0], 2, version=2)])

    assert sorted(touchpoints.rows) == [(IDS[0], 1), (IDS[0], 2)]


async def test_rows_follow_the_column_order() -> None:
    touchpoints = MemorySink()
    await IngestPipeline(touchpoints, MemorySink()).handle_touchpoints([raw(IDS[0], 0)])
    row = TOUCHPOINTS.named(touchpoints.rows[(IDS[0], 0)])
    assert (row["event_id"], row["type"], row["source"], row["channel"]) == (
        IDS[0],
        "page_view",
        "web_beacon",
        "web",
    )


async def test_malformed_raw_records_become_one_dead_letter_each_even_when_replayed() -> None:
    touchpoints, dead = MemorySink(), MemorySink()
    pipeline = IngestPipeline(touchpoints, dead)
    broken = RawMessage(b"{not json", "touchpoints.raw", 3, 17)

    await pipeline.handle_touchpoints([broken, raw(IDS[0], 18)])
    await pipeline.handle_touchpoints([broken])

    assert list(touchpoints.rows) == [(IDS[0], 0)]
    [(_, row)] = dead.rows.items()
    letter = DEAD_LETTERS.named(row)
    assert letter["stage"] == "ingest" and letter["payload"] == "{not json"
    assert "malformed" in letter["reason"]


async def test_dead_letters_from_collectors_are_stored_as_sent() -> None:
    dead = MemorySink()
    letter = DeadLetter.for_payload(
        {"event_id": "x", "ts": "soon"},
        source="beacon",
        stage="collect",
        errors=[FieldError("ts", "bad")],
    )
    message = RawMessage(orjson.dumps(letter.to_wire()), "touchpoints.dead_letters", 0, 0)

    await IngestPipeline(MemorySink(), dead).handle_dead_letters([message, message])

    stored = DEAD_LETTERS.named(dead.rows[(letter.dead_letter_id, 0)])
    assert (stored["reason"], stored["error_fields"], stored["event_id"]) == (
        "ts: bad",
        ["ts"],
        "x",
    )
    assert len(dead.rows) == 1
