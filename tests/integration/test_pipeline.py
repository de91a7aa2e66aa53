"""The pipeline end to end on a real Kafka broker and the real ClickHouse engine."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import Pipeline, component_env, http, make_event, wait_for_metric
from tracker.cli.kafka_local import LocalKafka, free_port
from tracker.privacy import identifier_key

pytestmark = pytest.mark.integration


def test_posted_event_becomes_one_enriched_row(pipeline: Pipeline) -> None:
    event = make_event(
        email="Ada@Example.com",
        context={
            "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
        },
    )

    status, body, _ = pipeline.post([event])

    assert (status, body) == (200, {"accepted": 1})
    row = pipeline.wait_for(
        f"SELECT type, channel, campaign_source, device_type, ip, length(email_hash) "
        f"FROM touchpoints WHERE event_id = '{event['event_id']}'",
        "page_view\temail\tnews\tmobile\t127.0.0.0\t64",
    )
    assert row == "page_view\temail\tnews\tmobile\t127.0.0.0\t64"
    assert "Ada@Example.com".lower() not in pipeline.query("SELECT * FROM touchpoints FORMAT TSV")


def test_same_event_posted_twice_is_one_row(pipeline: Pipeline) -> None:
    event = make_event()
    assert pipeline.post([event])[0] == 200
    pipeline.wait_for(
        f"SELECT count() FROM touchpoints WHERE event_id = '{event['event_id']}'", "1"
    )

    assert pipeline.post([event, event])[0] == 200
    pipeline.wait_until_handled()  # the copies have gone through every stage, on any partition

    count = pipeline.query(
        f"SELECT count() FROM touchpoints WHERE event_id = '{event['event_id']}'"
    )
    assert count.strip() == "1"


def test_bad_event_lands_in_dead_letters_with_its_reason(pipeline: Pipeline) -> None:
    good = make_event()
    bad = make_event(ts="last tuesday", email="someone@example.com")

    status, body, _ = pipeline.post([good, bad])

    assert status == 400
    assert body["accepted"] == 1
    assert body["rejected"][0]["index"] == 1
    assert body["rejected"][0]["errors"][0]["field"] == "ts"
    expected = (
        "ts: must be an RFC 3339 timestamp such as 2026-11-22T10:00:00Z, got \\'last tuesday\\'"
    )
    reason = pipeline.wait_for(
        f"SELECT reason FROM dead_letters WHERE event_id = '{bad['event_id']}'", expected
    )
    assert reason == expected  # TSV escapes quotes, as clickhouse-client does
    payload = pipeline.query(
        f"SELECT payload FROM dead_letters WHERE event_id = '{bad['event_id']}'"
    )
    assert "last tuesday" in payload and "someone@example.com" not in payload
    assert (
        pipeline.wait_for(
            f"SELECT count() FROM touchpoints WHERE event_id = '{good['event_id']}'", "1"
        )
        == "1"
    )


def test_pixel_records_an_email_open(pipeline: Pipeline) -> None:
    event_id = str(uuid.uuid4())
    status, body, headers = http(
        "GET",
        f"{pipeline.beacon_url}/v1/p.gif?event_id={event_id}&type=email_open&channel=email"
        "&utm_campaign=autumn&anonymous_id=a1",
    )
    assert status == 200 and headers["Content-Type"] == "image/gif" and body.startswith(b"GIF89a")
    assert (
        pipeline.wait_for(
            f"SELECT type, channel, campaign_name FROM touchpoints WHERE event_id = '{event_id}'",
            "email_open\temail\tautumn",
        )
        == "email_open\temail\tautumn"
    )


def test_replay_from_the_start_writes_no_duplicates(pipeline: Pipeline) -> None:
    events = [make_event() for _ in range(300)]
    assert pipeline.post(events)[0] == 200
    assert pipeline.wait_for("SELECT count() FROM touchpoints", "300") == "300"
    pipeline.stop()

    # A new consumer group reads the raw topic again from offset zero into the same database.
    replay = Pipeline(pipeline.env, pipeline.data_dir)
    group = pipeline.env["TRACKER_WORKER_ID"] + "-replay"
    replay.components = [replay.worker(TRACKER_WORKER_ID=group).start()]
    try:
        assert wait_for_metric(
            replay.console_url, 'tracker_worker_events_total{outcome="duplicate"}', 300
        )
        assert (
            replay.query("SELECT uniqExact(event_id), count() FROM touchpoints").strip()
            == "300\t300"
        )
    finally:
        replay.stop()


def test_killed_worker_resumes_without_loss_or_duplicates(pipeline: Pipeline) -> None:
    first = [make_event() for _ in range(500)]
    assert pipeline.post(first)[0] == 200
    worker = pipeline.components[0]
    worker.stop(signal.SIGKILL)

    second = [make_event() for _ in range(500)]
    assert pipeline.post(second)[0] == 200  # the beacon still accepts: Kafka holds the events
    pipeline.components[0] = pipeline.worker().start()

    assert pipeline.wait_for("SELECT count() FROM touchpoints", "1000", timeout=60) == "1000"
    assert pipeline.query("SELECT uniqExact(event_id) FROM touchpoints").strip() == "1000"


def test_broker_outage_answers_503_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "kafka", free_port())
    broker.start()
    outage = Pipeline(component_env(broker.bootstrap, tmp_path), tmp_path)
    try:
        outage.start()
        acknowledged = [make_event() for _ in range(50)]
        assert outage.post(acknowledged)[0] == 200

        broker.stop()
        status, body, headers = outage.post([make_event()])
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
        assert "Kafka" in body["error"]

        broker.start()
        late = [make_event() for _ in range(50)]
        for _ in range(60):  # clients retry as Retry-After tells them
            status, _, _ = outage.post(late)
            if status == 200:
                break
            time.sleep(1)
        assert status == 200

        ids = ",".join(f"'{e['event_id']}'" for e in acknowledged + late)
        assert (
            outage.wait_for(
                f"SELECT count() FROM touchpoints WHERE event_id IN ({ids})", "100", timeout=90
            )
            == "100"
        )
    finally:
        outage.stop()
        broker.stop()


def test_sigterm_mid_stream_stops_cleanly_and_loses_nothing(pipeline: Pipeline) -> None:
    events = [make_event() for _ in range(2000)]
    for start in range(0, len(events), 500):
        assert pipeline.post(events[start : start + 500])[0] == 200

    started = time.monotonic()
    assert pipeline.components[0].stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 30

    pipeline.components[0] = pipeline.worker().start()
    assert (
        pipeline.wait_for("SELECT count(), uniqExact(event_id) FROM touchpoints", "2000\t2000")
        == "2000\t2000"
    )


def test_a_forgotten_person_is_erased_and_never_stored_again(pipeline: Pipeline) -> None:
    ada = [make_event(email="ada@example.com", anonymous_id="ada-laptop") for _ in range(3)]
    others = [make_event() for _ in range(2)]
    assert pipeline.post(ada + others)[0] == 200
    assert pipeline.wait_for("SELECT count() FROM touchpoints", "5") == "5"
    key = identifier_key("email:ada@example.com", pipeline.env["TRACKER_HASH_SALT"], "US")
    in_identities = f"SELECT count() FROM identities WHERE identifier = '{key}'"
    assert pipeline.query(in_identities).strip() == "1"

    status, answer, _ = http(
        "POST", pipeline.console_url + "/api/forget", b'{"identifier": "email:Ada@Example.com"}'
    )
    assert (status, answer["touchpoints"]) == (200, 3)
    assert pipeline.query("SELECT count() FROM touchpoints").strip() == "2"
    assert pipeline.query(in_identities).strip() == "0"

    # Neither a new event nor a restarted worker (which reloads the forgotten list) brings her back.
    assert pipeline.post([make_event(email="ada@example.com")])[0] == 200
    pipeline.components[0].stop()
    pipeline.components[0] = pipeline.worker().start()
    late = make_event(email="ADA@example.com")
    someone_else = make_event()
    assert pipeline.post([late, someone_else])[0] == 200
    pipeline.wait_until_handled()  # both have gone through every stage, on any partition
    stored = pipeline.query("SELECT toString(event_id) FROM touchpoints").split()
    assert sorted(stored) == sorted(e["event_id"] for e in [*others, someone_else])
    assert wait_for_metric(
        pipeline.console_url, 'tracker_worker_events_total{outcome="forgotten"}', 1
    )


def test_forget_names_what_is_wrong_with_an_identifier(pipeline: Pipeline) -> None:
    status, answer, _ = http("POST", pipeline.console_url + "/api/forget", b'{"identifier": "ada"}')
    assert status == 400
    assert answer["error"].startswith("identifier must be kind:value with kind one of user, anon")
