"""One customer across channels, as `tracker journey` shows them: an email click (SendGrid,
signed as SendGrid signs), web visits (the beacon) and a call (Twilio, signed with Twilio's SDK)
whose transcript flags a topic. Each through its own collector, real Kafka, the worker and
ClickHouse (chDB). Helpdesk and chat touchpoints join this journey the same way, by the
customer's email or phone."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.calls import call_event_id
from collectors.email.records import email_event_id
from tests.conftest import Pipeline, component_env, make_event
from tests.integration.test_call_transcripts import PUBLIC, TWILIO_TOKEN, call_status, twilio
from tests.integration.test_calls import post
from tests.unit.test_email_webhooks import SENDGRID_PUBLIC, sendgrid_headers
from tracker.cli.kafka_local import LocalKafka

pytestmark = pytest.mark.integration


@pytest.fixture
def every_channel(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    env = component_env(
        kafka.bootstrap,
        tmp_path,
        TRACKER_SENDGRID_WEBHOOK_PUBLIC_KEY=SENDGRID_PUBLIC,
        TRACKER_CALLS_PUBLIC_URL=PUBLIC,
        TRACKER_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        TRACKER_CALL_TRANSCRIPTS="topics",
    )
    running = Pipeline(env, tmp_path).start()
    running.components += [running.email().start(), running.calls().start()]
    yield running
    running.stop()


def rfc3339(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def journey(pipeline: Pipeline, identifier: str) -> dict[str, Any]:
    """``tracker journey`` as JSON; a journey with no events while nothing carrying
    ``identifier`` is stitched yet (the worker may still be starting)."""
    done = subprocess.run(
        [sys.executable, "-m", "tracker", "journey", identifier, "--format", "json"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 and "no customer is known" in done.stderr:
        return {"timeline": []}
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = orjson.loads(done.stdout)
    return answer


def test_one_customer_from_an_email_click_to_a_call_that_flags_cancel(
    every_channel: Pipeline,
) -> None:
    p = every_channel
    run = uuid.uuid4().hex[:8]
    email, phone = f"ada-{run}@example.com", "+14155550177"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)

    # The newsletter's link is clicked (SendGrid), then the web: the visitor signs in with her
    # email and phone, and looks at the cancellation page.
    click = {
        "email": email,
        "timestamp": int(start.timestamp()),
        "event": "click",
        "sg_event_id": f"{run}-click",
        "sg_message_id": f"msg-{run}.filter0001",
        "category": ["newsletter"],
        "url": "https://shop.example.com/account?utm_source=newsletter&utm_campaign=winter",
    }
    body = orjson.dumps([click])
    assert post(f"{p.email_url}/v1/email/sendgrid", body, sendgrid_headers(body)) == (
        200,
        {"accepted": 1},
    )
    anon = f"anon-{run}"
    visit = [
        make_event(
            type="identify",
            anonymous_id=anon,
            email=email,
            phone=phone,
            ts=rfc3339(start + timedelta(minutes=1)),
            page={"url": "https://shop.example.com/account"},
        ),
        make_event(
            anonymous_id=anon,
            ts=rfc3339(start + timedelta(minutes=2)),
            page={"url": "https://shop.example.com/account/cancel"},
        ),
    ]
    assert p.post(visit)[0] == 200

    # She calls an hour later; Twilio transcribes the call after it ends.
    sid = "CA" + uuid.uuid4().hex
    called = start + timedelta(hours=1)
    for status, at, extra in (
        ("in-progress", called, {}),
        ("completed", called + timedelta(minutes=4), {"CallDuration": "240"}),
    ):
        params = call_status(sid, status, 0, **extra)
        params |= {"From": phone, "Timestamp": format_datetime(at), "SequenceNumber": status}
        assert twilio(p, params) == (200, {"accepted": 1})
    transcript = {
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "CallSid": sid,
        "From": phone,
        "TranscriptionSid": "TR" + uuid.uuid4().hex,
        "TranscriptionStatus": "completed",
        "TranscriptionText": "Hello, I'd like to cancel my subscription please.",
    }
    assert twilio(p, transcript) == (200, {"accepted": 1})

    expected = [
        (email_event_id("sendgrid", f"{run}-click"), "email"),
        (visit[0]["event_id"], "web"),
        (visit[1]["event_id"], "web"),
        (call_event_id("twilio", sid), "phone"),
    ]
    answer: dict[str, Any] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        answer = journey(p, f"email:{email}")
        shown = [(e["event_id"], e["channel"]) for e in answer["timeline"]]
        call_frictions = {
            (f["reason"], f["detail"])
            for e in answer["timeline"]
            if e["channel"] == "phone"
            for f in e["frictions"]
        }
        if shown == expected and ("negative_call_topic", "cancel") in call_frictions:
            break
        time.sleep(1)
    assert [(e["event_id"], e["channel"]) for e in answer["timeline"]] == expected
    [call] = [e for e in answer["timeline"] if e["channel"] == "phone"]
    assert ("negative_call_topic", "cancel") in {
        (f["reason"], f["detail"]) for f in call["frictions"]
    }
    # Asked by her phone instead, it is the same journey.
    assert [e["event_id"] for e in journey(p, phone)["timeline"]] == [e for e, _ in expected]
