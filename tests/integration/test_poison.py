"""Nothing a client sends may stop the worker (issue 9's first three reproductions).

A real beacon and worker on a real broker and the embedded ClickHouse engine. Records the edge
would refuse are produced straight onto the worker's topics, as a client that got around the
edge (or an older collector) could.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from collectors.calls.records import CallCallback
from tests.conftest import Pipeline, make_event, metric_value
from tracker.deadletter import DeadLetter
from tracker.errors import FieldError
from tracker.kafka.topology import Topology
from tracker.settings import Settings
from tracker.touchpoint import Touchpoint

pytestmark = pytest.mark.integration


def topology(pipeline: Pipeline) -> Topology:
    return Topology.from_settings(Settings.from_env(pipeline.env))


def produce(pipeline: Pipeline, records: Iterable[tuple[str, bytes | None, bytes | None]]) -> None:
    """(topic, key, value) records, acknowledged by the broker before this returns."""

    async def send() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=pipeline.env["TRACKER_KAFKA_BOOTSTRAP"], acks="all"
        )
        await producer.start()
        try:
            for topic, key, value in records:
                await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()

    asyncio.run(send())


def raw_touchpoint(ts: datetime, anonymous_id: str, event_id: str | None = None) -> bytes:
    """A touchpoint as the beacon puts it on the raw topic."""
    now = datetime.now(UTC)
    return orjson.dumps(
        Touchpoint(
            event_id=event_id or str(uuid.uuid4()),
            type="page_view",
            name="",
            source="web_beacon",
            channel="web",
            ts=ts,
            device_ts=ts,
            received_ts=now,
            anonymous_id=anonymous_id,
            page={"url": "https://shop.example.com/"},
        ).to_wire()
    )


def count(pipeline: Pipeline, sql: str) -> str:
    return pipeline.query(sql).strip()


def dead_letters_of(pipeline: Pipeline, stage: str) -> list[str]:
    return pipeline.query(
        f"SELECT reason FROM tracker.dead_letters WHERE stage = '{stage}' ORDER BY reason"
    ).splitlines()


def test_four_requests_of_one_customers_large_events_land_and_the_worker_stays_up(
    pipeline: Pipeline,
) -> None:
    anon = "anon-" + uuid.uuid4().hex[:8]
    url = "https://shop.example.com/" + "p" * (4000 - len("https://shop.example.com/"))
    for _ in range(4):
        events = [
            make_event(anonymous_id=anon, name="n" * 256, page={"url": url}) for _ in range(120)
        ]
        status, body, _ = pipeline.post(events)
        assert status == 200, body

    landed = pipeline.wait_for(
        f"SELECT count() FROM tracker.touchpoints FINAL WHERE anonymous_id = '{anon}' "
        "AND customer_id != ''",
        "480",
        timeout=90,
    )
    assert landed == "480"
    journey = pipeline.wait_for(
        "SELECT events FROM tracker.journeys FINAL WHERE customer_id IN (SELECT customer_id "
        f"FROM tracker.touchpoints WHERE anonymous_id = '{anon}')",
        "480",
    )
    assert journey == "480"  # every event counted, though most are folded out of the state
    worker = pipeline.components[0]
    assert worker.process is not None and worker.process.poll() is None
    assert metric_value(pipeline.console_url, 'tracker_state_folded_total{state="journey"}') > 0


def test_a_poison_record_on_every_topic_is_a_dead_letter_and_a_restart_does_not_crash_loop(
    pipeline: Pipeline,
) -> None:
    topics = topology(pipeline)
    anon = "anon-" + uuid.uuid4().hex[:8]
    link_slug = "poison-" + uuid.uuid4().hex[:6]
    now = datetime.now(UTC)
    huge_call = CallCallback(
        provider="generic",
        call_id="c" * 500_000,  # the signed webhook: one call's state above 1 MB
        callback_id="cb-huge",
        status="ringing",
        event_ts=now,
        received_ts=now,
    )
    good_call = CallCallback(
        provider="generic",
        call_id="call-" + uuid.uuid4().hex,
        callback_id="cb-good",
        status="completed",
        event_ts=now,
        received_ts=now,
        direction="inbound",
        caller_hash="h-" + uuid.uuid4().hex[:8],
    )
    good_letter = DeadLetter.for_payload(
        {"event_id": "x"}, source="beacon", stage="accept", errors=[FieldError("ts", "bad")]
    )
    produce(
        pipeline,
        [
            (topics.raw.name, b"k", b'{"schema": "tracker/touchpoint/1-0-0", "ts": []}'),
            (topics.click_batches.name, b"k", b"\x00 not a click batch"),
            (topics.dead_letters.name, b"k", b"[1, 2"),
            (topics.calls.name, huge_call.call_key.encode(), orjson.dumps(huge_call.to_wire())),
            (topics.identity.name, b"k", b"not json"),
            (topics.journey.name, orjson.dumps("cust-poison"), b'{"kind": "event"}'),
            (topics.journey.name, b"\xff not a customer", b'{"kind": "regroup"}'),
            (topics.links.name, link_slug.encode(), b'{"target": 1'),
            # and good records after them
            (topics.calls.name, good_call.call_key.encode(), orjson.dumps(good_call.to_wire())),
            (topics.dead_letters.name, b"k", orjson.dumps(good_letter.to_wire())),
        ],
    )
    assert pipeline.post([make_event(anonymous_id=anon)])[0] == 200

    # Decoding (raw, click batches, dead letters) was already the ingest stage's; the rest
    # crashed the worker before.
    stages = {"ingest": 3, "calls": 1, "identity": 1, "journey": 2, "links": 1}
    expected = "\n".join(f"{stage}\t{n}" for stage, n in sorted(stages.items()))
    where = "WHERE stage IN (" + ", ".join(f"'{s}'" for s in stages) + ") AND source = 'worker'"
    by_stage = (
        f"SELECT stage, count() FROM tracker.dead_letters {where} GROUP BY stage ORDER BY stage"
    )
    assert pipeline.wait_for(by_stage, expected, timeout=60) == expected
    assert all(reason for stage in stages for reason in dead_letters_of(pipeline, stage))
    # The 500,000-character call id is refused by the callback's own bounds, named in the reason.
    assert "call_id" in dead_letters_of(pipeline, "calls")[0]
    good = (
        "SELECT (SELECT count() FROM tracker.touchpoints FINAL WHERE anonymous_id = "
        f"'{anon}' AND customer_id != '') + (SELECT count() FROM tracker.calls FINAL WHERE "
        f"call_id = '{good_call.call_id}') + (SELECT count() FROM tracker.dead_letters WHERE "
        f"dead_letter_id = '{good_letter.dead_letter_id}')"
    )
    assert pipeline.wait_for(good, "3") == "3"

    # A restart on the same data directory replays nothing it committed, and does not crash.
    worker = pipeline.components[0]
    assert worker.stop() == 0
    pipeline.components[0] = pipeline.worker().start()
    later = "anon-" + uuid.uuid4().hex[:8]
    assert pipeline.post([make_event(anonymous_id=later)])[0] == 200
    after = (
        f"SELECT count() FROM tracker.touchpoints FINAL WHERE anonymous_id = '{later}' "
        "AND customer_id != ''"
    )
    assert pipeline.wait_for(after, "1") == "1"
    assert pipeline.query(by_stage).strip() == expected  # each poison record dead once
    restarted = pipeline.components[0].process
    assert restarted is not None and restarted.poll() is None


def test_an_event_of_year_one_is_a_dead_letter_its_batch_lands_and_sigterm_stops_the_worker(
    pipeline: Pipeline,
) -> None:
    topics = topology(pipeline)
    anon = "anon-" + uuid.uuid4().hex[:8]
    bad_id = str(uuid.uuid4())
    base = datetime.now(UTC) - timedelta(minutes=5)
    values = [raw_touchpoint(base + timedelta(seconds=n), anon) for n in range(4)]
    values.insert(2, raw_touchpoint(datetime(1, 1, 1, tzinfo=UTC), anon, event_id=bad_id))
    produce(pipeline, [(topics.raw.name, anon.encode(), value) for value in values])

    landed = f"SELECT count() FROM tracker.touchpoints FINAL WHERE anonymous_id = '{anon}'"
    assert pipeline.wait_for(landed, "4") == "4"
    dead = f"FROM tracker.dead_letters WHERE positionUTF8(payload, '{bad_id}') > 0"
    assert pipeline.wait_for(f"SELECT count() {dead}", "1") == "1"
    assert "1970" in pipeline.query(f"SELECT reason {dead}")  # a reason a person can act on

    worker = pipeline.components.pop(0)
    assert worker.stop(signal.SIGTERM, timeout=25) == 0  # exited on SIGTERM, not killed


def test_a_raw_event_kafka_refuses_to_forward_is_a_dead_letter_and_its_batch_lands(
    pipeline: Pipeline,
) -> None:
    """Its row for stitching (the page URL and its path, each 600 kB) is above Kafka's 1 MB."""
    topics = topology(pipeline)
    anon = "anon-" + uuid.uuid4().hex[:8]
    huge_id = str(uuid.uuid4())
    wire = orjson.loads(raw_touchpoint(datetime.now(UTC), anon, event_id=huge_id))
    wire["page"] = {"url": "https://shop.example.com/" + "p" * 600_000}
    base = datetime.now(UTC) - timedelta(minutes=1)
    values = [raw_touchpoint(base + timedelta(seconds=n), anon) for n in range(3)]
    values.insert(1, orjson.dumps(wire))
    produce(pipeline, [(topics.raw.name, anon.encode(), value) for value in values])

    landed = f"SELECT count() FROM tracker.touchpoints FINAL WHERE anonymous_id = '{anon}'"
    assert pipeline.wait_for(landed, "3") == "3"
    dead = f"FROM tracker.dead_letters WHERE stage = 'ingest' AND positionUTF8(payload, '{huge_id}') > 0"
    assert pipeline.wait_for(f"SELECT count() {dead}", "1") == "1"
    assert "MessageSizeTooLarge" in pipeline.query(f"SELECT reason {dead}")
