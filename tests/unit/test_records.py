"""The typed records between stages: each comes back from its wire form as it went, and what a
stitch worker hands the writer through Kafka is what the writer stores."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.ingest import RawMessage, enriched
from agents.outputs import OutputSink, Writer, output_records, touchpoints_in
from agents.services import WriterService
from agents.worker import build_worker
from tracker.deadletter import DeadLetter
from tracker.errors import FieldError
from tracker.records import (
    Alias,
    FrictionRecord,
    IdentityConflict,
    JourneySummary,
    Regroup,
    Restitch,
    RoutedEvent,
    SessionRecord,
    journey_command,
)
from tracker.settings import Settings
from tracker.store.sink import MemorySink
from tracker.store.tables import TABLES, TOUCHPOINTS
from tracker.touchpoint import RequestContext, accept

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def touchpoint(event_id: str = "0d4e2b7a-8c31-4f5e-b6a9-2e7c1d3f5a80") -> Any:
    context = RequestContext(source="web_beacon", received_ts=NOW, hash_salt="s")
    return enriched(
        accept(
            {
                "event_id": event_id,
                "type": "purchase",
                "ts": "2026-11-22T09:00:00.250Z",
                "anonymous_id": "a-1",
                "email": "ada@example.com",
                "value": 12.5,
                "page": {"url": "https://shop.example.com/cart?utm_source=news"},
                "consent": {"analytics": True},
            },
            context,
        )
    )


def records() -> list[tuple[str, Any]]:
    return [
        ("touchpoints", touchpoint()),
        ("identities", Alias("email:x", "email", "c1", "c2", 7, NOW)),
        ("identity_conflicts", IdentityConflict("id", "e", NOW, "user:a", "user:b", "one_user")),
        (
            "sessions",
            SessionRecord("s1", 3, "c1", NOW, NOW, 2, 1, "web", "autumn", False, ["e1", "e2"]),
        ),
        (
            "journeys",
            JourneySummary("c1", 3, NOW, NOW, None, 2, 1, ["web"], "buy", NOW, 1, 12.5, 0, 0, ""),
        ),
        ("frictions", FrictionRecord("f1", 3, "c1", "e1", NOW, "error", "high", "500", False)),
        (
            "dead_letters",
            DeadLetter(
                "worker",
                "ingest",
                "bad",
                "{}",
                NOW,
                (FieldError("ts", "bad"),),
                "e1",
                "6f1c2a0e-2f4b-4f3e-9a57-3c1d2b8e7a10",
            ),
        ),
    ]


def test_every_record_comes_back_from_the_wire_as_it_went() -> None:
    for name, record in records():
        decode = TABLES[name].record
        assert decode is not None
        wire = record.to_wire()
        assert decode(wire) == record, name


def test_journey_commands_come_back_as_the_command_they_were() -> None:
    t = touchpoint()
    commands = [
        RoutedEvent("anon:a-1", 4, True, t),
        Regroup({"anon:a-1": "c2"}, 9),
        Restitch([["saved", "event"]], {t.event_id: t}, {"events": 3}),
    ]
    for command in commands:
        assert journey_command(command.to_wire()) == command


def test_a_row_is_built_by_column_name() -> None:
    t = touchpoint()
    row = TOUCHPOINTS.named(t)
    assert (row["event_id"], row["value"], row["email_hash"]) == (t.event_id, 12.5, t.email_hash)
    assert row["page_host"] == "shop.example.com" and row["campaign_source"] == "news"


def test_journey_records_written_before_typed_records_still_decode() -> None:
    """A worker upgraded mid-stream reads what the release before it left on the journey topic:
    the touchpoint under "row", without the columns added since."""
    t = touchpoint()
    old = {k: v for k, v in orjson.loads(t.to_wire()).items() if k != "survey_touchpoint_id"}
    event = {"kind": "event", "primary": "anon:a-1", "v": 4, "stitch": True, "row": old}
    restitch = {"kind": "restitch", "events": [], "rows": {t.event_id: old}}

    routed = journey_command(orjson.dumps(event))
    moved = journey_command(orjson.dumps(restitch))

    assert isinstance(routed, RoutedEvent) and isinstance(moved, Restitch)
    assert routed.touchpoint.ts == t.ts and routed.touchpoint.survey_touchpoint_id == ""
    assert moved.touchpoints[t.event_id].email_hash == t.email_hash


def test_a_record_with_a_field_it_does_not_have_is_refused_as_before() -> None:
    """Records decode by position when the wire holds exactly their fields; any other wire goes
    by keyword, so an unknown field still fails (and the record becomes a dead letter)."""
    wire = orjson.loads(touchpoint().to_wire())
    extra = {**wire, "shoe_size": 44}
    swapped = {**{k: v for k, v in wire.items() if k != "channel"}, "chanel": "web"}
    decode = TOUCHPOINTS.record
    assert decode is not None
    for bad in (extra, swapped):
        with pytest.raises(TypeError):
            decode(orjson.dumps(bad))


class _Kafka:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send_all(self, records: Sequence[Any]) -> None:
        self.sent.extend(records)


async def test_what_a_stitch_worker_hands_over_is_what_the_writer_stores() -> None:
    kafka = _Kafka()
    for name, record in records():
        table = TABLES[name]
        sink = OutputSink(kafka, "outputs", table)
        key = str(getattr(record, table.key))
        sink.add(key, getattr(record, table.time), record, 3)
        sink.add(key, getattr(record, table.time), record, 3)  # a replay: handed over once
        assert (await sink.flush()).forwarded == 1
    stored = {name: MemorySink() for name in TABLES if TABLES[name].record}
    messages = [RawMessage(r.value, "outputs", 0, i) for i, r in enumerate(kafka.sent)]
    messages.append(RawMessage(b'{"table": "nowhere"}', "outputs", 1, 0))

    await Writer(stored).handle(messages)

    for name, record in records():
        key = str(getattr(record, TABLES[name].key))
        assert stored[name].rows[(key, 3)] == record, name
    [letter] = [r for (_, v), r in stored["dead_letters"].rows.items() if v == 0]
    assert letter.stage == "write" and "malformed" in letter.reason


async def test_the_writer_sizes_its_batches_in_touchpoints_not_in_the_rows_they_bring(
    tmp_path: Path,
) -> None:
    """A writer batch holds as many events as an all-in-one worker's, so it costs as few inserts:
    only the touchpoints count towards TRACKER_SINK_BATCH_SIZE."""
    kafka = _Kafka()
    handed = 0
    for name, record in records():
        table = TABLES[name]
        sink = OutputSink(kafka, "outputs", table)
        sink.add(str(getattr(record, table.key)), getattr(record, table.time), record, 1)
        handed += (await sink.flush()).forwarded
    settings = Settings.from_env(
        {"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_WORKER_ROLE": "write"}
    )
    _, services, store = build_worker(settings)
    assert store is not None
    store.close()
    [writer] = [s for s in services if isinstance(s, WriterService)]

    weights = [writer.weight(r) for r in kafka.sent]

    assert handed == len(kafka.sent) > 1
    assert sum(weights) == 1  # the one touchpoint among them
    assert weights[[TABLES[name] for name, _ in records()].index(TOUCHPOINTS)] == 1


async def test_a_batch_of_rows_travels_in_a_few_records_and_every_row_is_stored() -> None:
    kafka = _Kafka()
    sink = OutputSink(kafka, "outputs", TOUCHPOINTS)
    ids = [f"0d4e2b7a-8c31-4f5e-b6a9-{n:012d}" for n in range(300)]
    for event_id in ids:
        t = touchpoint(event_id)
        sink.add(event_id, t.ts, t, 1)
    assert (await sink.flush()).forwarded == 300
    assert len(kafka.sent) == 1
    # Under a limit of a few rows' size, the same rows take several records, each within it.
    one_row = len(output_records(TOUCHPOINTS, [(ids[0], 1, touchpoint(ids[0]))])[0][1])
    chunks = output_records(TOUCHPOINTS, [(i, 1, touchpoint(i)) for i in ids], 10 * one_row)
    assert len(chunks) == 30 and all(len(value) <= 10 * one_row for _, value, _ in chunks)
    assert sum(rows for _, _, rows in chunks) == 300
    stored = {name: MemorySink() for name in TABLES if TABLES[name].record}
    messages = [RawMessage(value, "outputs", 0, n) for n, (_, value, _) in enumerate(chunks)]

    await Writer(stored).handle(messages)

    assert sorted(key for key, _ in stored["touchpoints"].rows) == ids
    assert touchpoints_in(kafka.sent[0].key, kafka.sent[0].headers) == 300


async def test_a_malformed_row_is_a_dead_letter_of_its_own_and_its_record_mates_are_stored() -> (
    None
):
    good = touchpoint()
    [(_, value, _)] = output_records(TOUCHPOINTS, [(good.event_id, 1, good)])
    rows = orjson.loads(value)["rows"]
    bad = [{"key": "k", "version": 1, "record": {}}, {"key": "j", "version": "one"}]
    broken = {"table": "touchpoints", "rows": [bad[0], *rows, bad[1]]}
    stored = {name: MemorySink() for name in TABLES if TABLES[name].record}

    await Writer(stored).handle([RawMessage(orjson.dumps(broken), "outputs", 2, 7)])

    assert list(stored["touchpoints"].rows) == [(good.event_id, 1)]
    letters = list(stored["dead_letters"].rows.values())
    assert len(letters) == 2  # one per malformed row, though they share a Kafka record
    assert all(x.stage == "write" and "malformed" in x.reason for x in letters)
