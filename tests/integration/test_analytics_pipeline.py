"""The data reports stand on, through the real pipeline: events posted to the beacon, stitched
by the worker on a real Kafka broker, stored in embedded ClickHouse."""

from __future__ import annotations

import subprocess
import sys
import urllib.parse
import urllib.request
import uuid

import orjson
import pytest

from tests.conftest import Pipeline, make_event
from tests.integration.test_analytics_store import _DIRECT, _ROLLUP

pytestmark = pytest.mark.integration

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"


def _rows(pipeline: Pipeline, sql: str) -> list[list[str]]:
    return [line.split("\t") for line in pipeline.query(sql).splitlines() if line]


def test_sessions_surveys_proxied_opens_and_rollups_through_the_pipeline(
    pipeline: Pipeline,
) -> None:
    jane, other, bouncer = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("jane", "ben", "bo"))
    email = f"jane.{uuid.uuid4().hex[:6]}@example.com"
    shop = "https://shop.example.com"
    context = {"user_agent": CHROME}
    visit = make_event(
        anonymous_id=jane, ts="2026-11-20T09:00:00Z", page={"url": f"{shop}/"}, context=context
    )
    identify = make_event(
        type="identify", anonymous_id=jane, email=email, ts="2026-11-20T09:05:00Z", context=context
    )
    purchase = make_event(
        type="purchase",
        name="order",
        anonymous_id=jane,
        value=40.0,
        currency="EUR",
        ts="2026-11-20T09:10:00Z",
        context=context,
    )
    rates_last = make_event(
        type="survey_response",
        anonymous_id=jane,
        survey={"kind": "csat", "score": 2},
        ts="2026-11-20T09:20:00Z",
        context=context,
    )
    rates_named = make_event(
        type="survey_response",
        anonymous_id=jane,
        survey={"kind": "nps", "score": 9, "touchpoint_id": visit["event_id"]},
        ts="2026-11-20T09:21:00Z",
        context=context,
    )
    # The client names the event's medium, web; the URL says where the customer came from.
    from_email = make_event(
        anonymous_id=other,
        channel="web",
        ts="2026-11-20T10:00:00Z",
        page={"url": f"{shop}/?utm_source=news&utm_medium=email"},
        context=context,
    )
    bounce = make_event(
        anonymous_id=bouncer, ts="2026-11-20T08:00:00Z", page={"url": f"{shop}/pricing"}
    )
    back_later = make_event(
        anonymous_id=bouncer, ts="2026-11-20T12:00:00Z", page={"url": f"{shop}/"}
    )
    events = [visit, identify, purchase, rates_last, rates_named, from_email, bounce, back_later]
    status, body, _ = pipeline.post(events)
    assert status == 200, body
    # Gmail's image proxy fetches the pixel of an email the customer opened.
    query = urllib.parse.urlencode(
        {"type": "email_open", "anonymous_id": jane, "ts": "2026-11-20T09:30:00Z"}
    )
    request = urllib.request.Request(
        f"{pipeline.beacon_url}/v1/p.gif?{query}", headers={"User-Agent": GMAIL_PROXY}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    pipeline.wait_until_handled()

    first_sessions = (
        "SELECT t.anonymous_id, argMin(s.channel, s.start) FROM sessions AS s FINAL "
        "INNER JOIN (SELECT DISTINCT anonymous_id, session_id FROM touchpoints FINAL "
        "WHERE session_id != '') AS t ON t.session_id = s.session_id "
        "WHERE NOT s.retired GROUP BY t.anonymous_id"
    )
    sessions = dict(_rows(pipeline, first_sessions))
    assert sessions[jane] == "direct"  # no campaign, ad click or referrer: direct, not web
    assert sessions[other] == "email"  # named web by the client, came from an email
    assert sessions[bouncer] == "direct"

    stored = {
        r[0]: r[1:]
        for r in _rows(
            pipeline,
            "SELECT toString(event_id), survey_touchpoint_id, conversion, is_bot, bot_reason "
            "FROM touchpoints FINAL",
        )
    }
    assert stored[rates_last["event_id"]][0] == purchase["event_id"]  # the last one before it
    assert stored[rates_named["event_id"]][0] == visit["event_id"]  # the one it names
    assert stored[purchase["event_id"]][1] == "purchase"
    assert stored[visit["event_id"]][:2] == ["", ""]
    opens = [v for v in stored.values() if v[3] == "proxy:gmail"]
    assert opens == [["", "", "false", "proxy:gmail"]]

    friction = _rows(
        pipeline,
        "SELECT event_id, channel, type, name, stage, is_bot FROM frictions FINAL "
        "WHERE reason = 'bounce' AND NOT retracted",
    )
    assert friction == [
        [bounce["event_id"], "web", "page_view", "/pricing", "consideration", "true"]
    ]

    # The rollup answers as a direct aggregation of what is stored.
    rollup, direct = pipeline.query(_ROLLUP), pipeline.query(_DIRECT)
    assert rollup == direct
    # The bounce page, posted without a browser's user agent: a bot's, and so is its friction.
    assert "\t/pricing\tconsideration\ttrue\t1\t1\t0\t0\t1\t" in rollup

    # A bare email address finds the customer.
    done = subprocess.run(
        [sys.executable, "-m", "tracker", "journey", email, "--format", "json"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shown = [e["event_id"] for e in orjson.loads(done.stdout)["timeline"]]
    assert set(shown) >= {visit["event_id"], identify["event_id"], purchase["event_id"]}
