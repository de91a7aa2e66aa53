"""The Segment-compatible API of the beacon and write keys, with an in-memory publisher."""

from __future__ import annotations

import base64
import gzip
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from agents.enrich import enrich
from collectors.beacon import create_app
from collectors.beacon.segment import (
    _UUID,
    CALLS,
    MESSAGE_ID_NAMESPACE,
    event_id_for,
    segment_field,
    to_event,
)
from tracker.errors import ConfigError, ValidationError
from tracker.kafka.producer import MemoryPublisher
from tracker.privacy import hash_identifier
from tracker.settings import Settings

SERVER_KEY = "srv-key-0123456789"
BROWSER_KEY = "web-key-0123456789"
REVOKED_KEY = "old-key-0123456789"
SOURCES = [
    {"name": "backend", "write_key": SERVER_KEY, "kind": "server", "channels": ["web", "email"]},
    {"name": "site", "write_key": BROWSER_KEY, "kind": "browser"},
    {"name": "old", "write_key": REVOKED_KEY, "kind": "server", "revoked": True},
    {
        "name": "slow",
        "write_key": "slow-key-0123456789",
        "kind": "server",
        "rate": 0.01,
        "burst": 2,
    },
]
BOT_AGENT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
RECEIVED = "2026-11-22T10:00:05+00:00"


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_HASH_SALT": "s",
            "TRACKER_SOURCES": orjson.dumps(SOURCES).decode(),
            **env,
        }
    )


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
async def client(publisher: MemoryPublisher, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(settings(tmp_path), publisher))) as test_client:
        yield test_client


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def track(**fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": "u1",
        "messageId": str(uuid.uuid4()),
        "timestamp": "2026-11-22T09:58:00Z",
        **fields,
    }


# The mapping, without HTTP.


def test_a_track_maps_field_by_field() -> None:
    message = {
        "type": "track",
        "event": "Order Completed",
        "messageId": "node-next-1732269480000-abc",
        "anonymousId": "a-1",
        "userId": 42,
        "originalTimestamp": "2026-11-22T09:58:00.000Z",
        "sentAt": "2026-11-22T09:58:30.000Z",
        "properties": {"revenue": "49.90", "currency": "eur", "items": [1, 2], "gift": True},
        "context": {
            "ip": "203.0.113.77",
            "userAgent": "Mozilla/5.0 (iPhone)",
            "traits": {"email": "Ada@Example.com"},
            "campaign": {"name": "autumn", "source": "news", "medium": "email"},
            "page": {"url": "https://shop.example/c", "referrer": "https://mail.example/"},
            "library": {"name": "analytics-node-next", "version": "3.1.0"},
            "screen": {"width": 390, "height": 844},
            "externalIds": [{"id": "0031", "type": "salesforce", "collection": "users"}],
        },
    }
    event, ip = to_event(message, RECEIVED)
    assert ip == "203.0.113.77"
    assert event == {
        "event_id": str(uuid.uuid5(MESSAGE_ID_NAMESPACE, "node-next-1732269480000-abc")),
        "type": "order_completed",
        "name": "Order Completed",
        "user_id": "42",
        "anonymous_id": "a-1",
        "ts": "2026-11-22T09:58:00.000Z",
        "sent_ts": "2026-11-22T09:58:30.000Z",
        "email": "Ada@Example.com",
        "properties": {
            "revenue": "49.90",
            "currency": "eur",
            "items": "[1,2]",
            "gift": "true",
            "crm.salesforce": "0031",
        },
        "value": 49.9,
        "currency": "EUR",
        "page": {"url": "https://shop.example/c", "referrer": "https://mail.example/"},
        "campaign": {"name": "autumn", "source": "news", "medium": "email"},
        "context": {
            "user_agent": "Mozilla/5.0 (iPhone)",
            "screen": "390x844",
            "library": "analytics-node-next/3.1.0",
        },
    }


def test_a_retried_message_keeps_its_event_id() -> None:
    assert event_id_for("abc-1") == event_id_for("abc-1") != event_id_for("abc-2")
    same = "0B8F3C2E-5D7A-4E1B-9C3F-2A6D8E4F1B7C"
    assert event_id_for(same) == same.lower()


