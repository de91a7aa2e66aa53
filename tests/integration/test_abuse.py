"""Abuse controls and personal data, through real HTTP, a real Kafka broker and ClickHouse (chDB):
a rate limit per client on every surface (429 with Retry-After, and another client unaffected),
request size limits, personal data kept out of stored URLs and properties, and a salt rotation
across which a customer stays one customer."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Pipeline, component_env, make_event
from tests.integration.test_links import TOKEN, call
from tracker.cli.kafka_local import LocalKafka
from tracker.privacy import hash_identifier
from tracker.ratelimit import RATE_LIMIT_SURFACES

pytestmark = pytest.mark.integration

BURST = 3
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
# Every surface: three requests per client, then one every 1,000 seconds.
TIGHT = orjson.dumps({s: {"rate": 0.001, "burst": BURST} for s in RATE_LIMIT_SURFACES}).decode()


def send(
    method: str, url: str, ip: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes, dict[str, str]]:
    """One request as the client at ``ip`` (behind the trusted proxy that says so)."""
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("X-Forwarded-For", ip)
    request.add_header("Content-Type", "application/json")
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture
def limited(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    env = component_env(
        kafka.bootstrap,
        tmp_path,
        TRACKER_RATE_LIMITS=TIGHT,
        TRACKER_TRUST_FORWARDED_FOR="true",
    )
    running = Pipeline(env, tmp_path).start()
    running.components += [
        running.links(TRACKER_API_TOKEN=TOKEN).start(),
        running.calls().start(),
        running.email().start(),
        running.helpdesk().start(),
    ]
    yield running
    running.stop()


def test_every_surface_answers_429_with_retry_after_per_client(limited: Pipeline) -> None:
    p = limited
    links_url = f"http://127.0.0.1:{p.env['TRACKER_LINKS_PORT']}"
    # A link to follow, made by a client of its own.
    status, made, _ = call(
        "POST",
        f"{links_url}/api/links",
        {"slug": "autumn", "target": "https://shop.example.com/autumn"},
        headers={"X-Forwarded-For": "192.0.2.200"},
    )
    assert status == 201, made
    event = orjson.dumps([make_event()])
    bearer = f"Bearer {TOKEN}"
    surfaces: list[tuple[str, str, str, bytes | None, dict[str, str]]] = [
        ("beacon events", "POST", f"{p.beacon_url}/v1/events", event, {}),
        ("beacon pixel", "GET", f"{p.beacon_url}/v1/p.gif?type=page_view", None, {}),
        ("segment", "POST", f"{p.beacon_url}/v1/batch", b'{"batch": []}', {}),
        ("redirects", "GET", f"{links_url}/autumn", None, {}),
        ("links api", "GET", f"{links_url}/api/links", None, {"Authorization": bearer}),
        ("call webhooks", "POST", f"{p.calls_url}/v1/calls/generic", b"{}", {}),
        ("email webhooks", "POST", f"{p.email_url}/v1/email/sendgrid", b"[]", {}),
        ("helpdesk webhooks", "POST", f"{p.helpdesk_url}/v1/helpdesk/zendesk", b"{}", {}),
        ("console query", "POST", f"{p.console_url}/api/query", b'{"sql": "SELECT 1"}', {}),
        ("console reports", "GET", f"{p.console_url}/api/reports/channels", None, {}),
        ("console forget", "POST", f"{p.console_url}/api/forget", b'{"identifier": "user:x"}', {}),
    ]
    for index, (surface, method, url, body, headers) in enumerate(surfaces):
        flooder, other = f"203.0.{index}.7", f"198.51.{index}.7"
        answers = [send(method, url, flooder, body, **headers) for _ in range(BURST + 1)]
        statuses = [status for status, _, _ in answers]
        assert 429 not in statuses[:BURST], (surface, answers)
        status, text, got = answers[-1]
        assert status == 429, (surface, answers[-1])
        assert int(got["Retry-After"]) >= 1, surface
        assert b"too many requests" in text.lower(), (surface, text)  # says why
        # The same network is the same client; another network is not held up.
        assert send(method, url, f"203.0.{index}.99", body, **headers)[0] == 429, surface
        status, text, _ = send(method, url, other, body, **headers)
        assert status != 429, (surface, status, text)
        if surface == "redirects":
            assert status == 302
        if surface == "beacon events":
            assert status == 200

    # Probes and scrapes are never limited.
    for base in (p.beacon_url, links_url, p.calls_url, p.email_url, p.helpdesk_url, p.console_url):
        assert all(send("GET", f"{base}/healthz", "203.0.0.7")[0] == 200 for _ in range(5))


def test_bodies_past_each_surfaces_size_limit_are_refused_413(limited: Pipeline) -> None:
    p = limited
    links_url = f"http://127.0.0.1:{p.env['TRACKER_LINKS_PORT']}"
    huge = b'{"sql": "SELECT 1", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    for index, url in enumerate(
        (
            f"{p.beacon_url}/v1/events",
            f"{links_url}/api/links",
            f"{p.calls_url}/v1/calls/generic",
            f"{p.email_url}/v1/email/sendgrid",
            f"{p.helpdesk_url}/v1/helpdesk/zendesk",
            f"{p.console_url}/api/query",
        )
    ):
        status, text, _ = send(
            "POST", url, f"192.0.{index}.1", huge, Authorization=f"Bearer {TOKEN}"
        )
        assert status == 413, (url, status, text[:200])


# -- personal data and the salt --------------------------------------------------------------


def tracker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_personal_data_stays_out_of_urls_bots_are_flagged_and_a_rotated_salt_keeps_one_customer(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    env = component_env(kafka.bootstrap, tmp_path, TRACKER_HASH_SALT="salt-of-2025")
    p = Pipeline(env, tmp_path).start()
    try:
        links = p.links(TRACKER_API_TOKEN=TOKEN).start()
        p.components.append(links)
        links_url = f"http://127.0.0.1:{env['TRACKER_LINKS_PORT']}"
        run = uuid.uuid4().hex[:8]
        ada, bob = f"ada.{run}@example.com", f"bob.{run}@example.com"

        # Before the rotation: Ada signs up on her laptop, from a URL that names her.
        signup = make_event(
            type="identify",
            anonymous_id=f"laptop-{run}",
            email=ada,
            ts="2026-11-20T09:30:00Z",
            page={
                "url": f"https://shop.example.com/welcome?email={ada}&token=s3cr3t&utm_source=news",
                "referrer": f"https://mail.example.com/u/{ada}/inbox",
            },
            properties={"note": "call me on +1 415 555 0100", "plan": "pro"},
        )
        bobs = make_event(
            type="identify", anonymous_id=f"tablet-{run}", email=bob, ts="2026-11-20T09:31:00Z"
        )
        assert p.post([signup, bobs])[0] == 200
        status, _, _ = call(
            "POST",
            f"{links_url}/api/links",
            {"slug": f"s{run}", "target": "https://shop.example.com/sale"},
        )
        assert status == 201
        status, _, got = call("GET", f"{links_url}/s{run}?email={ada}&utm_medium=sms", follow=False)
        assert status == 302 and "email=ada." in got["Location"]  # passed on, never stored
        # The email pixel, fetched by a crawler and by Gmail's image proxy for a reader.
        for agent, who in ((GOOGLEBOT, "crawler"), (GMAIL_PROXY, "reader")):
            pixel = f"{p.beacon_url}/v1/p.gif?type=email_open&anonymous_id={who}-{run}"
            assert send("GET", pixel, "127.0.0.1", User_Agent=agent)[0] == 200
        p.wait_until_handled()

        flagged = p.query(
            "SELECT anonymous_id, is_bot, bot_reason FROM touchpoints "
            f"WHERE type = 'email_open' AND anonymous_id LIKE '%-{run}' ORDER BY anonymous_id"
        )
        crawler, reader = (line.split("\t") for line in flagged.strip().splitlines())
        assert crawler[1] == "true" and crawler[2].startswith("crawler:"), crawler
        assert reader[1:] == ["false", "proxy:gmail"], reader

        stored = p.query(
            "SELECT page_url, referrer, toJSONString(properties) FROM touchpoints "
            f"WHERE event_id = '{signup['event_id']}' OR properties['slug'] = 's{run}'"
        )
        assert "ada." not in stored and "555" not in stored and "s3cr3t" not in stored, stored
        assert "utm_source=news" in stored and "utm_medium=sms" in stored  # the rest is kept
        assert stored.count("redacted") >= 2, stored

        # The rotation: collectors restart with the new salt, the old one as previous.
        beacon = p.components.pop(1)
        beacon.stop()
        p.env.update(TRACKER_HASH_SALT="salt-of-2026", TRACKER_HASH_SALT_PREVIOUS="salt-of-2025")
        p.components.insert(1, p.beacon().start())
        later = make_event(
            type="page_view", anonymous_id=f"phone-{run}", email=ada, ts="2026-11-21T08:00:00Z"
        )
        assert p.post([later])[0] == 200
        p.wait_until_handled()

        hashes = p.query(
            f"SELECT email_hash FROM touchpoints WHERE event_id = '{later['event_id']}'"
        )
        assert hashes.strip() == hash_identifier("email", ada, "salt-of-2026")

        # `tracker journey` under the new salt finds Ada's events from both sides of it ...
        done = tracker(p.env, "journey", ada, "--format", "json")
        assert done.returncode == 0, done.stderr
        journey = orjson.loads(done.stdout)
        assert {e["event_id"] for e in journey["timeline"]} == {
            signup["event_id"],
            later["event_id"],
        }
        assert sorted(journey["identifiers"]["anon"]) == [f"laptop-{run}", f"phone-{run}"]
        assert len({e["stitched_customer_id"] for e in journey["timeline"]}) >= 1
        # ... and Bob, not seen since the rotation, by the previous salt's hash.
        done = tracker(p.env, "journey", bob, "--format", "json")
        assert done.returncode == 0, done.stderr
        assert [e["event_id"] for e in orjson.loads(done.stdout)["timeline"]] == [bobs["event_id"]]
    finally:
        p.stop()
