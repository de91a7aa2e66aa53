"""Email webhooks end to end: signed provider events through the email collector, real Kafka, the
Faust worker's identity and journey stages, into ClickHouse (chDB)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from collectors.email.records import email_event_id
from tests.conftest import Pipeline, component_env, make_event
from tests.integration.test_calls import post
from tests.unit.test_email_webhooks import (
    MAILGUN_KEY,
    SENDGRID_PUBLIC,
    mailgun_body,
    sendgrid_headers,
)
from tracker.cli.kafka_local import LocalKafka
from tracker.privacy import hash_identifier

pytestmark = pytest.mark.integration

# Whose touchpoint is whose now: touchpoints keep the customer they were stitched with, and
# identities say which customer that one has become.
CURRENT = (
    "SELECT t.event_id AS event_id, t.type AS type, t.channel AS channel, "
    "t.email_hash AS email_hash, t.campaign_name AS campaign_name, "
    "if(i.customer_id = '', t.customer_id, i.customer_id) AS c "
    "FROM touchpoints AS t FINAL LEFT JOIN ("
    "  SELECT own_customer_id, argMax(customer_id, version) AS customer_id "
    "  FROM identities GROUP BY own_customer_id"
    ") AS i ON t.customer_id = i.own_customer_id"
)


@pytest.fixture
def email_pipeline(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    env = component_env(
        kafka.bootstrap,
        tmp_path,
        TRACKER_SENDGRID_WEBHOOK_PUBLIC_KEY=SENDGRID_PUBLIC,
        TRACKER_MAILGUN_WEBHOOK_SIGNING_KEY=MAILGUN_KEY,
    )
    running = Pipeline(env, tmp_path).start()
    running.components.append(running.email().start())
    yield running
    running.stop()


def stamp(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_provider_events_land_on_the_email_channel_and_join_the_web_customer(
    email_pipeline: Pipeline,
) -> None:
    p = email_pipeline
    email = f"Ada-{uuid.uuid4().hex[:8]}@Example.com"
    hashed = hash_identifier("email", email.lower(), "test-salt")
    sent_at = int(time.time()) - 600
    run = uuid.uuid4().hex[:8]

    # The web: a visitor identifies with the address the newsletter goes to.
    anon = f"anon-{run}"
    identify = make_event(
        type="identify",
        anonymous_id=anon,
        email=email,
        ts=stamp(datetime.fromtimestamp(sent_at - 3600, UTC)),
    )
    assert p.post([identify])[0] == 200

    # SendGrid: one batch about the newsletter, signed as SendGrid signs.
    def sendgrid(event: str, n: int, **fields: Any) -> dict[str, Any]:
        return {
            "email": email,
            "timestamp": sent_at + n,
            "event": event,
            "sg_event_id": f"{run}-{n}",
            "sg_message_id": f"msg-{run}.filter0001",
            "category": ["newsletter"],
            **fields,
        }

    batch = orjson.dumps(
        [
            sendgrid("delivered", 1),
            sendgrid("open", 2, useragent="Mozilla/5.0"),  # Apple's privacy proxy
            sendgrid(
                "click",
                3,
                url="https://shop.example.com/autumn?utm_source=newsletter&utm_campaign=autumn",
            ),
            sendgrid("bounce", 4, type="bounce", reason="550 mailbox full"),
        ]
    )
    url = f"{p.email_url}/v1/email/sendgrid"
    assert post(url, batch, sendgrid_headers(batch)) == (200, {"accepted": 4})

    # Mailgun: a complaint about the same address, signed with the webhook signing key.
    mailgun_event = {
        "id": f"mg-{run}",
        "event": "complained",
        "timestamp": sent_at + 5,
        "recipient": email,
        "tags": ["newsletter"],
        "message": {"headers": {"message-id": f"mg-msg-{run}@mg.example.com"}},
    }
    status, _ = post(
        f"{p.email_url}/v1/email/mailgun",
        mailgun_body(mailgun_event),
        {"Content-Type": "application/json"},
    )
    assert status == 200

    ids = {
        "click": email_event_id("sendgrid", f"{run}-3"),
        "bounce": email_event_id("sendgrid", f"{run}-4"),
        "complaint": email_event_id("mailgun", f"mg-{run}"),
    }
    where = f"email_hash = '{hashed}' AND source = 'email_webhook'"
    expected = (
        "email_bounce\temail\tnewsletter\n"
        "email_click\temail\tautumn\n"
        "email_delivered\temail\tnewsletter\n"
        "email_proxy_open\temail\tnewsletter\n"
        "email_spam_report\temail\tnewsletter"
    )
    landed = p.wait_for(
        f"SELECT type, channel, campaign_name FROM touchpoints FINAL WHERE {where} ORDER BY type",
        expected,
        timeout=60,
    )
    assert landed == expected

    # The click, the complaint and the web identify are one customer.
    customers = p.wait_for(
        f"SELECT uniqExact(c), count() FROM ({CURRENT}) "
        f"WHERE event_id IN ('{identify['event_id']}', '{ids['click']}', '{ids['complaint']}')",
        "1\t3",
        timeout=60,
    )
    assert customers == "1\t3"

    # The bounce and the complaint are frictions.
    frictions = p.wait_for(
        "SELECT reason FROM frictions FINAL WHERE NOT retracted AND event_id IN "
        f"('{ids['bounce']}', '{ids['complaint']}') ORDER BY reason",
        "email_bounce\nemail_spam_report",
        timeout=60,
    )
    assert frictions == "email_bounce\nemail_spam_report"

    # SendGrid retries the batch (freshly signed) and Mailgun its event: nothing is stored twice.
    assert post(url, batch, sendgrid_headers(batch)) == (200, {"accepted": 4})
    status, _ = post(
        f"{p.email_url}/v1/email/mailgun",
        mailgun_body(mailgun_event),
        {"Content-Type": "application/json"},
    )
    assert status == 200
    p.wait_until_handled()
    stored = p.query(f"SELECT count(), uniqExact(event_id) FROM touchpoints WHERE {where}").strip()
    assert stored == "5\t5"

    # The address is stored only as its hash.
    everything = p.query("SELECT * FROM touchpoints FORMAT TSV") + p.query(
        "SELECT * FROM dead_letters FORMAT TSV"
    )
    assert email.lower() not in everything.lower()


def test_forged_and_malformed_email_webhooks(email_pipeline: Pipeline) -> None:
    p = email_pipeline
    run = uuid.uuid4().hex[:8]
    event = {
        "email": "bob@example.com",
        "timestamp": int(time.time()),
        "event": "delivered",
        "sg_event_id": f"forged-{run}",
    }
    body = orjson.dumps([event])
    headers = sendgrid_headers(body)
    forged = body.replace(b"delivered", b"bounce")
    status, answer = post(f"{p.email_url}/v1/email/sendgrid", forged, headers)
    assert status == 401
    assert answer["error"] == "X-Twilio-Email-Event-Webhook-Signature does not match this request"

    bad = orjson.dumps([{**event, "sg_event_id": f"bad-{run}", "timestamp": "soon"}])
    status, answer = post(f"{p.email_url}/v1/email/sendgrid", bad, sendgrid_headers(bad))
    assert status == 400
    assert answer["errors"][0]["field"] == "[0].timestamp"
    reason = p.wait_for(
        f"SELECT reason FROM dead_letters WHERE source = 'email' AND payload LIKE '%bad-{run}%'",
        "[0].timestamp: is not a unix time: \\'soon\\'",
        timeout=60,
    )
    assert reason == "[0].timestamp: is not a unix time: \\'soon\\'"
    p.wait_until_handled()
    forged_id = email_event_id("sendgrid", f"forged-{run}")
    assert p.query(f"SELECT count() FROM touchpoints WHERE event_id = '{forged_id}'").strip() == "0"
    everything = p.query("SELECT * FROM dead_letters FORMAT TSV")
    assert "bob@example.com" not in everything and "<redacted>" in everything
