"""The web snippet in a real browser: a visitor on a small site, through the whole pipeline to ClickHouse."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from playwright.sync_api import Browser

from collectors.beacon import create_app
from tests.conftest import Pipeline
from tracker.cli.kafka_local import free_port
from tracker.deadletter import DeadLetter
from tracker.kafka.producer import MemoryPublisher
from tracker.settings import Settings
from tracker.touchpoint import Touchpoint

pytestmark = pytest.mark.e2e

EMAIL = "Ada.Lovelace@Example.com"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<script>window.tracker=window.tracker||function(){{(tracker.q=tracker.q||[]).push(arguments)}};{early}</script>
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


class Server:
    """An aiohttp application on its own port and event loop, beside the synchronous browser."""

    def __init__(self, app: web.Application) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner = web.AppRunner(app)

    async def _start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", int(self.url.rsplit(":", 1)[1])).start()

    def __enter__(self) -> Server:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


def page(title: str, body: str, beacon_url: str, flush_ms: int, early: str = "") -> web.Response:
    html = PAGE.format(title=title, beacon=beacon_url, body=body, flush_ms=flush_ms, early=early)
    return web.Response(text=html, content_type="text/html")


def shop(beacon_url: str) -> web.Application:
    """A small website embedding the snippet: a landing page with a form, and a pricing page."""

    async def landing(request: web.Request) -> web.Response:
        return page("Kettles", LANDING, beacon_url, 1000)

    async def pricing(request: web.Request) -> web.Response:
        # Events here wait ten minutes to be batched: only the page-exit flush can send them.
        return page("Pricing", PRICING, beacon_url, 600_000)

    app = web.Application()
    app.router.add_get("/", landing)
    app.router.add_get("/pricing", pricing)
    app.router.add_get("/pricing/annual", pricing)
    return app


@pytest.fixture
def site(pipeline: Pipeline) -> Iterator[Server]:
    with Server(shop(pipeline.beacon_url)) as running:
        yield running


def test_a_visit_lands_in_clickhouse_as_one_journey(
    browser: Browser, site: Server, pipeline: Pipeline
) -> None:
    tab = browser.new_page()
    tab.goto(site.url + "/?utm_source=news&utm_medium=email&tc_id=abc123")
    tab.wait_for_function("window.tracker && window.tracker.loaded === true")
    # The landing page view leaves on the batching timer, by fetch.
    landed = pipeline.wait_for("SELECT count() FROM touchpoints WHERE type = 'page_view'", "1")
    assert landed == "1"

    tab.fill("#email", EMAIL)
    tab.click("#subscribe")
    tab.wait_for_selector("body[data-subscribed=yes]")
    tab.click("#to-pricing")
    tab.wait_for_url(site.url + "/pricing")
    tab.wait_for_function("window.tracker && window.tracker.loaded === true")
    tab.click("#annual")
    tab.wait_for_url(site.url + "/pricing/annual")
    # The snippet records an SPA page view on the next task after pushState; let that task run.
    tab.evaluate("() => new Promise((done) => setTimeout(done, 50))")
    tab.click("#decline")
    tab.close()  # pagehide: the events still queued go out by sendBeacon

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
        "SELECT uniqExact(anonymous_id), uniqExact(client_session_id), countIf(click_id = 'abc123'), "
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
        "SELECT anonymous_id, client_session_id, click_id, consent_analytics FROM touchpoints "
        "WHERE name = 'after_consent'"
    )
    assert after.strip("\n") == "\t\t\tfalse"


@dataclass
class Attempt:
    at: float
    names: list[str]
    event_ids: list[str]
    dead_letters: int
    answered: int


class FlakyPublisher(MemoryPublisher):
    """Kafka as the beacon sees it, failing the first ``failures`` writes with backpressure."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts: list[Attempt] = []

    async def publish(
        self, touchpoints: Sequence[Touchpoint], dead_letters: Sequence[DeadLetter] = ()
    ) -> None:
        self.unavailable = len(self.attempts) < self.failures
        attempt = Attempt(
            time.monotonic(),
            [t.name for t in touchpoints],
            [t.event_id for t in touchpoints],
            len(dead_letters),
            503 if self.unavailable else (400 if dead_letters else 200),
        )
        self.attempts.append(attempt)
        await super().publish(touchpoints, dead_letters)

    @property
    def delivered(self) -> list[Touchpoint]:
        """Each event once, as the worker stores it: a resend after a lost answer is no new event."""
        first: dict[str, Touchpoint] = {}
        for touchpoint in self.touchpoints:
            first.setdefault(touchpoint.event_id, touchpoint)
        return list(first.values())


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def quiet_site(beacon_url: str, early: str = "") -> web.Application:
    """One page, served at any path, embedding the snippet; events leave after 100 ms."""

    async def any_page(request: web.Request) -> web.Response:
        return page("Quiet", "<h1>Quiet</h1>", beacon_url, 100, early)

    app = web.Application()
    app.router.add_get("/{path:.*}", any_page)
    return app