def test_alias_links_the_previous_id_to_the_user() -> None:
    event, _ = to_event({"previousId": "anon-9", "userId": "u9"}, RECEIVED, call="alias")
    assert (event["type"], event["anonymous_id"], event["user_id"]) == ("alias", "anon-9", "u9")
    assert event["ts"] == RECEIVED  # no time given: the time received


def test_identify_keeps_contact_traits_hashed_and_crm_ids_but_no_other_trait() -> None:
    event, _ = to_event(
        {
            "userId": "u1",
            "traits": {
                "email": "a@b.example",
                "phone": "+14155550132",
                "name": "Ada",
                "crm.hubspot": "77",
            },
        },
        RECEIVED,
        call="identify",
    )
    assert event["properties"] == {"crm.hubspot": "77"}
    assert (event["email"], event["phone"]) == ("a@b.example", "+14155550132")


def test_group_names_the_account_without_making_it_a_person() -> None:
    event, _ = to_event(
        {"userId": "u1", "groupId": "acme", "traits": {"plan": "pro"}}, RECEIVED, call="group"
    )
    assert event["properties"] == {"group_id": "acme", "group.plan": "pro"}


def test_page_and_screen_take_their_names_and_page_properties() -> None:
    page, _ = to_event(
        {
            "anonymousId": "a",
            "name": "Pricing",
            "properties": {"url": "https://x.example/p", "title": "P"},
        },
        RECEIVED,
        call="page",
    )
    assert (page["type"], page["name"], page["page"]) == (
        "page_view",
        "Pricing",
        {"url": "https://x.example/p", "title": "P"},
    )
    screen, _ = to_event({"anonymousId": "a", "name": "Home"}, RECEIVED, call="screen")
    assert (screen["type"], screen["name"]) == ("screen_view", "Home")


def test_a_message_without_any_id_or_event_is_refused_in_segment_terms() -> None:
    with pytest.raises(ValidationError) as refused:
        to_event({"type": "track", "properties": {"revenue": "lots"}}, RECEIVED)
    fields = {e.field for e in refused.value.errors}
    assert fields == {"event", "userId", "properties.revenue"}


def test_reasons_name_fields_as_the_sender_did() -> None:
    with pytest.raises(ValidationError) as refused:
        to_event({"userId": "u", "context": {"page": "home"}}, RECEIVED, call="page")
    assert [e.field for e in refused.value.errors] == ["context.page"]
    assert segment_field("ts") == "timestamp"
    assert segment_field("page.url") == "context.page.url"
    assert segment_field("context.user_agent") == "context.userAgent"
    assert (segment_field("name", "track"), segment_field("name", "page")) == ("event", "name")


def test_sources_are_checked_when_read(tmp_path: Path) -> None:
    bad = [{"name": "x", "write_key": "short", "kind": "server"}]
    with pytest.raises(ConfigError, match="write_key must be a string of 8") as refused:
        Settings.from_env({"TRACKER_SOURCES": orjson.dumps(bad).decode()})
    assert "short" not in str(refused.value)  # a key never appears in an error
    path = tmp_path / "sources.json"
    path.write_text(orjson.dumps(SOURCES[:1]).decode())
    loaded = Settings.from_env({"TRACKER_SOURCES": str(path)}).sources
    assert [(s.name, s.kind, s.channels) for s in loaded] == [
        ("backend", "server", ("web", "email"))
    ]
    assert SERVER_KEY not in repr(loaded)


# Over HTTP.


