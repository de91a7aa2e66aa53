"""The analysts' page in a real headless Chromium, against a real worker on Kafka and ClickHouse.

A small fixed dataset goes through the real pipeline (posted to the beacon, stitched by the
worker); the page must then show, in its tables and in the plotly figures' data, the very rows
`tracker report ... --format json` and `tracker journey ... --format json` print, ask nothing of
any host but the console, raise no JavaScript error, and draw (checked on its screenshots).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image
from playwright.sync_api import Browser, ConsoleMessage, Page

from tests.conftest import Pipeline, component_env
from tests.integration.test_reports import RANGE, at, event, post, survey
from tracker.cli.kafka_local import LocalKafka

pytestmark = pytest.mark.e2e

VIEWPORT = {"width": 1280, "height": 900}
BAR_BLUE = (0x24, 0x58, 0xB3)  # the page's first colour: scorecard bars, funnel, touchpoints
FRICTION_RED = (0xC2, 0x3B, 0x3B)
PANELS = ("scorecard", "funnel", "paths", "attribution")


@dataclass
class Loaded:
    pipeline: Pipeline
    email: str


@pytest.fixture(scope="module")
def loaded(kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    data_dir = tmp_path_factory.mktemp("console-page")
    p = Pipeline(component_env(kafka.bootstrap, data_dir), data_dir).start()
    try:
        yield Loaded(p, load(p))
    finally:
        p.stop()


def load(p: Pipeline) -> str:
    """Three customers over days 0-3 of test_reports' range (times UTC, campaign medium):

    A  d0 09:00 page /landing (email), d0 09:05 page /pricing (email), d1 10:00 page /shop (paid),
       d1 10:02 purchase 100 (paid)
    B  d0 12:00 page /landing (paid), d0 12:03 page /pricing answered HTTP 500 (paid)
    C  d2 08:00 page /landing (email), d2 08:01 identify with an email, d2 08:02 page /pricing
       answered HTTP 500 (email); on another device C' d3 09:00 page /pricing (social), then
       d3 09:01 identify with the same email (C' merges into C), d3 09:03 purchase 50,
       d3 09:05 CES 2 (social)
    Returns C's email."""
    a, b, c, c2 = (f"{n}-{uuid.uuid4().hex[:8]}" for n in ("a", "b", "c", "c2"))
    email = f"c-{uuid.uuid4().hex[:6]}@example.com"
    error = {"status_code": "500"}
    post(p, event(at(0, 9, 0), "page_view", a, "/landing", "email"))
    post(p, event(at(0, 9, 5), "page_view", a, "/pricing", "email"))
    post(p, event(at(0, 12, 0), "page_view", b, "/landing", "cpc"))
    post(p, event(at(0, 12, 3), "page_view", b, "/pricing", "cpc", properties=error))
    post(p, event(at(1, 10, 0), "page_view", a, "/shop", "cpc"))
    post(p, event(at(1, 10, 2), "purchase", a, "/thanks", "cpc", value=100.0, currency="EUR"))
    post(p, event(at(2, 8, 0), "page_view", c, "/landing", "email"))
    post(p, event(at(2, 8, 1), "identify", c, "/landing", "email", email=email))
    post(p, event(at(2, 8, 2), "page_view", c, "/pricing", "email", properties=error))
    post(p, event(at(3, 9, 0), "page_view", c2, "/pricing", "social"))
    # C' is stitched as a customer of its own before the identify links it to C.
    assert p.wait_for("SELECT count() FROM touchpoints FINAL", "10", 60) == "10"
    post(p, event(at(3, 9, 1), "identify", c2, "/pricing", "social", email=email))
    post(p, event(at(3, 9, 3), "purchase", c2, "/thanks", "social", value=50.0, currency="EUR"))
    post(p, survey(at(3, 9, 5), c2, "/thanks", "social", "ces", 2))
    settled = (
        "SELECT (SELECT count() FROM touchpoints FINAL), "
        "(SELECT uniqExact(current_customer_id) FROM customer_touchpoints), "
        "(SELECT count() FROM frictions FINAL WHERE reason = 'error_page' AND NOT retracted), "
        "(SELECT count() FROM journeys FINAL WHERE conversions > 0)"
    )
    assert p.wait_for(settled, "13\t3\t2\t2", 90) == "13\t3\t2\t2"
    return email


def tracker_json(p: Pipeline, *args: str) -> list[dict[str, Any]]:
    """What a person gets from the command line, one JSON object per line."""
    done = subprocess.run(
        [sys.executable, "-m", "tracker", *args, "--format", "json"],
        env=p.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines() if line.strip()]


def cli_report(p: Pipeline, name: str, *flags: str) -> list[dict[str, Any]]:
    return tracker_json(p, "report", name, "--from", RANGE["from"], "--to", RANGE["to"], *flags)


@dataclass
class Watched:
    """A tab, with every request it made and every error it logged or threw."""

    tab: Page
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")


def open_page(browser: Browser, url: str) -> Watched:
    tab = browser.new_page(viewport=VIEWPORT)
    watched = Watched(tab)
    tab.on("request", lambda request: watched.requests.append(request.url))
    tab.on("console", watched.console)
    tab.on("pageerror", lambda error: watched.errors.append(f"page: {error}"))
    tab.goto(url)
    settle(tab)
    return watched


def settle(tab: Page) -> None:
    """Wait until no panel is loading (the page's own data-state on each section)."""
    tab.wait_for_selector("section[data-state=loading]", state="detached", timeout=60_000)


def cells(tab: Page, table: str) -> list[dict[str, Any]]:
    """A table's rows as the page holds them: each cell's report value (its data-value)."""
    rows: list[dict[str, str]] = tab.eval_on_selector_all(
        f"#{table} tbody tr",
        "(rows) => rows.map((row) => Object.fromEntries("
        "[...row.cells].map((cell) => [cell.dataset.key, cell.dataset.value])))",
    )
    return [{k: orjson.loads(v) for k, v in row.items()} for row in rows]


def shown_in_table(rows: list[dict[str, Any]], tab: Page, table: str) -> list[dict[str, Any]]:
    """The report's rows cut to the columns the page's table shows."""
    keys: list[str] = tab.eval_on_selector_all(
        f"#{table} tbody tr:first-child td", "(tds) => tds.map((td) => td.dataset.key)"
    )
    return [{k: row[k] for k in keys} for row in rows]


def figure(tab: Page, chart: str) -> list[dict[str, Any]]:
    """The plotly traces drawn in a chart (plotly keeps them on the element as .data)."""
    data: list[dict[str, Any]] = tab.evaluate(
        "(id) => JSON.parse(JSON.stringify(document.getElementById(id).data || []))", chart
    )
    return data


def has_colour(image: Image.Image, colour: tuple[int, int, int], at_least: int = 50) -> bool:
    """Whether at least ``at_least`` pixels are of ``colour``, give or take antialiasing."""
    near = sum(
        count
        for count, pixel in image.convert("RGB").getcolors(1 << 24) or ()
        if all(abs(a - b) <= 24 for a, b in zip(pixel, colour, strict=True))
    )
    return near >= at_least


def element_shot(tab: Page, selector: str, path: Path) -> Image.Image:
    tab.locator(selector).screenshot(path=path)
    return Image.open(path)


def test_the_page_draws_the_numbers_of_tracker_report(
    browser: Browser, loaded: Loaded, tmp_path: Path
) -> None:
    p = loaded.pipeline
    steps = "page_view:/landing,page_view:/pricing,purchase"
    url = f"{p.console_url}/?from={RANGE['from']}&to={RANGE['to']}&steps={steps}"
    page = open_page(browser, url)
    tab = page.tab
    assert {name: tab.get_attribute(f"#{name}", "data-state") for name in PANELS} == dict.fromkeys(
        PANELS, "ready"
    )

    # Scorecard by touchpoint: every cell is the report's value; the bars are its conversion
    # rates in percent, the error bars its Wilson interval.
    expected = cli_report(p, "scorecard")
    assert cells(tab, "scorecard-table") == shown_in_table(expected, tab, "scorecard-table")
    (bars,) = figure(tab, "scorecard-chart")
    assert bars["y"] == [f"{r['channel']} · {r['type']} · {r['name'] or '-'}" for r in expected]
    assert bars["x"] == pytest.approx([100 * r["conversion_rate"] for r in expected])
    assert bars["error_x"]["arrayminus"] == pytest.approx(
        [100 * (r["conversion_rate"] - r["conversion_ci_low"]) for r in expected]
    )
    assert bars["error_x"]["array"] == pytest.approx(
        [100 * (r["conversion_ci_high"] - r["conversion_rate"]) for r in expected]
    )
    # By channel, through the page's own control: paid is half of A and B, by hand.
    tab.select_option("#scorecard-by", "channel")
    settle(tab)
    shown = cells(tab, "scorecard-table")
    assert shown == shown_in_table(
        cli_report(p, "scorecard", "--by", "channel"), tab, "scorecard-table"
    )
    by_channel = {r["channel"]: r for r in shown}
    assert (by_channel["paid"]["customers"], by_channel["paid"]["conversion_rate"]) == (2, 0.5)
    assert by_channel["social"]["ces"] == 2.0

    # Funnel from the steps in the URL: three reach /landing and /pricing, two buy (A and C).
    expected = cli_report(p, "funnel", "--steps", steps)
    assert cells(tab, "funnel-table") == expected
    (chart,) = figure(tab, "funnel-chart")
    assert (chart["type"], chart["y"], chart["x"]) == ("funnel", steps.split(","), [3, 3, 2])

    # Paths as a Sankey: each path's count flows from its first touch, and every converting
    # path ends in the conversion node.
    expected = cli_report(p, "paths")
    assert cells(tab, "paths-table") == expected
    (sankey,) = figure(tab, "paths-chart")
    labels = sankey["node"]["label"]
    flows = list(
        zip(
            sankey["link"]["source"], sankey["link"]["target"], sankey["link"]["value"], strict=True
        )
    )
    into = {label: sum(v for _, t, v in flows if labels[t] == label) for label in labels}
    assert into["conversion"] == sum(r["conversions"] for r in expected) == 2
    assert into["no conversion"] == sum(r["paths"] - r["conversions"] for r in expected)
    out_of_first = sum(v for s, _, v in flows if labels[s].startswith("1. "))
    assert out_of_first == sum(r["paths"] for r in expected)

    # Attribution, all models side by side, with the page's seed: the table holds a channel a
    # row and a model a column; each model credits both conversions in all.
    expected = cli_report(p, "attribution", "--model", "all", "--seed", "1")
    table = {row["channel"]: row for row in cells(tab, "attribution-table")}
    for want in expected:
        assert table[want["channel"]][want["model"]] == want["conversions"]
    models = {r["model"] for r in expected}
    for model in models:
        assert sum(row[model] or 0 for row in table.values()) == pytest.approx(2.0)
    traces = {t["name"]: t for t in figure(tab, "attribution-chart")}
    assert len(traces) == len(models) == 8
    shapley = traces["shapley"]
    credited = {r["channel"]: r for r in expected if r["model"] == "shapley"}
    drawn = dict(zip(shapley["x"], shapley["y"], strict=True))
    assert {c: drawn[c] for c in credited} == {c: r["conversions"] for c, r in credited.items()}
    high = dict(zip(shapley["x"], shapley["error_y"]["array"], strict=True))
    assert [high[c] for c in credited] == pytest.approx(
        [r["conversions_ci_high"] - r["conversions"] for r in credited.values()]
    )

    # The journey map, found by the bare email, as `tracker journey` finds it.
    tab.fill("#journey-id", loaded.email)
    tab.click("#journey-form button")
    settle(tab)
    assert tab.get_attribute("#journey", "data-state") == "ready"
    (journey,) = tracker_json(p, "journey", loaded.email)
    assert journey["customer_id"] in tab.inner_text("#journey-people")
    people = tab.inner_text("#journey-people")
    # C's anonymous id, the email and C''s anonymous id, each once a customer of its own.
    assert len(journey["merged_customer_ids"]) == 2
    assert all(merged in people for merged in journey["merged_customer_ids"])
    assert sorted(journey["identifiers"]) == ["anon", "email"]
    assert len(journey["identifiers"]["anon"]) == 2
    assert journey["identifiers"]["email"][0][:12] in people
    touches, frictions, surveys = figure(tab, "journey-chart")
    timeline = journey["timeline"]
    assert len(touches["x"]) + len(surveys["x"]) == len(timeline) == 7
    assert set(touches["y"]) == {"email", "social"}  # one lane per channel
    assert [(f["y"], f["text"]) for f in _points(frictions)] == [("email", "error_page (low)")]
    assert [s["text"] for s in _points(surveys)] == ["CES 2"]
    layout = tab.evaluate("() => document.getElementById('journey-chart').layout.annotations")
    assert [a["text"] for a in layout] == _bands(timeline)

    # Nothing but the console was asked, and nothing went wrong in the page.
    assert page.requests and all(u.startswith(p.console_url + "/") for u in page.requests)
    assert any("/static/plotly-" in u for u in page.requests)
    assert page.errors == []

    # Screenshots: the page at the viewport's width, with the bars and the friction drawn.
    tab.locator("#scorecard").scroll_into_view_if_needed()
    whole = tmp_path / "console.png"
    tab.screenshot(path=whole, full_page=True)
    with Image.open(whole) as image:
        assert image.width == VIEWPORT["width"] and image.height > VIEWPORT["height"]
        assert len(image.convert("RGB").getcolors(1 << 16) or ()) > 50  # not blank
    with element_shot(tab, "#scorecard-chart", tmp_path / "scorecard.png") as image:
        assert has_colour(image, BAR_BLUE)
    with element_shot(tab, "#journey-chart", tmp_path / "journey.png") as image:
        assert has_colour(image, FRICTION_RED, 10)


def _points(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"x": x, "y": y, "text": text}
        for x, y, text in zip(trace["x"], trace["y"], trace["text"], strict=True)
    ]


