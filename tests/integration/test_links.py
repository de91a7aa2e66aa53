"""Short links on a real Kafka broker and the real ClickHouse engine."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from tests.conftest import Component, Pipeline, component_env
from tracker.cli.kafka_local import LocalKafka, free_port

pytestmark = pytest.mark.integration

TOKEN = "integration-token"
SLACKBOT = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_NO_REDIRECT = urllib.request.build_opener(_NoRedirect)


def call(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    follow: bool = True,
) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(
        url,
        data=orjson.dumps(body) if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})},
    )
    opener = urllib.request.build_opener() if follow else _NO_REDIRECT
    try:
        with opener.open(request, timeout=30) as response:
            status, raw, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, got = exc.code, exc.read(), dict(exc.headers)
    if got.get("Content-Type", "").startswith("application/json") and raw:
        return status, orjson.loads(raw), got
    return status, raw, got


def wait_until(check: Any, timeout: float = 10.0) -> float:
    """Seconds until ``check()`` held; fails the test if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout}s")


@pytest.fixture
def links_pipeline(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    """Worker, beacon and one links service on their own topics and database."""
    running = Pipeline(component_env(kafka.bootstrap, tmp_path), tmp_path).start()
    running.components.append(running.links(TRACKER_API_TOKEN=TOKEN).start())
    yield running
    running.stop()


def test_a_click_redirects_end_to_end_and_lands_in_clickhouse(links_pipeline: Pipeline) -> None:
    pipeline = links_pipeline
    links_url = f"http://127.0.0.1:{pipeline.env['TRACKER_LINKS_PORT']}"
    target = f"{pipeline.beacon_url}/healthz"  # a real page to land on
    status, link, _ = call(
        "POST",
        links_url + "/api/links",
        {
            "target": target,
            "slug": "winter",
            "tags": ["flyer"],
            "channel": "email",
            "utm": {"source": "newsletter", "medium": "email", "campaign": "winter"},
        },
    )
    assert status == 201, link
    assert link["short_url"].endswith("/winter")

    # A person follows the link with a real HTTP client, through the redirect to the page.
    status, page, _ = call("GET", links_url + "/winter?ref=mail", headers={"User-Agent": FIREFOX})
    assert (status, page) == (200, {"status": "ok"})
    # Slack unfurls it, and someone scans the QR code.
    assert call("GET", links_url + "/winter", headers={"User-Agent": SLACKBOT})[0] == 200
    status, _, headers = call(
        "GET", links_url + "/winter?qr=1", headers={"User-Agent": FIREFOX}, follow=False
    )
    assert status == 302
    click_id = parse_qs(urlsplit(headers["Location"]).query)["tc_id"][0]

    rows = pipeline.wait_for(
        "SELECT type, source, channel, campaign_name, properties['qr'], is_bot, bot_reason "
        "FROM touchpoints WHERE properties['slug'] = 'winter' ORDER BY ts",
        "link_click\tshortlink\temail\twinter\tfalse\tfalse\t\n"
        "link_click\tshortlink\temail\twinter\tfalse\ttrue\tcrawler:slackbot\n"
        "link_click\tshortlink\temail\twinter\ttrue\tfalse\t",
    )
    assert rows.count("link_click") == 3, rows
    qr_row = pipeline.query(
        f"SELECT properties['qr'], ip FROM touchpoints WHERE click_id = '{click_id}'"
    )
    assert qr_row.strip() == "true\t127.0.0.0"

    # The link is mirrored to ClickHouse; a delete is marked there.
    assert (
        pipeline.wait_for(
            "SELECT target, deleted FROM links FINAL WHERE slug = 'winter'", f"{target}\tfalse"
        )
        == f"{target}\tfalse"
    )
    assert call("DELETE", links_url + "/api/links/winter")[0] == 204
    assert call("GET", links_url + "/winter", follow=False)[0] == 404
    assert (
        pipeline.wait_for("SELECT deleted FROM links FINAL WHERE slug = 'winter'", "true") == "true"
    )

    # Stats separate people from bots, and count unique clickers.
    stats = subprocess.run(
        [sys.executable, "-m", "tracker", "links", "stats", "winter"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    header, row = stats.stdout.strip().splitlines()
    assert dict(zip(header.split("\t"), row.split("\t"), strict=True)) == {
        "slug": "winter",
        "requests": "3",
        "clicks": "3",
        "human_clicks": "2",
        "bot_requests": "1",
        "qr_scans": "1",
        "unique_clickers": "1",
    }


def test_a_worker_killed_mid_stream_loses_and_duplicates_no_click(
    links_pipeline: Pipeline,
) -> None:
    pipeline = links_pipeline
    links_url = f"http://127.0.0.1:{pipeline.env['TRACKER_LINKS_PORT']}"
    created = call("POST", links_url + "/api/links", {"target": "https://a.example/", "slug": "k"})
    assert created[0] == 201
    ids = set()

    def click(n: int) -> None:
        for _ in range(n):
            status, _, headers = call("GET", links_url + "/k", follow=False)
            assert status == 302
            ids.add(parse_qs(urlsplit(headers["Location"]).query)["tc_id"][0])

    click(150)
    count = "SELECT count() FROM touchpoints WHERE properties['slug'] = 'k'"
    wait_until(lambda: int(pipeline.query(count).strip() or 0) > 0, timeout=60)
    worker = pipeline.components[0]
    worker.stop(signal.SIGKILL)  # no graceful commit: what it stored but did not commit replays
    click(150)  # the links service keeps shipping batches while no worker reads them
    pipeline.components[0] = pipeline.worker().start()

    expected = "300\t300\t300"
    answer = pipeline.wait_for(
        "SELECT count(), uniqExact(event_id), uniqExact(click_id) FROM touchpoints "
        "WHERE properties['slug'] = 'k'",
        expected,
        timeout=90,
    )
    assert answer == expected
    stored = pipeline.query("SELECT click_id FROM touchpoints WHERE properties['slug'] = 'k'")
    assert set(stored.split()) == ids


def test_links_are_shared_between_instances_and_survive_a_restart(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    env = component_env(kafka.bootstrap, tmp_path, TRACKER_API_TOKEN=TOKEN)
    pipeline = Pipeline(env, tmp_path)
    first = pipeline.links().start()
    second = pipeline.links(TRACKER_LINKS_PORT=str(free_port())).start()
    a = f"http://127.0.0.1:{first.env['TRACKER_LINKS_PORT']}"
    b = f"http://127.0.0.1:{second.env['TRACKER_LINKS_PORT']}"
    running: list[Component] = [first, second]
    try:
        assert (
            call("POST", a + "/api/links", {"target": "https://a.example/", "slug": "shared"})[0]
            == 201
        )
        seconds = wait_until(lambda: call("GET", b + "/shared", follow=False)[0] == 302)
        assert seconds < 1.0, f"the second instance served the link after {seconds:.2f}s"

        # An update through the second instance reaches the first.
        status, _, _ = call("PATCH", b + "/api/links/shared", {"target": "https://b.example/"})
        assert status == 200
        wait_until(
            lambda: (
                call("GET", a + "/shared", follow=False)[2]
                .get("Location", "")
                .startswith("https://b.example/")
            )
        )

        # A click limit holds across instances (counts are exchanged about once a second).
        call(
            "POST",
            a + "/api/links",
            {"target": "https://a.example/", "slug": "limited", "max_clicks": 3},
        )
        wait_until(lambda: call("GET", b + "/api/links/limited")[0] == 200)
        assert [call("GET", a + "/limited", follow=False)[0] for _ in range(2)] == [302, 302]
        wait_until(lambda: call("GET", b + "/api/links/limited")[1]["clicks"] == 2, timeout=5)
        assert [call("GET", b + "/limited", follow=False)[0] for _ in range(2)] == [302, 410]

        # Restarted, an instance rebuilds links and counts from Kafka before it is ready.
        first.stop()
        second.stop()
        running = [pipeline.links().start()]
        assert call("GET", a + "/shared", follow=False)[2]["Location"].startswith(
            "https://b.example/"
        )
        assert call("GET", a + "/limited", follow=False)[0] == 410
        assert call("GET", a + "/api/links/limited")[1]["clicks"] == 3
    finally:
        for component in running:
            component.stop()


def test_redirects_go_on_while_kafka_is_down_and_clicks_arrive_later(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "kafka", free_port())
    broker.start()
    pipeline = Pipeline(component_env(broker.bootstrap, tmp_path), tmp_path)
    try:
        pipeline.start()
        pipeline.components.append(pipeline.links(TRACKER_API_TOKEN=TOKEN).start())
        links_url = f"http://127.0.0.1:{pipeline.env['TRACKER_LINKS_PORT']}"
        assert (
            call(
                "POST", links_url + "/api/links", {"target": "https://a.example/", "slug": "outage"}
            )[0]
            == 201
        )

        broker.stop()
        started = time.monotonic()
        statuses = [call("GET", links_url + "/outage", follow=False)[0] for _ in range(20)]
        assert statuses == [302] * 20
        assert time.monotonic() - started < 2.0  # no redirect waited for Kafka

        broker.start()
        assert (
            pipeline.wait_for(
                "SELECT count() FROM touchpoints WHERE properties['slug'] = 'outage'",
                "20",
                timeout=90,
            )
            == "20"
        )
    finally:
        pipeline.stop()
        broker.stop()


def test_the_cli_manages_links_on_the_running_service(kafka: LocalKafka, tmp_path: Path) -> None:
    env = component_env(kafka.bootstrap, tmp_path, TRACKER_API_TOKEN=TOKEN)
    service = Pipeline(env, tmp_path).links().start()
    base = f"http://127.0.0.1:{env['TRACKER_LINKS_PORT']}"

    def tracker(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tracker", "links", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        created = orjson.loads(
            tracker(
                "create",
                "https://shop.example/a",
                "--slug",
                "cli",
                "--tag",
                "print",
                "--utm-source",
                "poster",
                "--max-clicks",
                "10",
            )
        )
        assert (created["slug"], created["max_clicks"], created["utm"]) == (
            "cli",
            10,
            {"source": "poster"},
        )
        assert tracker("list", "--tag", "print").split("\t")[:3] == [
            "cli",
            f"{base}/cli",
            "https://shop.example/a",
        ]

        tracker("update", "cli", "--target", "https://shop.example/b")
        assert call("GET", base + "/cli", follow=False)[2]["Location"].startswith(
            "https://shop.example/b?"
        )
        tracker("disable", "cli")
        assert call("GET", base + "/cli", follow=False)[0] == 410
        assert orjson.loads(tracker("show", "cli"))["disabled"] is True

        png = tmp_path / "cli.png"
        tracker("qr", "cli", str(png))
        assert png.read_bytes().startswith(b"\x89PNG")

        refused = subprocess.run(
            [sys.executable, "-m", "tracker", "links", "create", "javascript:alert(1)"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1 and "http or https" in refused.stderr
    finally:
        service.stop()