async def test_a_batch_is_acknowledged_as_segment_does(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    batch = {"batch": [track(), track(type="identify", traits={"email": "a@b.example"})]}
    response = await client.post("/v1/batch", json=batch, headers=basic(SERVER_KEY))
    assert (response.status, await response.json()) == (200, {"success": True})
    identify = publisher.touchpoints[1]
    assert identify.type == "identify"
    assert identify.email_hash == hash_identifier("email", "a@b.example", "s")
    assert {t.source for t in publisher.touchpoints} == {"server"}


async def test_the_call_type_comes_from_the_path(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = {"userId": "u1", "name": "Home", "writeKey": BROWSER_KEY}  # analytics.js puts it here
    response = await client.post("/v1/screen", json=body)
    assert response.status == 200
    assert publisher.touchpoints[0].type == "screen_view"
    assert publisher.touchpoints[0].source == "web_beacon"  # a browser source is not trusted


async def test_a_server_source_is_never_a_bot_but_a_browser_source_can_be(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    message = track(context={"userAgent": BOT_AGENT})
    assert (await client.post("/v1/track", json=message, headers=basic(SERVER_KEY))).status == 200
    assert (await client.post("/v1/track", json=message, headers=basic(BROWSER_KEY))).status == 200
    server, browser = (enrich(t) for t in publisher.touchpoints)
    assert (server.is_bot, browser.is_bot) == (False, True)


async def test_the_sending_library_is_not_taken_for_the_person(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    headers = {**basic(BROWSER_KEY), "User-Agent": "analytics-python/2.4.0"}
    assert (await client.post("/v1/track", json=track(), headers=headers)).status == 200
    assert not enrich(publisher.touchpoints[0]).is_bot
    assert "user_agent" not in publisher.touchpoints[0].context


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "a write key is required"),
        (basic("nobody-knows-this-key"), "not one of this collector's sources"),
        (basic(REVOKED_KEY), "source 'old' was revoked"),
        ({"Authorization": "Bearer x"}, "must be HTTP basic"),
    ],
)
async def test_unknown_missing_or_revoked_keys_get_401_with_a_reason(
    client: TestClient[Any, Any], publisher: MemoryPublisher, headers: dict[str, str], reason: str
) -> None:
    response = await client.post("/v1/track", json=track(), headers=headers)
    body = await response.json()
    assert response.status == 401 and reason in body["message"]
    assert body["code"] == "unauthorized" and "nobody-knows" not in body["message"]
    assert not publisher.touchpoints and not publisher.dead_letters


async def test_a_source_past_its_rate_gets_429_with_retry_after(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    headers = basic("slow-key-0123456789")
    answers = [(await client.post("/v1/track", json=track(), headers=headers)) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    assert int(answers[2].headers["Retry-After"]) >= 1
    assert (await answers[2].json())["code"] == "rate_limited"
    other = await client.post("/v1/track", json=track(), headers=basic(SERVER_KEY))
    assert other.status == 200  # each key has its own bucket
    assert len(publisher.touchpoints) == 3


async def test_refused_messages_get_reasons_and_dead_letters_the_rest_is_stored(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    good = track()
    bad = track(timestamp="yesterday", context={"traits": {"email": "secret@example.com"}})
    unclaimed = track(integrations={"Tracker": {"channel": "phone"}})
    response = await client.post(
        "/v1/batch", json={"batch": [good, bad, unclaimed]}, headers=basic(SERVER_KEY)
    )
    body = await response.json()
    assert response.status == 400 and body["code"] == "invalid_request"
    assert body["accepted"] == 1
    assert [(r["index"], r["errors"][0]["field"]) for r in body["rejected"]] == [
        (1, "timestamp"),
        (2, "integrations.Tracker.channel"),
    ]
    assert [t.event_id for t in publisher.touchpoints] == [good["messageId"]]
    assert len(publisher.dead_letters) == 2
    assert "secret@example.com" not in publisher.dead_letters[0].payload
    assert "yesterday" in publisher.dead_letters[0].payload


async def test_the_specs_size_limits_apply(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    big = track(properties={"blob": "x" * 33_000})
    single = await client.post("/v1/track", json=big, headers=basic(SERVER_KEY))
    assert single.status == 413 and "32 KB" in (await single.json())["message"]
    in_batch = await client.post(
        "/v1/batch", json={"batch": [big, track()]}, headers=basic(SERVER_KEY)
    )
    body = await in_batch.json()
    assert in_batch.status == 400 and "32 KB" in body["rejected"][0]["errors"][0]["reason"]
    huge = {"batch": [track(properties={"blob": "x" * 30_000}) for _ in range(20)]}
    too_big = await client.post("/v1/batch", json=huge, headers=basic(SERVER_KEY))
    assert too_big.status == 413 and "500 KB" in (await too_big.json())["message"]
    assert len(publisher.touchpoints) == 1


async def test_kafka_unavailable_is_503_with_retry_after(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    publisher.unavailable = True
    response = await client.post("/v1/track", json=track(), headers=basic(SERVER_KEY))
    assert response.status == 503 and int(response.headers["Retry-After"]) >= 1


async def test_without_sources_the_api_is_open(publisher: MemoryPublisher, tmp_path: Path) -> None:
    open_settings = Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_HASH_SALT": "s"})
    async with TestClient(TestServer(create_app(open_settings, publisher))) as open_client:
        response = await open_client.post(
            "/v1/track", json=track(), headers=basic("anything-at-all")
        )
        assert response.status == 200
    assert publisher.touchpoints[0].source == "web_beacon"


# /v1/events takes the same write keys, optionally.


def touchpoint_event(**fields: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "type": "signup", "ts": "2026-11-22T09:58:00Z", **fields}


async def test_a_backend_posting_events_with_its_key_is_not_a_bot(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    headers = {**basic(SERVER_KEY), "User-Agent": "Python-urllib/3.11"}
    assert (
        await client.post("/v1/events", json=[touchpoint_event()], headers=headers)
    ).status == 200
    unkeyed = {"User-Agent": "Python-urllib/3.11"}
    assert (
        await client.post("/v1/events", json=[touchpoint_event()], headers=unkeyed)
    ).status == 200
    keyed, open_ = publisher.touchpoints
    assert (keyed.source, enrich(keyed).is_bot) == ("server", False)
    assert (open_.source, enrich(open_).is_bot) == ("web_beacon", True)
    assert keyed.context["source_name"] == "backend"


async def test_events_with_a_wrong_key_or_an_unclaimed_channel_are_refused(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    wrong = await client.post(
        "/v1/events", json=[touchpoint_event()], headers=basic("nobody-knows-this-key")
    )
    assert wrong.status == 401 and "write key" in (await wrong.json())["error"]
    unclaimed = await client.post(
        "/v1/events", json=[touchpoint_event(channel="phone")], headers=basic(SERVER_KEY)
    )
    body = await unclaimed.json()
    assert unclaimed.status == 400
    assert body["rejected"][0]["errors"][0]["field"] == "channel"
    assert "may claim only the channels web, email" in body["rejected"][0]["errors"][0]["reason"]
    assert not publisher.touchpoints and len(publisher.dead_letters) == 1


async def test_a_gzipped_batch_is_read_and_a_corrupt_one_refused(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    body = orjson.dumps({"batch": [track()]})
    headers = {**basic(SERVER_KEY), "Content-Encoding": "gzip", "Content-Type": "application/json"}
    ok = await client.post("/v1/batch", data=gzip.compress(body), headers=headers)
    assert (ok.status, await ok.json()) == (200, {"success": True})
    corrupt = await client.post("/v1/batch", data=b"not gzip at all", headers=headers)
    answer = await corrupt.json()
    assert corrupt.status == 400 and "gzip" in answer["message"] and answer["code"]
    assert len(publisher.touchpoints) == 1


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_segment_keys = st.sampled_from(
    [
        "type",
        "event",
        "userId",
        "anonymousId",
        "previousId",
        "groupId",
        "messageId",
        "name",
        "timestamp",
        "originalTimestamp",
        "sentAt",
        "properties",
        "traits",
        "context",
        "integrations",
    ]
)
_messages = st.dictionaries(_segment_keys, _json, max_size=8)


@given(message=_messages, call=st.sampled_from([None, *CALLS]))
@hypothesis_settings(max_examples=400, deadline=None)
def test_any_message_maps_or_is_refused_with_reasons(
    message: dict[str, Any], call: str | None
) -> None:
    try:
        event, _ = to_event(message, RECEIVED, call)
    except ValidationError as exc:
        assert exc.errors and all(e.field and e.reason for e in exc.errors)
        return
    assert _UUID.match(event["event_id"]) and event["ts"]


@given(batch=st.lists(_messages, min_size=1, max_size=4))
@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
async def test_no_message_makes_the_beacon_fail(
    client: TestClient[Any, Any], batch: list[dict[str, Any]]
) -> None:
    response = await client.post("/v1/batch", json={"batch": batch}, headers=basic(SERVER_KEY))
    assert response.status in (200, 400), await response.text()
    body = await response.json()
    assert body["success"] is (response.status == 200)
