"""Helpdesk and chat webhooks end to end: signed Zendesk, Intercom and Standard Webhooks callbacks
through the helpdesk collector, real Kafka, the worker's tickets, identity and journey stages,
into ClickHouse (chDB). And one customer's journey across every channel."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.tickets import csat_event_id, ticket_event_id
from tests.conftest import Pipeline, component_env, make_event
from tests.integration.test_calls import GENERIC_SECRET as CALLS_SECRET
from tests.integration.test_calls import generic_callback, post
from tests.unit.test_email_webhooks import SENDGRID_PUBLIC, sendgrid_headers
from tests.unit.test_helpdesk_webhooks import (
    GENERIC_SECRET,
    INTERCOM_SECRET,
    ZENDESK_SECRET,
    generic_headers,
    intercom_headers,
    zendesk_headers,
)
from tracker.cli.kafka_local import LocalKafka

pytestmark = pytest.mark.integration

# Whose touchpoint is whose now: touchpoints keep the customer they were stitched with, and
# identities say which customer that one has become.
CURRENT = (
    "SELECT t.event_id AS event_id, t.type AS type, t.channel AS channel, t.ts AS ts, "
    "if(i.customer_id = '', t.customer_id, i.customer_id) AS c "
    "FROM touchpoints AS t FINAL LEFT JOIN ("
    "  SELECT own_customer_id, argMax(customer_id, version) AS customer_id "
    "  FROM identities GROUP BY own_customer_id"
    ") AS i ON t.customer_id = i.own_customer_id"
)


@pytest.fixture
def support_pipeline(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    env = component_env(
        kafka.bootstrap,
        tmp_path,
        TRACKER_ZENDESK_WEBHOOK_SECRET=ZENDESK_SECRET,
        TRACKER_INTERCOM_CLIENT_SECRET=INTERCOM_SECRET,
        TRACKER_HELPDESK_WEBHOOK_SECRET=GENERIC_SECRET,
        TRACKER_SENDGRID_WEBHOOK_PUBLIC_KEY=SENDGRID_PUBLIC,
        TRACKER_GENERIC_WEBHOOK_SECRET=CALLS_SECRET,
        TRACKER_CALL_TRANSCRIPTS="topics",
    )
    running = Pipeline(env, tmp_path).start()
    running.components.append(running.helpdesk().start())
    yield running
    running.stop()


def stamp(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def zendesk(p: Pipeline, **fields: Any) -> tuple[int, Any]:
    body = orjson.dumps(fields)
    return post(f"{p.helpdesk_url}/v1/helpdesk/zendesk", body, zendesk_headers(body))


def intercom(p: Pipeline, topic: str, ts: datetime, email: str, **item: Any) -> tuple[int, Any]:
    body = orjson.dumps(
        {
            "type": "notification_event",
            "id": f"notif_{uuid.uuid4().hex}",
            "topic": topic,
            "created_at": int(ts.timestamp()),
            "data": {
                "item": {
                    "type": "conversation",
                    "source": {"author": {"type": "user", "email": email}},
                    **item,
                }
            },
        }
    )
    return post(f"{p.helpdesk_url}/v1/helpdesk/intercom", body, intercom_headers(body))


def ticket_lifecycle(
    ticket_id: str, email: str, phone: str, opened: datetime
) -> list[dict[str, Any]]:
    """A Zendesk ticket answered after 3 hours, solved, reopened by the requester's reply, solved
    again after 30 hours, and rated bad: the bodies of the triggers docs/helpdesk.md describes."""

    def body(event: str, hours: float, status: str, **more: str) -> dict[str, Any]:
        return {
            "ticket_id": ticket_id,
            "event": event,
            "status": status,
            "requester_email": email,
            "requester_phone": phone,
            "created_at": stamp(opened),
            "updated_at": stamp(opened + timedelta(hours=hours)),
            "via": "Mail",
            "group": "Billing",
            "priority": "Normal",
            "satisfaction": "Unoffered",
            **more,
        }

    return [
        body("opened", 0, "New"),
        body("replied", 3, "Open", assignee="agent-7"),
        body("solved", 5, "Solved"),
        body("customer_replied", 20, "Open"),
        body("solved", 30, "Solved"),
        body("rated", 30.5, "Solved", satisfaction="Bad, I'm unsatisfied"),
    ]


def test_a_ticket_s_callbacks_converge_to_one_stitched_record_with_frictions_and_csat(
    support_pipeline: Pipeline,
) -> None:
    p = support_pipeline
    run = uuid.uuid4().hex[:8]
    email, phone = f"ada-{run}@example.com", "+14155550199"
    opened = (datetime.now(UTC) - timedelta(days=3)).replace(microsecond=0)
    anon = f"anon-{run}"
    identify = make_event(
        type="identify", anonymous_id=anon, email=email, ts=stamp(opened - timedelta(hours=1))
    )
    assert p.post([identify])[0] == 200

    ticket_id = f"zd-{run}"
    callbacks = ticket_lifecycle(ticket_id, email, phone, opened)
    for fields in callbacks:
        assert zendesk(p, **fields) == (200, {"accepted": 1})
    ticket = ticket_event_id("zendesk", ticket_id)

    record = p.wait_for(
        "SELECT version, status, reopens, first_reply_seconds, resolution_seconds, rating "
        f"FROM tickets FINAL WHERE ticket_id = '{ticket_id}'",
        "6\tsolved\t1\t10800\t108000\t1",
        timeout=60,
    )
    assert record == "6\tsolved\t1\t10800\t108000\t1"

    # The ticket, its CSAT answer and the web visit are one customer.
    csat = csat_event_id("zendesk", ticket_id)
    customers = p.wait_for(
        f"SELECT uniqExact(c), count() FROM ({CURRENT}) "
        f"WHERE event_id IN ('{identify['event_id']}', '{ticket}', '{csat}')",
        "1\t3",
        timeout=60,
    )
    assert customers == "1\t3"
    answer = p.query(
        "SELECT type, channel, survey_kind, survey_score, survey_touchpoint_id "
        f"FROM touchpoints FINAL WHERE event_id = '{csat}'"
    ).strip()
    assert answer == f"survey_response\thelpdesk\tcsat\t1\t{ticket}"

    # The slow first reply, the slow resolution, the reopen and the bad rating are frictions.
    frictions = p.wait_for(
        "SELECT arraySort(groupArray(reason)) FROM frictions FINAL WHERE NOT retracted "
        f"AND event_id IN ('{ticket}', '{csat}')",
        "['low_csat','reopened','slow_first_reply','slow_resolution']",
        timeout=60,
    )
    assert frictions == "['low_csat','reopened','slow_first_reply','slow_resolution']"

    # Zendesk retries every callback (signed anew): nothing changes.
    for fields in callbacks:
        assert zendesk(p, **fields) == (200, {"accepted": 1})
    p.wait_until_handled()
    versions = p.query(
        f"SELECT count() = uniqExact(version), max(version) FROM tickets "
        f"WHERE ticket_id = '{ticket_id}'"
    ).strip()
    assert versions == "1\t6"
    assert (
        p.query(f"SELECT max(version) FROM touchpoints WHERE event_id = '{ticket}'").strip() == "6"
    )

    # The requester is stored only as hashes.
    everything = p.query("SELECT * FROM tickets FORMAT TSV") + p.query(
        "SELECT * FROM touchpoints FORMAT TSV"
    )
    assert email not in everything and phone[2:] not in everything


def test_forged_and_unreadable_callbacks(support_pipeline: Pipeline) -> None:
    p = support_pipeline
    run = f"t{uuid.uuid4().hex[:8]}"  # never a run of digits, which dead letters redact
    body = orjson.dumps(
        {"type": "ticket.opened", "timestamp": stamp(datetime.now(UTC)), "data": {"id": run}}
    )
    headers = generic_headers(body, f"msg-{run}")
    status, answer = post(
        f"{p.helpdesk_url}/v1/helpdesk/generic", body.replace(run.encode(), b"other"), headers
    )
    assert status == 401, answer

    bad = orjson.dumps(
        {"type": "ticket.escalated", "timestamp": stamp(datetime.now(UTC)), "data": {"id": run}}
    )
    status, answer = post(
        f"{p.helpdesk_url}/v1/helpdesk/generic", bad, generic_headers(bad, f"bad-{run}")
    )
    assert status == 400 and answer["errors"][0]["field"] == "type"
    reason = p.wait_for(
        f"SELECT source, stage FROM dead_letters WHERE position(payload, '{run}') > 0",
        "helpdesk\tcollect",
        timeout=60,
    )
    assert reason == "helpdesk\tcollect"
    assert (
        p.query(f"SELECT count() FROM tickets WHERE ticket_id IN ('{run}', 'other')").strip() == "0"
    )


def test_one_customer_across_email_web_chat_ticket_and_call(support_pipeline: Pipeline) -> None:
    """Deliverable 4's journey: an email click, a web visit, a chat, a ticket and a call are one
    customer's, in time order, and the call's transcript flags a topic on it."""
    p = support_pipeline
    p.components.append(p.email().start())
    p.components.append(p.calls().start())
    run = uuid.uuid4().hex[:8]
    email, phone = f"grace-{run}@example.com", "+14155550177"
    day = (datetime.now(UTC) - timedelta(days=2)).replace(hour=9, minute=0, second=0, microsecond=0)

    # 1. An email campaign, clicked (SendGrid).
    click = {
        "email": email,
        "timestamp": int(day.timestamp()),
        "event": "click",
        "sg_event_id": f"click-{run}",
        "sg_message_id": f"msg-{run}.filter0001",
        "url": "https://shop.example.com/winter?utm_source=newsletter&utm_campaign=winter",
    }
    batch = orjson.dumps([click])
    assert post(f"{p.email_url}/v1/email/sendgrid", batch, sendgrid_headers(batch)) == (
        200,
        {"accepted": 1},
    )
    # 2. The web visit it led to, where the visitor signs in with that address.
    anon = f"anon-{run}"
    visit = make_event(
        type="page_view",
        anonymous_id=anon,
        ts=stamp(day + timedelta(minutes=1)),
        page={"url": "https://shop.example.com/winter?utm_source=newsletter&utm_campaign=winter"},
    )
    signin = make_event(
        type="identify",
        anonymous_id=anon,
        email=email,
        ts=stamp(day + timedelta(minutes=2)),
        page={"url": "https://shop.example.com/account"},
    )
    assert p.post([visit, signin])[0] == 200
    # 3. A chat on the site's messenger (Intercom).
    chat_id = f"ic-{run}"
    chat_at = day + timedelta(minutes=10)
    status, _ = intercom(
        p,
        "conversation.user.created",
        chat_at,
        email,
        id=chat_id,
        created_at=int(chat_at.timestamp()),
    )
    assert status == 200
    # 4. A ticket by email, where the helpdesk knows the customer's phone too (Zendesk).
    ticket_id = f"zd-{run}"
    opened = day + timedelta(hours=1)
    for fields in ticket_lifecycle(ticket_id, email, phone, opened)[:2]:
        assert zendesk(p, **fields)[0] == 200
    # 5. A call from that phone (any phone system, Standard Webhooks).
    call_id = f"call-{run}"
    call_at = day + timedelta(hours=5)
    for n, state in enumerate(("ringing", "answered", "completed")):
        assert (
            generic_callback(
                p,
                f"{call_id}-{n}",
                {
                    "call_id": call_id,
                    "status": state,
                    "direction": "inbound",
                    "from": phone,
                    "to": "+18005550100",
                    "timestamp": stamp(call_at + timedelta(minutes=4 * n)),
                },
            )
            == 200
        )
    transcript = {
        "call_id": call_id,
        "timestamp": stamp(call_at + timedelta(minutes=9)),
        "transcript": "Hello, I want to cancel my subscription, please.",
    }
    assert generic_callback(p, f"{call_id}-transcript", transcript) == 200

    expected = "email_click:email page_view:web identify:web chat:chat ticket:helpdesk call:phone"
    journey = (
        "SELECT arrayStringConcat(groupArray(concat(type, ':', channel)), ' ') FROM "
        f"(SELECT type, channel FROM ({CURRENT}) WHERE c IN "
        f"(SELECT c FROM ({CURRENT}) WHERE event_id = '{signin['event_id']}') ORDER BY ts)"
    )
    answer = p.wait_for(journey, expected, timeout=90)
    assert answer == expected
    # The call as the journey holds it: answered, its transcript's topic flagged, a friction.
    flagged = (
        "SELECT properties['disposition'], properties['topics'] FROM touchpoints FINAL "
        f"WHERE type = 'call' AND properties['call_id'] = '{call_id}'"
    )
    assert p.wait_for(flagged, "answered\tcancel", timeout=60) == "answered\tcancel"
    friction = (
        "SELECT reason, detail FROM frictions FINAL WHERE reason = 'negative_call_topic' AND "
        f"event_id IN (SELECT event_id FROM touchpoints WHERE properties['call_id'] = '{call_id}')"
    )
    assert p.wait_for(friction, "negative_call_topic\tcancel", timeout=60) == (
        "negative_call_topic\tcancel"
    )
