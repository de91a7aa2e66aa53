"""Journey stitching end to end: a customer's touchpoints through the real collectors (links,
beacon, call webhooks), Kafka and the worker's identity and journey agents, into ClickHouse."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from collectors.links import CLICK_ID_PARAM
from tests.conftest import Pipeline, component_env, make_event
from tests.integration.test_calls import GENERIC_SECRET, generic_callback
from tests.integration.test_links import FIREFOX, TOKEN, call
from tracker.cli.kafka_local import LocalKafka

pytestmark = pytest.mark.integration

PHONE = "+14155550177"
# Sessions end after a minute of event time without activity. The whole story spans ten minutes
# of event time, well within the allowed lateness (an hour), so the click, which comes through
# the links service, may reach the journey agent before or after the web events that follow it.
INACTIVITY = timedelta(minutes=1)


@pytest.fixture
def journey_pipeline(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    env = component_env(
        kafka.bootstrap,
        tmp_path,
        TRACKER_GENERIC_WEBHOOK_SECRET=GENERIC_SECRET,
        TRACKER_SESSION_INACTIVITY_MINUTES=str(INACTIVITY.total_seconds() / 60),
    )
    running = Pipeline(env, tmp_path).start()
    running.components += [running.links(TRACKER_API_TOKEN=TOKEN).start(), running.calls().start()]
    yield running
    running.stop()


def now() -> str:
    return stamp(datetime.now(UTC))


def stamp(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def web(at: datetime, **fields: Any) -> dict[str, Any]:
    return make_event(ts=stamp(at), **fields)


def phone_call(pipeline: Pipeline, at: datetime, **fields: Any) -> None:
    call_id = "call-" + uuid.uuid4().hex
    body = {"call_id": call_id, "direction": "inbound", "from": PHONE, "to": "+18005550100"}
    assert generic_callback(pipeline, call_id, {**body, "timestamp": stamp(at), **fields}) == 200


def test_one_customer_from_email_click_to_unhappy_support_call(
    journey_pipeline: Pipeline,
) -> None:
    p = journey_pipeline
    links_url = f"http://127.0.0.1:{p.env['TRACKER_LINKS_PORT']}"
    created = {
        "target": "https://shop.example.com/autumn",
        "slug": "autumn-mail",
        "utm": {"source": "newsletter", "medium": "email", "campaign": "autumn"},
    }
    assert call("POST", links_url + "/api/links", created)[0] == 201

    # Session 1: the email link, the visit it leads to, pricing, and a form with the email.
    # The click is stamped by the links service as it happens; every later event carries its
    # own time, so the gaps between sessions are in event time, and nothing waits for them.
    _, _, headers = call(
        "GET", links_url + "/autumn-mail", headers={"User-Agent": FIREFOX}, follow=False
    )
    clicked = datetime.now(UTC)

    def seconds(n: float) -> datetime:
        return clicked + timedelta(seconds=n)

    click_id = parse_qs(urlsplit(headers["Location"]).query)[CLICK_ID_PARAM][0]
    anon = "anon-" + uuid.uuid4().hex[:8]
    email = f"ada-{uuid.uuid4().hex[:6]}@example.com"
    landing = web(
        seconds(10), anonymous_id=anon, click_id=click_id, page={"url": created["target"]}
    )
    assert p.post([landing])[0] == 200
    pricing = web(seconds(20), anonymous_id=anon, page={"url": "https://shop.example.com/pricing"})
    assert p.post([pricing])[0] == 200
    form = web(seconds(30), type="identify", anonymous_id=anon, email=email)
    assert p.post([form])[0] == 200

    # Session 2, five minutes on: the CRM learns the phone number; the customer calls sales, buys.
    session_2 = 300.0
    assert seconds(session_2) - seconds(30) > INACTIVITY
    crm = web(
        seconds(session_2),
        type="identify",
        source="server",
        email=email,
        phone=PHONE,
        properties={"crm.salesforce": "003" + uuid.uuid4().hex[:12]},
    )
    crm.pop("anonymous_id")
    assert p.post([crm])[0] == 200
    sales_call = seconds(session_2 + 10)
    phone_call(
        p,
        sales_call,
        status="completed",
        queue="sales",
        answered_at=stamp(sales_call),
        talk_seconds=240,
    )
    purchase = web(
        seconds(session_2 + 50), type="purchase", anonymous_id=anon, value=120.0, currency="EUR"
    )
    assert p.post([purchase])[0] == 200

    # Session 3, five minutes on again: a support call nobody answers, then an unhappy NPS answer.
    session_3 = 600.0
    assert seconds(session_3) - seconds(session_2 + 50) > INACTIVITY
    phone_call(p, seconds(session_3), status="completed", queue="support", queue_seconds=200)
    survey = web(
        seconds(session_3 + 10),
        type="survey_response",
        survey={"kind": "nps", "score": 3},
        email=email,
    )
    survey.pop("anonymous_id")
    assert p.post([survey])[0] == 200

    # Touchpoints keep the customer they were stitched with; identities say who that is now.
    current = (
        "SELECT t.event_id, t.type, t.ts, if(i.customer_id = '', t.customer_id, i.customer_id) AS c "
        "FROM touchpoints AS t FINAL LEFT JOIN ("
        "  SELECT own_customer_id, argMax(customer_id, version) AS customer_id "
        "  FROM identities GROUP BY own_customer_id"
        ") AS i ON t.customer_id = i.own_customer_id"
    )
    assert p.wait_for(f"SELECT count(), uniqExact(c) FROM ({current})", "9\t1", 60) == "9\t1"
    customer = p.query(f"SELECT any(c) FROM ({current})").strip()
    timeline = p.query(f"SELECT type FROM ({current}) ORDER BY ts").split()
    assert timeline == [
        "link_click",
        "page_view",
        "page_view",
        "identify",
        "identify",
        "call",
        "purchase",
        "call",
        "survey_response",
    ]

    journey = (
        "SELECT events, sessions, conversions, value, stage, has(channels, 'phone') "
        f"FROM journeys FINAL WHERE customer_id = '{customer}'"
    )
    assert p.wait_for(journey, "9\t3\t1\t120\tpost_purchase\t1", 30) == (
        "9\t3\t1\t120\tpost_purchase\t1"
    )
    sessions = p.query(
        f"SELECT events FROM sessions FINAL WHERE customer_id = '{customer}' AND NOT retired "
        "ORDER BY start"
    ).split()
    assert sessions == ["4", "3", "2"]
    stages = p.query(
        "SELECT t.type, t.stage FROM touchpoints AS t FINAL "
        f"WHERE t.event_id IN ('{pricing['event_id']}', '{purchase['event_id']}')"
        " ORDER BY t.ts FORMAT TSV"
    ).splitlines()
    assert stages == ["page_view\tconsideration", "purchase\tpurchase"]
    frictions = p.query(
        f"SELECT reason FROM frictions FINAL WHERE customer_id = '{customer}' AND NOT retracted "
        "ORDER BY reason"
    ).split()
    assert {"abandoned_call", "long_queue_wait", "low_nps", "repeat_contact"} <= set(frictions)
    # Nothing identifying is stored in clear.
    everything = p.query("SELECT * FROM identities FORMAT TSV")
    assert email not in everything and PHONE[2:] not in everything


def test_killed_worker_resumes_stitching_without_loss_or_duplicates(
    journey_pipeline: Pipeline,
) -> None:
    p = journey_pipeline
    visitors = [f"anon-{uuid.uuid4().hex[:8]}" for _ in range(100)]
    first = [make_event(anonymous_id=v, ts=now()) for v in visitors for _ in range(3)]
    assert p.post(first)[0] == 200
    p.components[0].stop(__import__("signal").SIGKILL)
    identified = [
        make_event(type="identify", anonymous_id=v, email=f"{v}@example.com", ts=now())
        for v in visitors
    ]
    assert p.post(identified)[0] == 200
    p.components[0] = p.worker().start()

    expected = "400\t400\t100"
    answer = p.wait_for(
        "SELECT count(), uniqExact(event_id), uniqExact(customer_id) FROM touchpoints FINAL",
        expected,
        timeout=90,
    )
    assert answer == expected
    totals = p.wait_for(
        "SELECT count(), sum(events) FROM journeys FINAL WHERE merged_into = ''", "100\t400", 30
    )
    assert totals == "100\t400"
    dump = orjson.dumps(p.query("SELECT * FROM identities FORMAT TSV"))
    assert b"@example.com" not in dump
