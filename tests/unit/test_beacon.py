"""The beacon's HTTP behaviour, with an in-memory publisher in place of Kafka."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from collectors.beacon import create_app
from tests.conftest import scraped
from tracker.kafka.producer import MemoryPublisher
from tracker.settings import Settings


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
async def client(publisher: MemoryPublisher, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = Settings.from_env(
        {
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_HASH_SALT": "s",
            "TRACKER_MAX_BODY_BYTES": "4096",
            "TRACKER_MAX_EVENTS_PER_REQUEST": "5",
            "TRACKER_CORS_ORIGINS": "https://shop.example",
        }
    )
    async with TestClient(TestServer(create_app(settings, publisher))) as test_client:
        yield test_client


def event(**fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "page_view",
        "ts": "2026-11-21T10:00:00Z",
        **fields,
    }


async def test_a_batch_is_accepted_once_published(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    batch = [event(), event()]
    response = await client.post("/v1/events", json=batch)
    assert response.status == 200 and await response.json() == {"accepted": 2}
    assert [t.event_id for t in publisher.touchpoints] == [e["event_id"] for e in batch]


async def test_the_events_envelope_and_text_plain_bodies_work(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    response = await client.post(
        "/v1/events",
        data=orjson.dumps({"events": [event()]}),
        headers={"Content-Type": "text/plain"},
    )
    assert response.status == 200 and len(publisher.touchpoints) == 1


async def test_a_mixed_batch_accepts_the_good_and_names_the_bad(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    good, bad = event(), event(type="Page View")
    response = await client.post("/v1/events", json=[good, bad])
    body = await response.json()
    assert response.status == 400
    assert body["accepted"] == 1
    assert body["rejected"] == [
        {
            "index": 1,
            "event_id": bad["event_id"],
            "errors": [{"field": "type", "reason": "must match pattern ^[a-z][a-z0-9_]{0,63}$"}],
        }
    ]
    assert [t.event_id for t in publisher.touchpoints] == [good["event_id"]]
    assert [d.event_id for d in publisher.dead_letters] == [bad["event_id"]]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{oops", 400, "body is not valid JSON"),
        (b'{"event": {}}', 400, 'body must be a JSON array of events, or {"events": [...]}'),
        (b"[]", 400, "the batch has no events"),
        (orjson.dumps([event() for _ in range(6)]), 413, "at most 5 events per request, got 6"),
        (b"[" + b" " * 5000 + b"]", 413, "body is larger than 4096 bytes; send smaller batches"),
    ],
)
async def test_bad_requests_get_a_reason(
    client: TestClient[Any, Any], body: bytes, status: int, error: str
) -> None:
    response = await client.post("/v1/events", data=body)
    assert response.status == status
    assert (await response.json())["error"].startswith(error)


async def test_kafka_unavailable_means_503_with_retry_after(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_HASH_SALT": "s",
            "TRACKER_RETRY_AFTER_SECONDS": "7",
        }
    )
    publisher = MemoryPublisher(retry_after_seconds=settings.retry_after_seconds)
    publisher.unavailable = True
    async with TestClient(TestServer(create_app(settings, publisher))) as client:
        response = await client.post("/v1/events", json=[event()])
        # The wait configured in TRACKER_RETRY_AFTER_SECONDS, in the header and the body.
        assert (response.status, response.headers["Retry-After"]) == (503, "7")
        assert (await response.json())["retry_after"] == 7
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200


async def test_pixel_answers_a_gif_and_reads_the_query(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    response = await client.get(
        "/v1/p.gif?type=email_open&channel=email&utm_campaign=autumn&utm_source=news&p.list=weekly&email=A@b.co",
        headers={"Referer": "https://mail.example/"},
    )
    assert response.status == 200 and response.content_type == "image/gif"
    assert response.headers["Cache-Control"].startswith("no-store")
    [touchpoint] = publisher.touchpoints
    assert (touchpoint.type, touchpoint.channel) == ("email_open", "email")
    assert touchpoint.campaign == {"name": "autumn", "source": "news"}
    assert touchpoint.properties == {"list": "weekly"}
    assert touchpoint.page == {"url": "https://mail.example/"}
    assert touchpoint.email_hash and uuid.UUID(touchpoint.event_id)


async def test_invalid_pixel_is_a_dead_letter_without_the_clear_email(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    response = await client.get("/v1/p.gif?type=Bad!&email=a@b.co")
    assert response.status == 400
    [letter] = publisher.dead_letters
    assert "a@b.co" not in letter.payload and letter.reason.startswith("type:")


async def test_a_head_request_records_no_email_open(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    response = await client.head("/v1/p.gif?type=email_open")
    assert response.status == 405 and publisher.touchpoints == []


async def test_cors_preflight_for_allowed_origins_only(client: TestClient[Any, Any]) -> None:
    allowed = await client.options("/v1/events", headers={"Origin": "https://shop.example"})
    assert (
        allowed.status == 204
        and allowed.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    )
    other = await client.options("/v1/events", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_metrics_count_answers_by_route(client: TestClient[Any, Any]) -> None:
    answered = (
        'tracker_collector_requests_total{collector="beacon",route="/v1/events",status="200"}'
    )
    refused = 'tracker_collector_requests_total{collector="beacon",route="/v1/events",status="400"}'
    before = (await scraped(client, answered), await scraped(client, refused))

    await client.post("/v1/events", json=[event()])
    await client.post("/v1/events", json=[event()])
    await client.post("/v1/events", data=b"[]")

    after = (await scraped(client, answered), await scraped(client, refused))
    assert after == (before[0] + 2, before[1] + 1)