def _bands(timeline: list[dict[str, Any]]) -> list[str]:
    """The stages in the order the customer went through them, a band for each change."""
    bands: list[str] = []
    for e in timeline:
        if e["stage"] and (not bands or bands[-1] != e["stage"]):
            bands.append(e["stage"])
    return bands


def test_an_empty_database_shows_empty_panels_and_no_error(
    browser: Browser, kafka: LocalKafka, tmp_path: Path
) -> None:
    p = Pipeline(component_env(kafka.bootstrap, tmp_path), tmp_path)
    p.components = [p.worker().start()]
    try:
        page = open_page(browser, p.console_url + "/")
        tab = page.tab
        for name in PANELS:
            assert tab.get_attribute(f"#{name}", "data-state") == "empty", name
            assert tab.inner_text(f"#{name}-message").startswith("No "), name
            assert figure(tab, f"{name}-chart") == []
            assert tab.eval_on_selector_all(f"#{name}-table tr", "(rows) => rows.length") == 0
        assert tab.get_attribute("#journey", "data-state") == "idle"
        assert page.errors == []

        # An unknown customer: the lookup says so (a 404, which Chromium logs as a failed
        # resource), and the page raises nothing.
        tab.fill("#journey-id", "nobody@example.com")
        tab.click("#journey-form button")
        settle(tab)
        assert tab.get_attribute("#journey", "data-state") == "empty"
        assert "no customer is known by nobody@example.com" in tab.inner_text("#journey-message")
        assert [e for e in page.errors if "404" not in e] == []
        assert all(u.startswith(p.console_url + "/") for u in page.requests)

        shot = tmp_path / "empty.png"
        tab.screenshot(path=shot, full_page=True)
        with Image.open(shot) as image:
            assert image.width == VIEWPORT["width"] and image.height >= VIEWPORT["height"]
            assert len(image.convert("RGB").getcolors(1 << 16) or ()) > 10  # text, not blank
    finally:
        p.stop()
