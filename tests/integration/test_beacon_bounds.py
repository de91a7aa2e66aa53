"""The requests of issue 9 against a running beacon and worker (real Kafka, real ClickHouse):
each is refused with a 4xx and a reason, its batch-mates are kept, and its dead letter lands."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.conftest import Pipeline, component_env, http, make_event
from tracker.cli.kafka_local import LocalKafka
from tracker.privacy import hash_identifier

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline(kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    data_dir = tmp_path_factory.mktemp("bounds")
    env = component_env(kafka.bootstrap, data_dir, TRACKER_BODY_READ_TIMEOUT_SECONDS="2")
    running = Pipeline(env, data_dir).start()
    yield running
    running.stop()


def send(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def count(pipeline: Pipeline, table: str, event_id: str, expected: str) -> str:
    return pipeline.wait_for(
        f"SELECT count() FROM {table} WHERE event_id = '{event_id}'", expected, timeout=30
    )


OUT_OF_RANGE = {
    "ts year 1 at +14:00": {"ts": "0001-01-01T00:00:00+14:00"},
    "ts year 9999 at -14:00": {"ts": "9999-12-31T23:59:59-14:00"},
    "sent_ts in year 9999": {"sent_ts": "9999-12-31T23:59:59Z"},
    "ts year 1": {"ts": "0001-01-01T00:00:00Z"},
    "ts in 1971": {"ts": "1971-06-01T12:00:00Z"},
    "ts in 1899": {"ts": "1899-12-31T23:59:59Z"},
    "ts in the year 1000": {"ts": "1000-01-01T00:00:00Z"},
}


@pytest.mark.parametrize("fields", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_an_out_of_range_timestamp_is_a_400_and_its_batch_mates_land(
    pipeline: Pipeline, fields: dict[str, str]
) -> None:
    bad, mates = make_event(**fields), [make_event() for _ in range(4)]

    status, body, _ = pipeline.post([bad, *mates])

    assert status == 400 and body["accepted"] == 4
    [rejection] = body["rejected"]
    assert rejection["errors"][0]["field"] in fields and rejection["errors"][0]["reason"]
    for mate in mates:
        assert count(pipeline, "touchpoints", mate["event_id"], "1") == "1"
    assert count(pipeline, "dead_letters", bad["event_id"], "1") == "1"
    assert count(pipeline, "touchpoints", bad["event_id"], "0") == "0"


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_the_pixel_refuses_an_out_of_range_timestamp_with_a_reason(
    pipeline: Pipeline, ts: str
) -> None:
    event_id = str(uuid.uuid4())
    status, body, _ = http(
        "GET", f"{pipeline.beacon_url}/v1/p.gif?event_id={event_id}&ts={ts.replace('+', '%2B')}"
    )
    assert status == 400 and body["rejected"][0]["errors"][0]["field"] == "ts"
    assert count(pipeline, "dead_letters", event_id, "1") == "1"


def test_the_same_event_before_1900_posted_three_times_is_three_400s_and_no_row(
    pipeline: Pipeline,
) -> None:
    event = make_event(ts="1899-06-01T00:00:00Z")
    for _ in range(3):
        status, body, _ = pipeline.post([event])
        assert status == 400 and body["accepted"] == 0
    assert count(pipeline, "dead_letters", event["event_id"], "3") == "3"
    assert count(pipeline, "touchpoints", event["event_id"], "0") == "0"


def test_the_nil_uuid_is_refused_as_an_event_id(pipeline: Pipeline) -> None:
    status, body, _ = pipeline.post([make_event(event_id="00000000-0000-0000-0000-000000000000")])
    assert status == 400
    assert body["rejected"][0]["errors"][0]["field"] == "event_id"
    assert "nil UUID" in body["rejected"][0]["errors"][0]["reason"]


def test_a_thousand_deep_array_is_a_400_with_a_bounded_dead_letter(pipeline: Pipeline) -> None:
    status, body, _ = http("POST", pipeline.beacon_url + "/v1/events", b"[" * 1000 + b"]" * 1000)
    assert status == 400
    assert "nests deeper than 32 levels" in body["rejected"][0]["errors"][0]["reason"]
    assert (
        pipeline.wait_for(
            "SELECT count(), max(length(payload)) < 2000 FROM dead_letters "
            "WHERE reason LIKE '%nests deeper%'",
            "1\t1",
        )
        == "1\t1"
    )


def test_a_zstd_body_that_is_not_zstd_is_a_400_with_a_reason(pipeline: Pipeline) -> None:
    status, body = send(
        pipeline.beacon_url + "/v1/events",
        orjson.dumps([make_event()]),
        {"Content-Encoding": "zstd", "Content-Type": "application/json"},
    )
    assert status == 400 and "zstd" in body["error"]


def test_an_unknown_encoding_is_a_415_with_a_reason(pipeline: Pipeline) -> None:
    status, body = send(
        pipeline.beacon_url + "/v1/events", orjson.dumps([make_event()]), {"Content-Encoding": "xz"}
    )
    assert status == 415 and "is not supported" in body["error"]


def test_a_body_short_of_its_content_length_gets_408_and_the_connection_closes(
    pipeline: Pipeline,
) -> None:
    port = int(pipeline.env["TRACKER_BEACON_PORT"])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"POST /v1/events HTTP/1.1\r\nHost: beacon\r\nContent-Length: 1000\r\n\r\n[{")
        answer = b""
        while chunk := conn.recv(65536):  # ends when the beacon closes the connection
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert "did not arrive" in orjson.loads(body)["error"]


def test_an_email_in_a_refused_event_is_never_in_clear_in_dead_letters(
    pipeline: Pipeline,
) -> None:
    bad = make_event(
        ts="1971-01-01T00:00:00Z",
        email="Grace.Hopper@Example.com",
        properties={"note": "ask grace.hopper@example.com"},
    )
    status, _, _ = pipeline.post([bad])
    assert status == 400
    assert count(pipeline, "dead_letters", bad["event_id"], "1") == "1"
    row = pipeline.query(f"SELECT * FROM dead_letters WHERE event_id = '{bad['event_id']}'")
    assert "hopper" not in row.lower()
    assert hash_identifier("email", "grace.hopper@example.com", "test-salt") in row