@pytest.fixture
def memory_beacon(tmp_path: Path) -> Iterator[tuple[Server, FlakyPublisher]]:
    """The real beacon application, publishing to memory instead of Kafka."""
    publisher = FlakyPublisher(failures=0)
    settings = Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_HASH_SALT": "s"})
    with Server(create_app(settings, publisher)) as beacon:
        yield beacon, publisher


def test_calls_before_load_a_503_and_a_400_are_handled_as_the_beacon_asks(
    browser: Browser, memory_beacon: tuple[Server, FlakyPublisher]
) -> None:
    beacon, publisher = memory_beacon
    publisher.failures = 1
    early = 'tracker("track", "custom", {name: "early", value: 9.5, currency: "EUR"});'
    with Server(quiet_site(beacon.url, early)) as site:
        tab = browser.new_page()
        # A visitor whose browser sends Global Privacy Control.
        tab.add_init_script(
            "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})"
        )
        tab.goto(site.url + "/")

        # The first batch meets Kafka trouble: 503, Retry-After: 1. The same events come back.
        assert eventually(lambda: len(publisher.attempts) >= 2)
        first, second = publisher.attempts[:2]
        assert (first.answered, first.names) == (503, ["page_view", "early"])
        assert (second.answered, second.event_ids) == (200, first.event_ids)
        assert second.at - first.at >= 0.9
        assert [t.consent for t in publisher.delivered] == [{"marketing": False}] * 2
        early = publisher.delivered[1]
        assert (early.value, early.currency) == (9.5, "EUR")
        assert early.sent_ts is not None and early.sent_ts - early.device_ts >= timedelta(
            seconds=0.9
        )  # sent_ts is stamped when the batch finally leaves

        # An invalid event is answered 400 and kept as a dead letter: it is not sent again.
        tab.evaluate('tracker("track", "Not A Type")')
        assert eventually(lambda: len(publisher.attempts) >= 3)
        tab.evaluate('tracker("track", "custom", {name: "after"})')
        assert eventually(lambda: len(publisher.attempts) >= 4)
        time.sleep(3)  # long enough for a wrongful retry of the 400 to show
        assert [(a.answered, a.names, a.dead_letters) for a in publisher.attempts[2:]] == [
            (400, [], 1),
            (200, ["after"], 0),
        ]
        assert [t.name for t in publisher.delivered] == ["page_view", "early", "after"]
        tab.close()


