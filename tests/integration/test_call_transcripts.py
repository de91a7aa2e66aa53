"""Call transcripts end to end: Twilio callbacks and transcriptions signed with Twilio's SDK,
through the calls collector, real Kafka and the worker, into ClickHouse (chDB), onto the
customer's journey and into the scorecard."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from twilio.request_validator import RequestValidator

from agents.calls import call_event_id
from tests.conftest import Pipeline, component_env, http
from tracker.cli.kafka_local import LocalKafka

pytestmark = pytest.mark.integration

PUBLIC = "https://calls.example.com"
TWILIO_TOKEN = "a1c1d2e4a5b6978877665544332211ff"
CUSTOMER, TRACKING = "+14155550132", "+18005550100"
SAID = "Hi. I want to cancel my contract, my number is 415 555 0199."


@pytest.fixture
def transcripts_pipeline(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    env = component_env(
        kafka.bootstrap,
        tmp_path,
        TRACKER_CALLS_PUBLIC_URL=PUBLIC,
        TRACKER_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        TRACKER_CALL_TRANSCRIPTS="topics",
    )
    running = Pipeline(env, tmp_path)
    running.components = [running.worker().start(), running.calls().start()]
    yield running
    running.stop()


def twilio(pipeline: Pipeline, params: dict[str, str]) -> tuple[int, Any]:
    """POST form params to the calls collector, signed as Twilio signs them."""
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        f"{PUBLIC}/v1/calls/twilio", params
    )
    status, body, _ = http_form(
        f"{pipeline.calls_url}/v1/calls/twilio", urlencode(params).encode(), signature
    )
    return status, body


def http_form(url: str, body: bytes, signature: str) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "X-Twilio-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, orjson.loads(exc.read()), dict(exc.headers)


def call_status(sid: str, status: str, minute: int, **fields: str) -> dict[str, str]:
    return {
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "ApiVersion": "2010-04-01",
        "CallSid": sid,
        "CallStatus": status,
        "Direction": "inbound",
        "From": CUSTOMER,
        "To": TRACKING,
        "SequenceNumber": str(minute),
        "Timestamp": f"Sun, 22 Nov 2026 10:{minute:02d}:00 +0000",
        **fields,
    }


def transcription(sid: str) -> dict[str, str]:
    return {
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "ApiVersion": "2010-04-01",
        "CallSid": sid,
        "CallStatus": "completed",
        "From": CUSTOMER,
        "To": TRACKING,
        "RecordingSid": "RE" + uuid.uuid4().hex,
        "TranscriptionSid": "TR" + uuid.uuid4().hex,
        "TranscriptionStatus": "completed",
        "TranscriptionText": SAID,
    }


def tracker(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_transcript_saying_cancel_flags_the_call_raises_a_friction_and_keeps_no_text(
    transcripts_pipeline: Pipeline,
) -> None:
    early, late = "CA" + uuid.uuid4().hex, "CA" + uuid.uuid4().hex
    # One call's transcript arrives before the call has ended, the other's after.
    sent = [
        call_status(early, "in-progress", 0),
        transcription(early),
        call_status(early, "completed", 3, CallDuration="180"),
        call_status(late, "in-progress", 40),
        call_status(late, "completed", 42, CallDuration="120"),
        transcription(late),
    ]
    for params in sent:
        status, body = twilio(transcripts_pipeline, params)
        assert (status, body) == (200, {"accepted": 1})

    for sid in (early, late):
        row = transcripts_pipeline.wait_for(
            "SELECT status, disposition, topics, transcribed, transcript = '' "
            f"FROM calls FINAL WHERE call_id = '{sid}'",
            "completed\tanswered\t['cancel']\ttrue\t1",
            timeout=60,
        )
        assert row == "completed\tanswered\t['cancel']\ttrue\t1"
        friction = transcripts_pipeline.wait_for(
            "SELECT reason, detail, channel, type FROM frictions FINAL "
            f"WHERE event_id = '{call_event_id('twilio', sid)}' AND reason = 'negative_call_topic' "
            "AND NOT retracted",
            "negative_call_topic\tcancel\tphone\tcall",
            timeout=60,
        )
        assert friction == "negative_call_topic\tcancel\tphone\tcall"

    # The customer's journey shows the flag on each call.
    done = tracker(transcripts_pipeline, "journey", CUSTOMER, "--format", "json")
    assert done.returncode == 0, done.stderr
    timeline = orjson.loads(done.stdout)["timeline"]
    flagged = {
        e["event_id"]
        for e in timeline
        for f in e["frictions"]
        if (f["reason"], f["detail"]) == ("negative_call_topic", "cancel")
    }
    assert flagged == {call_event_id("twilio", early), call_event_id("twilio", late)}

    # The scorecard counts frictions per event: two cancel flags, and the second call repeats
    # the first within a day (repeat_contact).
    query = urllib.parse.urlencode({"from": "2026-11-22", "to": "2026-11-23", "by": "channel"})
    status, body, _ = http(
        "GET", f"{transcripts_pipeline.console_url}/api/reports/scorecard?{query}"
    )
    assert status == 200, body
    phone = next(orjson.loads(line) for line in str(body).splitlines() if '"phone"' in line)
    assert (phone["events"], phone["friction_rate"]) == (2, 1.5)

    # TRACKER_CALL_TRANSCRIPTS=topics: what was said is nowhere, not even its redacted form.
    for table in ("calls", "touchpoints", "frictions", "dead_letters"):
        stored = transcripts_pipeline.query(f"SELECT * FROM {table} FORMAT TSV")
        assert "want to" not in stored and "contract" not in stored, table
        assert "555 0199" not in stored and "5550199" not in stored, table


@pytest.fixture
def storing_pipeline(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    env = component_env(
        kafka.bootstrap,
        tmp_path,
        TRACKER_CALLS_PUBLIC_URL=PUBLIC,
        TRACKER_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        TRACKER_CALL_TRANSCRIPTS="store",
        TRACKER_CALL_TOPICS=orjson.dumps(
            {"refund": ["refund", "Rückerstattung"], "cancel": ["cancel"]}
        ).decode(),
    )
    running = Pipeline(env, tmp_path)
    running.components = [running.worker().start(), running.calls().start()]
    yield running
    running.stop()


def test_a_stored_transcript_is_redacted_and_erased_by_forget(storing_pipeline: Pipeline) -> None:
    sid = "CA" + uuid.uuid4().hex
    said = "Ich möchte eine RÜCKERSTATTUNG, schreiben Sie an ada@example.com oder 0151 2345 6789"
    for params in (
        call_status(sid, "in-progress", 0),
        call_status(sid, "completed", 3, CallDuration="180"),
        {**transcription(sid), "TranscriptionText": said},
    ):
        assert twilio(storing_pipeline, params) == (200, {"accepted": 1})

    expected = (
        "['refund']\tIch möchte eine RÜCKERSTATTUNG, schreiben Sie an <redacted email> "
        "oder <redacted number>"
    )
    row = storing_pipeline.wait_for(
        f"SELECT topics, transcript FROM calls FINAL WHERE call_id = '{sid}'", expected, timeout=60
    )
    assert row == expected

    status, answer, _ = http(
        "POST",
        storing_pipeline.console_url + "/api/forget",
        orjson.dumps({"identifier": f"phone:{CUSTOMER}"}),
    )
    assert status == 200, answer
    assert storing_pipeline.query("SELECT count() FROM calls").strip() == "0"

    # A transcript of the forgotten caller's call arriving later is not stored either.
    late = {**transcription(sid), "TranscriptionText": "I want to cancel"}
    assert twilio(storing_pipeline, late) == (200, {"accepted": 1})
    storing_pipeline.wait_until_handled()
    assert storing_pipeline.query("SELECT count() FROM calls").strip() == "0"
    for table in ("calls", "touchpoints", "frictions", "dead_letters"):
        stored = storing_pipeline.query(f"SELECT * FROM {table} FORMAT TSV")
        assert "RÜCKERSTATTUNG" not in stored and "cancel" not in stored, table
