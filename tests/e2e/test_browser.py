"""The web snippet in a real browser: a visitor on a small site, through the whole pipeline to ClickHouse."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web
from playwright.sync_api import Browser

from tests.conftest import Pipeline
from tracker.kafka_local import free_port

pytestmark = pytest.mark.e2e

EMAIL = "Ada.Lovelace@Example.com"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<script>window.tracker=window.tracker||function(){{(tracker.q=tracker.q||[]).push(arguments)}};</script>
<script async src="{beacon}/t.js" data-endpoint="{beacon}" data-flush-ms="{flush_ms}"></script>
</head><body>{body}</body></html>"""

LANDING = """<h1>Kettles</h1>
<form id="signup"><input id="email" type="email"><button id="subscribe">Subscribe</button></form>
<a id="to-pricing" href="/pricing">Pricing</a>
<script>
document.getElementById("signup").addEventListener("submit", (event) => {
  event.preventDefault();
  tracker("identify", {email: document.getElementById("email").value});
  tracker("track", "form_submit", {name: "newsletter_signup", properties: {plan: "pro", seats: 3}});
  document.body.dataset.subscribed = "yes";
});
</script>"""

PRICING = """<h1>Pricing</h1>
<button id="annual">Annual billing</button>
<button id="decline">No analytics, thanks</button>
<script>
document.getElementById("annual").addEventListener("click", () => {
  history.pushState({}, "", "/pricing/annual");
});
document.getElementById("decline").addEventListener("click", () => {
  tracker("consent", {analytics: false});
  tracker("track", "click", {name: "after_consent"});
});
</script>"""


class Site:
    """A small website on its own port and event loop, embedding the beacon's snippet."""

    def __init__(self, beacon_url: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self._beacon_url = beacon_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def _page(self, title: str, body: str, flush_ms: int) -> web.Response:
        html = PAGE.format(title=title, beacon=self._beacon_url, body=body, flush_ms=flush_ms)
        return web.Response(text=html, content_type="text/html")

    async def _start(self) -> None:
        async def landing(request: web.Request) -> web.Response:
            return self._page("Kettles", LANDING, 1000)

        async def pricing(request: web.Request) -> web.Response:
            # Events here wait ten minutes to be batched: only the page-exit flush can send them.
            return self._page("Pricing", PRICING, 600_000)

        app = web.Application()
        app.router.add_get("/", landing)
        app.router.add_get("/pricing", pricing)
        app.router.add_get("/pricing/annual", pricing)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", int(self.url.rsplit(":", 1)[1])).start()

    def __enter__(self) -> Site:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


@pytest.fixture
def site(pipeline: Pipeline) -> Iterator[Site]:
    with Site(pipeline.beacon_url) as running:
        yield running


def test_a_visit_lands_in_clickhouse_as_one_journey(
    browser: Browser, site: Site, pipeline: Pipeline
) -> None:
    page = browser.new_page()
    page.goto(site.url + "/?utm_source=news&utm_medium=email&tc_id=abc123")
    page.wait_for_function("window.tracker && window.tracker.loaded === true")
    # The landing page view leaves on the batching timer, by fetch.
    landed = pipeline.wait_for("SELECT count() FROM touchpoints WHERE type = 'page_view'", "1")
    assert landed == "1"

    page.fill("#email", EMAIL)
    page.click("#subscribe")
    page.wait_for_selector("body[data-subscribed=yes]")
    page.click("#to-pricing")
    page.wait_for_url(site.url + "/pricing")
    page.wait_for_function("window.tracker && window.tracker.loaded === true")
    page.click("#annual")
    page.wait_for_url(site.url + "/pricing/annual")
    page.wait_for_function("document.readyState === 'complete'")
    page.click("#decline")
    page.close()  # pagehide: the events still queued go out by sendBeacon

    assert pipeline.wait_for("SELECT count() FROM touchpoints", "6", timeout=60) == "6"
    events = pipeline.query(
        "SELECT type, name, page_path FROM touchpoints ORDER BY type, name, page_path"
    )
    assert events.splitlines() == [
        "click\tafter_consent\t/pricing/annual",
        "form_submit\tnewsletter_signup\t/",
        "identify\tidentify\t/",
        "page_view\tpage_view\t/",
        "page_view\tpage_view\t/pricing",
        "page_view\tpage_view\t/pricing/annual",
    ]

    landing = pipeline.query(
        "SELECT channel, campaign_source, campaign_medium, click_id FROM touchpoints "
        "WHERE type = 'page_view' AND page_path = '/'"
    )
    assert landing.strip() == "email\tnews\temail\tabc123"

    # Before consent was withdrawn: one browser, one session, and the short-link click throughout.
    identity = pipeline.query(
        "SELECT uniqExact(anonymous_id), uniqExact(session_id), countIf(click_id = 'abc123'), "
        "countIf(match(anonymous_id, '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$')), "
        "countIf(sent_ts IS NOT NULL), count() "
        "FROM touchpoints WHERE name != 'after_consent'"
    )
    assert identity.strip() == "1\t1\t5\t5\t5\t5"

    spa = pipeline.query(
        "SELECT referrer, page_title, library FROM touchpoints "
        "WHERE type = 'page_view' AND page_path = '/pricing/annual'"
    )
    assert spa.strip() == f"{site.url}/pricing\tPricing\ttracker-js/0.1"

    form = pipeline.query(
        "SELECT properties['plan'], properties['seats'] FROM touchpoints WHERE type = 'form_submit'"
    )
    assert form.strip() == "pro\t3"

    expected_hash = hmac.new(
        b"test-salt", f"email:{EMAIL.lower()}".encode(), hashlib.sha256
    ).hexdigest()
    stored_hash = pipeline.query("SELECT email_hash FROM touchpoints WHERE type = 'identify'")
    assert stored_hash.strip() == expected_hash
    everything = pipeline.query("SELECT * FROM touchpoints FORMAT TSV").lower()
    assert "lovelace" not in everything

    after = pipeline.query(
        "SELECT anonymous_id, session_id, click_id, consent_analytics FROM touchpoints "
        "WHERE name = 'after_consent'"
    )
    assert after.strip("\n") == "\t\t\tfalse"
