"""t.js swaps a pool number into the page, in a real browser against the real beacon and Kafka."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from playwright.sync_api import Browser

from tests.conftest import Pipeline, component_env
from tests.e2e.test_browser import Server, page
from tracker.cli.kafka_local import LocalKafka

pytestmark = pytest.mark.e2e

POOL_NUMBERS = ["+18005550101", "+18005550102"]
CONTACT = """<h1>Call us</h1>
<p>Sales: <a id="sales" data-tracker-pool="spring" href="tel:+18005550100">(800) 555-0100</a></p>
<p>Abroad: <span id="abroad" data-tracker-pool="spring" data-tracker-format="international">+1 800-555-0100</span></p>
<p>Support: <a id="support" href="tel:+18005550199">(800) 555-0199</a></p>"""


@pytest.fixture
def beacon(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    pools = {"spring": {"numbers": POOL_NUMBERS, "fallback": "+18005550100"}}
    env = component_env(
        kafka.bootstrap, tmp_path, TRACKER_CALL_NUMBER_POOLS=orjson.dumps(pools).decode()
    )
    running = Pipeline(env, tmp_path)
    running.components = [running.beacon().start()]
    yield running
    running.stop()


def contact_site(beacon_url: str) -> web.Application:
    async def contact(request: web.Request) -> web.Response:
        return page("Contact", CONTACT, beacon_url, 1000)

    app = web.Application()
    app.router.add_get("/contact", contact)
    return app


def test_the_snippet_shows_a_reserved_pool_number_and_keeps_it_for_the_visit(
    browser: Browser, beacon: Pipeline
) -> None:
    with Server(contact_site(beacon.beacon_url)) as site:
        tab = browser.new_page()
        tab.goto(site.url + "/contact?utm_source=news&utm_medium=email")
        tab.wait_for_selector("#sales[data-tracker-number]")
        tab.wait_for_selector("#abroad[data-tracker-number]")
        number = tab.get_attribute("#sales", "data-tracker-number")
        assert number in POOL_NUMBERS
        assert tab.get_attribute("#sales", "href") == f"tel:{number}"
        national = f"({number[2:5]}) {number[5:8]}-{number[8:]}"
        assert tab.inner_text("#sales") == national
        assert tab.inner_text("#abroad") == f"+1 {number[2:5]}-{number[5:8]}-{number[8:]}"
        # Elements without the attribute are left as they are.
        assert tab.get_attribute("#support", "href") == "tel:+18005550199"

        # The same visit, on the next page load, shows the same number.
        tab.reload()
        tab.wait_for_selector("#sales[data-tracker-number]")
        assert tab.get_attribute("#sales", "data-tracker-number") == number

        # Another visitor (a fresh browser context: new ids) gets the pool's other number.
        other = browser.new_context().new_page()
        other.goto(site.url + "/contact")
        other.wait_for_selector("#sales[data-tracker-number]")
        assert other.get_attribute("#sales", "data-tracker-number") == next(
            n for n in POOL_NUMBERS if n != number
        )
