"""Call webhooks end to end: signed callbacks through the calls collector, real Kafka, the Faust
worker and its call table, into ClickHouse (chDB)."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from standardwebhooks import Webhook
from twilio.request_validator import RequestValidator

from agents.calls import call_event_id
from tests.conftest import Pipeline, component_env
from tracker.cli.kafka_local import LocalKafka, free_port

pytestmark = pytest.mark.integration

PUBLIC = "https://calls.example.com"
TWILIO_TOKEN = "f3c1d2e4a5b6978877665544332211aa"
GENERIC_SECRET = "whsec_" + base64.b64encode(b"integration-secret-for-generic!!").decode()
CUSTOMER, TRACKING = "+14155550132", "+18005550100"


@pytest.fixture
def calls_pipeline(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    env = component_env(
        kafka.bootstrap,
        tmp_path,
        TRACKER_CALLS_PUBLIC_URL=PUBLIC,
        TRACKER_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        TRACKER_GENERIC_WEBHOOK_SECRET=GENERIC_SECRET,
        TRACKER_CALL_TRACKING_NUMBERS=orjson.dumps(
            {TRACKING: {"source": "billboard", "medium": "offline", "name": "autumn"}}
        ).decode(),
    )
    running = Pipeline(env, tmp_path)
    running.components = [running.worker().start(), running.calls().start()]
    yield running
    running.stop()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, orjson.loads(exc.read())


def twilio_callback(pipeline: Pipeline, call_sid: str, status: str, **fields: str) -> int:
    params = {
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "CallSid": call_sid,
        "CallStatus": status,
        "Direction": "inbound",
        "From": CUSTOMER,
        "To": TRACKING,
        "ApiVersion": "2010-04-01",
        **fields,
    }
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        f"{PUBLIC}/v1/calls/twilio", params
    )
    status_code, _ = post(
        f"{pipeline.calls_url}/v1/calls/twilio",
        urlencode(params).encode(),
        {
            "X-Twilio-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    return status_code


def generic_callback(pipeline: Pipeline, msg_id: str, call: dict[str, Any]) -> int:
    body = orjson.dumps(call)
    now = datetime.now(UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(GENERIC_SECRET).sign(msg_id, now, body.decode()),
        "Content-Type": "application/json",
    }
    status, _ = post(f"{pipeline.calls_url}/v1/calls/generic", body, headers)
    return status


def test_callbacks_out_of_order_and_retried_converge_to_one_call_record(
    calls_pipeline: Pipeline,
) -> None:
    sid = "CA" + uuid.uuid4().hex
    stamp = "Sun, 22 Nov 2026 10:{:02d}:00 +0000"
    callbacks = [  # as Twilio sent them; they arrive in another order, one of them twice
        ("initiated", {"SequenceNumber": "0", "Timestamp": stamp.format(0)}),
        ("ringing", {"SequenceNumber": "1", "Timestamp": stamp.format(0)}),
        ("in-progress", {"SequenceNumber": "2", "Timestamp": stamp.format(1)}),
        ("completed", {"SequenceNumber": "3", "Timestamp": stamp.format(4), "CallDuration": "180"}),
    ]
    for index in (3, 1, 3, 0, 2):
        status, fields = callbacks[index]
        assert twilio_callback(calls_pipeline, sid, status, **fields) == 200

    event_id = call_event_id("twilio", sid)
    expected = "4\tcompleted\tanswered\tinbound\t60\t180\tbillboard\t" + TRACKING
    row = calls_pipeline.wait_for(
        "SELECT version, status, disposition, direction, ring_seconds, talk_seconds, "
        f"campaign_source, tracking_number FROM calls FINAL WHERE call_id = '{sid}'",
        expected,
        timeout=60,
    )
    assert row == expected
    touchpoint = calls_pipeline.wait_for(
        "SELECT count(), any(type), any(channel), any(source), any(campaign_name), any(version) "
        f"FROM touchpoints FINAL WHERE event_id = '{event_id}'",
        "1\tcall\tphone\tcall_webhook\tautumn\t4",
    )
    assert touchpoint == "1\tcall\tphone\tcall_webhook\tautumn\t4"
    # Versions written along the way are distinct; the retry wrote none of its own.
    versions = calls_pipeline.query(
        f"SELECT count(), uniqExact(version) FROM calls WHERE call_id = '{sid}'"
    ).strip()
    count, distinct = versions.split("\t")
    assert count == distinct
    everything = calls_pipeline.query("SELECT * FROM calls FORMAT TSV")
    assert CUSTOMER not in everything and CUSTOMER[2:] not in everything


def test_a_restarted_worker_remembers_the_calls_it_was_merging(
    calls_pipeline: Pipeline,
) -> None:
    call = {"call_id": "call-" + uuid.uuid4().hex, "direction": "inbound", "from": CUSTOMER}
    assert (
        generic_callback(
            calls_pipeline, "m1", {**call, "status": "ringing", "timestamp": "2026-11-22T10:00:00Z"}
        )
        == 200
    )
    assert (
        generic_callback(
            calls_pipeline,
            "m2",
            {**call, "status": "answered", "timestamp": "2026-11-22T10:00:12Z", "agent": "agent-7"},
        )
        == 200
    )
    where = f"FROM calls FINAL WHERE call_id = '{call['call_id']}'"
    assert calls_pipeline.wait_for(f"SELECT version {where}", "2", timeout=60) == "2"

    worker = calls_pipeline.components[0]
    worker.stop()
    calls_pipeline.components[0] = calls_pipeline.worker().start()

    assert (
        generic_callback(
            calls_pipeline,
            "m3",
            {
                **call,
                "status": "completed",
                "timestamp": "2026-11-22T10:05:12Z",
                "hangup_by": "caller",
            },
        )
        == 200
    )
    merged = calls_pipeline.wait_for(
        f"SELECT version, disposition, agent, hangup_by, talk_seconds {where}",
        "3\tanswered\tagent-7\tcaller\t300",
        timeout=60,
    )
    assert merged == "3\tanswered\tagent-7\tcaller\t300"


def test_forged_and_malformed_callbacks(calls_pipeline: Pipeline) -> None:
    sid, before, after = ("CA" + uuid.uuid4().hex for _ in range(3))
    assert twilio_callback(calls_pipeline, before, "ringing") == 200
    forged_status, forged = post(
        f"{calls_pipeline.calls_url}/v1/calls/twilio",
        urlencode({"CallSid": sid, "CallStatus": "completed"}).encode(),
        {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
    )
    assert forged_status == 401
    assert forged["error"] == "X-Twilio-Signature does not match this request"

    assert twilio_callback(calls_pipeline, sid, "teleported") == 400
    reason = calls_pipeline.wait_for(
        f"SELECT reason FROM dead_letters WHERE source = 'calls' AND payload LIKE '%{sid}%'",
        r"CallStatus: is not a Twilio call status: \'teleported\'",  # quotes escaped in TSV
        timeout=60,
    )
    assert reason == r"CallStatus: is not a Twilio call status: \'teleported\'"
    assert twilio_callback(calls_pipeline, after, "ringing") == 200

    # Everything sent before and after the forgery has gone through every stage, on any
    # partition: the good calls are stored, and the forged one is nowhere.
    calls_pipeline.wait_until_handled()
    stored = calls_pipeline.query("SELECT call_id FROM calls").split()
    assert before in stored and after in stored and sid not in stored
    forged_id = call_event_id("twilio", sid)
    assert (
        calls_pipeline.query(
            f"SELECT count() FROM touchpoints WHERE event_id = '{forged_id}'"
        ).strip()
        == "0"
    )
    letters = f"SELECT count() FROM dead_letters WHERE payload LIKE '%{sid}%'"
    assert calls_pipeline.query(letters).strip() == "1"  # the malformed one's, not the forgery's


def test_without_kafka_the_collector_answers_503_with_retry_after(tmp_path: Path) -> None:
    env = component_env(
        f"127.0.0.1:{free_port()}",  # nothing listens there
        tmp_path,
        TRACKER_GENERIC_WEBHOOK_SECRET=GENERIC_SECRET,
    )
    alone = Pipeline(env, tmp_path)
    collector = alone.calls()
    collector.ready_url = f"{alone.calls_url}/healthz"  # it is alive, but cannot be ready
    collector.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"{alone.calls_url}/readyz", timeout=5)
        with not_ready.value:
            assert not_ready.value.code == 503

        body = orjson.dumps(
            {"call_id": "c1", "status": "ringing", "timestamp": "2026-11-22T10:00:00Z"}
        )
        now = datetime.now(UTC)
        status, answer = post(
            f"{alone.calls_url}/v1/calls/generic",
            body,
            {
                "webhook-id": "m1",
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": Webhook(GENERIC_SECRET).sign("m1", now, body.decode()),
            },
        )
        assert status == 503 and "Kafka" in answer["error"]
        assert answer["retry_after"] == int(env["TRACKER_RETRY_AFTER_SECONDS"])
    finally:
        collector.stop()
