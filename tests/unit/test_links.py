"""Short links without Kafka: link rules, redirects, the management API and click recording."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agents.clicks import expand_batches
from agents.ingest import RawMessage
from collectors.links import create_app, parse_link
from collectors.links._app import LINKS_KEY
from collectors.links._model import device_and_os, generate_slug, languages, validate_slug
from tracker.errors import ValidationError
from tracker.kafka.producer import MemoryPublisher
from tracker.ratelimit import TokenBuckets
from tracker.settings import Settings
from tracker.touchpoint import Touchpoint

TOKEN = "s3cret-token"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
ANDROID = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36"
WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
IPAD = "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15"


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_HASH_SALT": "unit-salt",
            "TRACKER_LINKS_BASE_URL": "https://go.example",
            **env,
        }
    )


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_app(settings(tmp_path, TRACKER_API_TOKEN=TOKEN), MemoryPublisher())
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def create(client: TestClient[web.Request, web.Application], **body: object) -> dict:  # type: ignore[type-arg]
    response = await client.post("/api/links", json=body, headers=AUTH)
    assert response.status == 201, await response.text()
    created: dict = await response.json()  # type: ignore[type-arg]
    return created


async def drained(client: TestClient[web.Request, web.Application]) -> list[Touchpoint]:
    """Every click's touchpoint, as the worker makes them from the batches the service's
    background task handed the publisher."""
    links = client.app[LINKS_KEY]  # type: ignore[index]
    async with asyncio.timeout(10):
        while links.clicks.depth():  # noqa: ASYNC110 - polling a counter, no event to wait on
            await asyncio.sleep(0.01)
    publisher = links.publisher
    assert isinstance(publisher, MemoryPublisher)
    batches = [RawMessage(value, "clicks", 0, n) for n, value in enumerate(publisher.click_batches)]
    touchpoints, rejected = expand_batches(batches, "unit-salt")
    assert rejected == []
    return [touchpoint for touchpoint, _ in touchpoints]


# -- pure rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "ok"),
    [
        ("spring-sale", True),
        ("A1b2C3d", True),
        ("api", False),
        ("healthz", False),
        ("Metrics", False),
        ("-dash", False),
        ("has/slash", False),
        ("has space", False),
        ("x" * 65, False),
        ("", False),
    ],
)
def test_slug_rules(slug: str, ok: bool) -> None:
    assert (validate_slug(slug) is None) is ok


def test_generated_slugs_are_long_random_and_avoid_taken_ones() -> None:
    taken = {generate_slug(set()) for _ in range(2000)}
    assert len(taken) == 2000  # no collisions among 2000 draws
    assert all(len(s) == 7 and s.isalnum() for s in taken)
    assert generate_slug(taken) not in taken


@pytest.mark.parametrize(
    "target",
    [
        "javascript:alert(1)",
        "data:text/html;base64,PHNjcmlwdD4=",
        "ftp://files.example/x",
        "//evil.example/path",
        "/relative/path",
        "https://",
        "https://exa mple.com\r\nSet-Cookie: x=1",
        "vbscript:msgbox(1)",
        "https://exämple.com/",
    ],
)
def test_targets_other_than_absolute_http_urls_are_refused(target: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_link({"target": target}, slug="x1")
    assert caught.value.errors[0].field == "target"


def test_utm_is_merged_and_click_id_and_query_are_appended() -> None:
    link = parse_link(
        {
            "target": "https://shop.example/p?color=red&utm_source=old",
            "utm": {"source": "newsletter", "medium": "email", "campaign": "spring"},
        },
        slug="spring",
    )
    resolution = link.resolve(time.time(), 0, passed_query=[("ref", "a b")], click_id="CID")
    query = parse_qs(urlsplit(resolution.location).query)
    assert resolution.status == 302
    assert query == {
        "color": ["red"],
        "utm_source": ["newsletter"],
        "utm_medium": ["email"],
        "utm_campaign": ["spring"],
        "ref": ["a b"],
        "tc_id": ["CID"],
    }


def test_query_passes_through_only_when_the_link_allows() -> None:
    link = parse_link({"target": "https://a.example/", "forward_query": False}, slug="nofwd")
    location = link.resolve(time.time(), 0, passed_query=[("x", "1")], click_id="c").location
    assert location == "https://a.example/?tc_id=c"


def test_device_os_and_language_targeting_first_match_wins() -> None:
    link = parse_link(
        {
            "target": "https://app.example/web",
            "rules": [
                {"target": "https://apps.apple.example/app", "os": ["ios"]},
                {"target": "https://play.example/app", "os": ["android"], "devices": ["mobile"]},
                {"target": "https://app.example/fr", "languages": ["fr"]},
            ],
        },
        slug="app",
    )

    def where(ua: str, lang: str = "") -> str:
        return link.resolve(time.time(), 0, ua, lang).location

    assert where(IPHONE, "fr-FR") == "https://apps.apple.example/app"
    assert where(ANDROID) == "https://play.example/app"
    assert where(WINDOWS, "de-DE,fr;q=0.8") == "https://app.example/fr"
    assert where(WINDOWS, "de-DE,fr;q=0") == "https://app.example/web"
    assert where(MAC, "en-US") == "https://app.example/web"


def test_user_agent_and_language_parsing() -> None:
    assert device_and_os(IPHONE) == ("mobile", "ios")
    assert device_and_os(IPAD) == ("tablet", "ios")
    assert device_and_os(ANDROID) == ("mobile", "android")
    assert device_and_os(WINDOWS) == ("desktop", "windows")
    assert device_and_os(MAC) == ("desktop", "macos")
    assert languages("fr-CH, fr;q=0.9, en;q=0.8, *;q=0.5") == ("fr-ch", "fr", "en")


def test_expiry_window_and_click_limit() -> None:
    now = datetime.now(UTC)
    link = parse_link(
        {
            "target": "https://a.example/",
            "valid_since": (now - timedelta(hours=1)).isoformat(),
            "valid_until": (now + timedelta(hours=1)).isoformat(),
            "max_clicks": 2,
        },
        slug="window",
    )
    t = now.timestamp()
    assert link.resolve(t, 1).status == 302
    assert (link.resolve(t, 2).status, link.resolve(t, 2).reason) == (410, "exhausted")
    assert link.resolve(t + 7200, 0).reason == "expired"
    assert (link.resolve(t - 7200, 0).status, link.resolve(t - 7200, 0).reason) == (
        404,
        "not_yet_valid",
    )
    with_fallback = parse_link({"fallback_url": "https://a.example/over"}, existing=link)
    gone = with_fallback.resolve(t + 7200, 0, click_id="c")
    assert (gone.status, gone.location, gone.counted) == (302, "https://a.example/over", False)


def test_every_bad_field_is_named() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_link(
            {
                "target": "https://a.example/",
                "status_code": 303,
                "max_clicks": 0,
                "valid_until": "tomorrow",
                "rules": [{"target": "https://b.example/", "os": ["beos"]}],
                "colour": "red",
            },
            slug="bad",
        )
    fields = {e.field for e in caught.value.errors}
    assert fields == {"colour", "status_code", "max_clicks", "valid_until", "rules.0.os"}


def test_token_bucket_refills_at_its_rate() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3)
    assert [buckets.take("ip", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("ip", now=0.0) == pytest.approx(0.5)
    assert buckets.take("other", now=0.0) == 0.0
    assert buckets.take("ip", now=0.6) == 0.0


# -- the service over HTTP ----------------------------------------------------------------------


async def test_create_then_follow_records_a_click_touchpoint(
    client: TestClient[web.Request, web.Application],
) -> None:
    created = await create(
        client,
        target="https://shop.example/autumn",
        slug="autumn",
        tags=["fall", "print"],
        channel="email",
        campaign="autumn-2026",
        utm={"source": "newsletter", "medium": "email", "campaign": "autumn"},
    )
    assert created["short_url"] == "https://go.example/autumn"

    response = await client.get(
        "/autumn?qr=1&ref=flyer",
        allow_redirects=False,
        headers={
            "User-Agent": IPHONE,
            "Referer": "https://mail.example/",
            "X-Forwarded-For": "1.1.1.1",
        },
    )
    assert response.status == 302
    location = response.headers["Location"]
    query = parse_qs(urlsplit(location).query)
    assert query["ref"] == ["flyer"] and "qr" not in query and len(query["tc_id"][0]) >= 12

    [touchpoint] = await drained(client)
    assert (touchpoint.type, touchpoint.source, touchpoint.channel) == (
        "link_click",
        "shortlink",
        "email",
    )
    assert touchpoint.click_id == query["tc_id"][0]
    assert touchpoint.campaign == {"source": "newsletter", "medium": "email", "name": "autumn"}
    assert touchpoint.properties["slug"] == "autumn"
    assert touchpoint.properties["tags"] == "fall,print"
    assert touchpoint.properties["qr"] == "true"
    assert touchpoint.page == {"url": location, "referrer": "https://mail.example/"}
    assert touchpoint.context["ip"] == "127.0.0.0"  # truncated; X-Forwarded-For not trusted
    assert touchpoint.context["user_agent"] == IPHONE


@pytest.mark.parametrize("code", [301, 302, 307, 308])
async def test_each_link_answers_with_its_status_code_to_get_and_head(
    client: TestClient[web.Request, web.Application], code: int
) -> None:
    await create(client, target="https://a.example/", slug=f"code{code}", status_code=code)
    for method in ("GET", "HEAD"):
        response = await client.request(method, f"/code{code}", allow_redirects=False)
        assert response.status == code
        assert response.headers["Location"].startswith("https://a.example/?tc_id=")
    head_click = (await drained(client))[-1]
    assert head_click.properties["http_method"] == "HEAD"


async def test_unknown_slug_is_a_404_page_and_counted(
    client: TestClient[web.Request, web.Application],
) -> None:
    answered = 'tracker_collector_requests_total{collector="links",route="/{slug}",status="404"}'
    before = await _metric(client, 'tracker_link_clicks_total{outcome="unknown_slug"}')
    answers_before = await _metric(client, answered)
    response = await client.get("/nope", allow_redirects=False)
    assert response.status == 404 and "does not exist" in await response.text()
    after = await _metric(client, 'tracker_link_clicks_total{outcome="unknown_slug"}')
    assert after == before + 1
    assert await _metric(client, answered) == answers_before + 1
    assert (await drained(client)) == []


async def test_click_limit_then_fallback_or_410(
    client: TestClient[web.Request, web.Application],
) -> None:
    await create(client, target="https://a.example/", slug="twice", max_clicks=2)
    statuses = [(await client.get("/twice", allow_redirects=False)).status for _ in range(3)]
    assert statuses == [302, 302, 410]
    # HEAD requests (previews, scanners) do not use up the limit
    await create(client, target="https://a.example/", slug="once", max_clicks=1)
    assert (await client.head("/once", allow_redirects=False)).status == 302
    assert (await client.get("/once", allow_redirects=False)).status == 302
    await client.patch(
        "/api/links/once", json={"fallback_url": "https://a.example/sold-out"}, headers=AUTH
    )
    response = await client.get("/once", allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (302, "https://a.example/sold-out")
    outcomes = [t.properties["outcome"] for t in (await drained(client))]
    assert outcomes.count("exhausted") == 2


async def test_update_disable_and_delete(client: TestClient[web.Request, web.Application]) -> None:
    await create(client, target="https://a.example/old", slug="moving")
    changed = await client.patch(
        "/api/links/moving", json={"target": "https://a.example/new"}, headers=AUTH
    )
    assert changed.status == 200
    follow = await client.get("/moving", allow_redirects=False)
    assert follow.headers["Location"].startswith("https://a.example/new?")

    await client.patch("/api/links/moving", json={"disabled": True}, headers=AUTH)
    assert (await client.get("/moving", allow_redirects=False)).status == 410

    assert (await client.delete("/api/links/moving", headers=AUTH)).status == 204
    assert (await client.get("/moving", allow_redirects=False)).status == 404
    assert (await client.get("/api/links/moving", headers=AUTH)).status == 404


async def test_management_needs_the_token(client: TestClient[web.Request, web.Application]) -> None:
    anonymous = await client.post("/api/links", json={"target": "https://a.example/"})
    assert anonymous.status == 401
    assert "Bearer" in (await anonymous.json())["error"]
    wrong = await client.get("/api/links", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401


async def test_without_a_configured_token_writes_are_refused(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path), MemoryPublisher())
    async with TestClient(TestServer(app)) as anonymous:
        response = await anonymous.post("/api/links", json={"target": "https://a.example/"})
        assert response.status == 403
        assert "TRACKER_API_TOKEN" in (await response.json())["error"]


async def test_create_rejects_taken_reserved_and_unsafe(
    client: TestClient[web.Request, web.Application],
) -> None:
    await create(client, target="https://a.example/", slug="taken")
    taken = await client.post(
        "/api/links", json={"target": "https://b.example/", "slug": "taken"}, headers=AUTH
    )
    assert taken.status == 409
    reserved = await client.post(
        "/api/links", json={"target": "https://b.example/", "slug": "api"}, headers=AUTH
    )
    assert reserved.status == 400
    assert (await reserved.json())["errors"][0]["field"] == "slug"
    unsafe = await client.post("/api/links", json={"target": "javascript:alert(1)"}, headers=AUTH)
    assert unsafe.status == 400 and "javascript" in (await unsafe.json())["error"]


async def test_generated_slug_and_listing(client: TestClient[web.Request, web.Application]) -> None:
    created = await create(client, target="https://a.example/", tags=["x"])
    assert len(created["slug"]) == 7
    listed = await (await client.get("/api/links?tag=x", headers=AUTH)).json()
    assert [link["slug"] for link in listed["links"]] == [created["slug"]]


async def test_management_api_is_rate_limited(tmp_path: Path) -> None:
    app = create_app(
        settings(
            tmp_path,
            TRACKER_API_TOKEN=TOKEN,
            TRACKER_LINKS_API_BURST="3",
            TRACKER_LINKS_API_RATE="0.1",
        ),
        MemoryPublisher(),
    )
    async with TestClient(TestServer(app)) as limited:
        statuses = [(await limited.get("/api/links", headers=AUTH)).status for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        last = await limited.get("/api/links", headers=AUTH)
        assert int(last.headers["Retry-After"]) >= 1
        assert "too many" in (await last.json())["error"]


async def test_qr_codes_and_openapi(client: TestClient[web.Request, web.Application]) -> None:
    await create(client, target="https://a.example/", slug="poster")
    svg = await client.get("/api/links/poster/qr.svg", headers=AUTH)
    assert svg.content_type == "image/svg+xml" and b"<svg" in await svg.read()
    png = await client.get("/api/links/poster/qr.png", headers=AUTH)
    assert png.content_type == "image/png" and (await png.read()).startswith(b"\x89PNG")
    spec = await (await client.get("/api/openapi.json")).json()
    assert spec["openapi"].startswith("3.") and "/api/links/{slug}" in spec["paths"]


async def test_redirects_never_wait_for_kafka(tmp_path: Path) -> None:
    publisher = MemoryPublisher()
    app = create_app(settings(tmp_path, TRACKER_API_TOKEN=TOKEN), publisher)
    async with TestClient(TestServer(app)) as kafka_down:
        await create(kafka_down, target="https://a.example/", slug="down")
        publisher.unavailable = True
        for _ in range(5):
            assert (await kafka_down.get("/down", allow_redirects=False)).status == 302
        links = kafka_down.app[LINKS_KEY]  # type: ignore[index]
        assert links.clicks.depth() == 5  # waiting, not lost
        publisher.unavailable = False
        assert len(await drained(kafka_down)) == 5


async def _metric(client: TestClient[web.Request, web.Application], sample: str) -> float:
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_link_changes_and_deletes_become_versioned_rows() -> None:
    from agents.links import mirror_links
    from tracker.store.sink import MemorySink
    from tracker.store.tables import LINKS

    sink = MemorySink()
    first = parse_link({"target": "https://a.example/", "utm": {"source": "x"}}, slug="m1")
    second = parse_link({"target": "https://b.example/"}, existing=first)
    records = [
        (link.slug, orjson.dumps(link.to_record()), 1_800_000_000_000) for link in (first, second)
    ]
    await mirror_links(sink, [*records, ("m1", None, 1_800_000_000_500)])

    rows = sorted(sink.rows.values(), key=lambda row: row["version"])
    named = [LINKS.named(row) for row in rows]
    assert [(r["target"], r["deleted"]) for r in named] == [
        ("https://a.example/", False),
        ("https://b.example/", False),
        ("", True),
    ]
    assert named[0]["utm_source"] == "x"
    assert named[0]["version"] < named[1]["version"] < named[2]["version"]


def test_click_counts_add_up_over_instances_and_ignore_stale_echoes_of_our_own() -> None:
    from collectors.links import LinkTable

    table = LinkTable(instance="me")
    table.apply_link(
        "s", orjson.dumps(parse_link({"target": "https://a.example/"}, slug="s").to_record())
    )
    table.apply_count("s/other", orjson.dumps({"slug": "s", "clicks": 5}))
    table.count_click("s")
    table.count_click("s")
    table.apply_count("s/me", orjson.dumps({"slug": "s", "clicks": 1}))  # our own, older
    assert table.clicks("s") == 7
    assert table.dirty == {"s"}
    table.apply_link("s", None)
    assert (table.get("s"), table.clicks("s")) == (None, 0)


class _LoadingState:
    """Link state still reading the topic: nothing in the table yet."""

    def __init__(self) -> None:
        from collectors.links import LinkTable

        self.table = LinkTable()
        self.loaded = self.ready = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


async def test_while_links_load_a_slug_is_unavailable_not_unknown(tmp_path: Path) -> None:
    configured = settings(tmp_path, TRACKER_RETRY_AFTER_SECONDS="7")
    app = create_app(configured, MemoryPublisher(), _LoadingState())  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as loading:
        response = await loading.get("/anything", allow_redirects=False)
        assert (response.status, response.headers["Retry-After"]) == (503, "7")
        assert (await loading.get("/readyz")).status == 503