def test_a_session_ends_after_30_idle_minutes_and_keeps_its_click_id_until_then(
    browser: Browser, memory_beacon: tuple[Server, FlakyPublisher]
) -> None:
    beacon, publisher = memory_beacon
    with Server(quiet_site(beacon.url)) as site:
        tab = browser.new_page()
        tab.goto(site.url + "/landing?tc_id=first")
        tab.wait_for_function("window.tracker && window.tracker.loaded === true")
        tab.evaluate('tracker("track", "custom", {name: "same_session"})')
        assert eventually(lambda: len(publisher.delivered) == 2)
        # 31 minutes pass without an event.
        tab.evaluate(
            """() => {
              const s = JSON.parse(localStorage.getItem("tracker_session"));
              s.last -= 31 * 60 * 1000;
              localStorage.setItem("tracker_session", JSON.stringify(s));
              tracker("track", "custom", {name: "new_session"});
            }"""
        )
        assert eventually(lambda: len(publisher.delivered) == 3)
        tab.goto(site.url + "/again?tc_id=second")
        assert eventually(lambda: len(publisher.delivered) == 4)
        tab.close()

    views = [(t.name, t.page["url"].removeprefix(site.url)) for t in publisher.delivered]
    assert views == [
        ("page_view", "/landing?tc_id=first"),
        ("same_session", "/landing?tc_id=first"),
        ("new_session", "/landing?tc_id=first"),
        ("page_view", "/again?tc_id=second"),
    ]
    first, same, later, again = publisher.delivered
    assert len({t.anonymous_id for t in publisher.delivered}) == 1
    assert same.session_id == first.session_id != later.session_id == again.session_id
    assert [t.click_id for t in publisher.delivered] == ["first", "first", "", "second"]


def test_without_local_storage_the_ids_live_in_a_first_party_cookie(
    browser: Browser, memory_beacon: tuple[Server, FlakyPublisher]
) -> None:
    beacon, publisher = memory_beacon
    with Server(quiet_site(beacon.url)) as site:
        tab = browser.new_page()
        tab.add_init_script(
            "for (const m of ['getItem', 'setItem']) "
            "Storage.prototype[m] = () => { throw new DOMException('blocked', 'SecurityError'); };"
        )
        tab.goto(site.url + "/one")
        assert eventually(lambda: len(publisher.delivered) == 1)
        tab.goto(site.url + "/two")
        assert eventually(lambda: len(publisher.delivered) == 2)
        cookies = {c["name"]: c["value"] for c in tab.context.cookies(site.url)}
        tab.close()

    one, two = publisher.delivered
    assert one.anonymous_id == two.anonymous_id == cookies["tracker_aid"]
    assert one.session_id == two.session_id != ""


def test_every_command_and_a_batch_too_large_for_the_beacon(
    browser: Browser, tmp_path: Path
) -> None:
    publisher = FlakyPublisher(failures=0)
    settings = Settings.from_env(
        {
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_HASH_SALT": "s",
            "TRACKER_MAX_EVENTS_PER_REQUEST": "2",  # the five queued events get 413 at first
        }
    )
    early = """
      tracker("identify", {user_id: "u42", phone: "(415) 555-0132"});
      tracker("survey", {kind: "nps", score: "9", comment: "Quick delivery"});
      tracker("track", "purchase", {name: "order_completed", value: 49.9, currency: "EUR",
                                    properties: {items: 2, gift: true, meta: {a: 1}, none: null}});
      tracker("page", {name: "pricing"});
    """
    with (
        Server(create_app(settings, publisher)) as beacon,
        Server(quiet_site(beacon.url, early)) as site,
    ):
        tab = browser.new_page()
        tab.goto(site.url + "/")
        assert eventually(lambda: len(publisher.delivered) == 5)
        tab.close()

    view, identify, survey, purchase, _ = publisher.delivered
    assert [(t.type, t.name) for t in publisher.delivered] == [
        ("page_view", "page_view"),
        ("identify", "identify"),
        ("survey_response", "survey_response"),
        ("purchase", "order_completed"),
        ("page_view", "pricing"),
    ]
    assert all(len(a.event_ids) <= 2 for a in publisher.attempts)  # split to the beacon's limit
    assert [t.user_id for t in publisher.delivered] == ["", "u42", "u42", "u42", "u42"]
    assert len(identify.phone_hash) == 64
    assert survey.survey == {"kind": "nps", "score": 9, "comment": "Quick delivery"}
    assert (purchase.value, purchase.currency) == (49.9, "EUR")
    assert purchase.properties == {"items": "2", "gift": "true", "meta": '{"a":1}'}
    assert view.context["library"] == "tracker-js/0.1"
    assert view.context["screen"].count("x") == 1 and view.context["timezone"]
