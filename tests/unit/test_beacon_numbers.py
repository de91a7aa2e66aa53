"""``POST /v1/numbers``: the beacon's number-pool reservations, on an in-memory log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from collectors.beacon import NumberReservations, create_app
from tests.conftest import scraped
from tracker.kafka.compacted import MemoryLog
from tracker.kafka.producer import MemoryPublisher
from tracker.settings import Settings

POOLS = {
    "spring": {
        "numbers": ["+18005550101", "+18005550102"],
        "fallback": "+18005550100",
        "campaign": {"source": "google", "medium": "cpc", "name": "spring"},
    }
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_HASH_SALT": "s",
            "TRACKER_CALL_NUMBER_POOLS": orjson.dumps(POOLS).decode(),
            "TRACKER_RETRY_AFTER_SECONDS": "7",
        }
    )


@pytest.fixture
def numbers(settings: Settings) -> NumberReservations:
    return NumberReservations(settings, memory=True)


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
async def client(
    settings: Settings, publisher: MemoryPublisher, numbers: NumberReservations
) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(settings, publisher, numbers))) as test_client:
        yield test_client


async def ask(client: TestClient[Any, Any], **body: Any) -> tuple[int, Any]:
    # t.js sends text/plain, which needs no CORS preflight.
    response = await client.post(
        "/v1/numbers", data=orjson.dumps(body), headers={"Content-Type": "text/plain"}
    )
    return response.status, await response.json()


async def dry_count(client: TestClient[Any, Any]) -> float:
    return await scraped(client, 'tracker_call_pool_dry_total{pool="spring"}')


async def test_a_session_gets_a_number_and_the_same_one_when_it_asks_again(
    client: TestClient[Any, Any], numbers: NumberReservations
) -> None:
    status, first = await ask(client, pool="spring", anonymous_id="a1", session_id="s1")
    assert status == 200 and first["reserved"] is True
    assert first["number"] == "+18005550101"
    assert first["national"] == "(800) 555-0101"
    assert first["international"] == "+1 800-555-0101"
    status, again = await ask(client, pool="spring", anonymous_id="a1", session_id="s1")
    assert status == 200 and again["number"] == first["number"]
    assert again["expires_at"] >= first["expires_at"]
    held = numbers.book.holder("+18005550101")
    assert held is not None and held.session_id == "s1" and held.anonymous_id == "a1"
    assert dict(held.campaign) == {"source": "google", "medium": "cpc", "name": "spring"}


async def test_the_page_campaign_is_carried_by_the_reservation(
    client: TestClient[Any, Any], numbers: NumberReservations
) -> None:
    campaign = {"source": "news", "medium": "email", "name": "autumn"}
    status, answer = await ask(client, pool="spring", session_id="s1", campaign=campaign)
    assert status == 200
    held = numbers.book.holder(answer["number"])
    assert held is not None and dict(held.campaign) == campaign


async def test_concurrent_requests_of_one_session_share_one_number(
    client: TestClient[Any, Any],
) -> None:
    answers = await asyncio.gather(*(ask(client, pool="spring", session_id="s1") for _ in range(5)))
    assert {a["number"] for _, a in answers} == {"+18005550101"}


async def test_a_dry_pool_answers_its_fallback_counts_it_and_raises_an_event(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    for session in ("s1", "s2"):
        assert (await ask(client, pool="spring", session_id=session))[0] == 200
    before = await dry_count(client)

    status, answer = await ask(client, pool="spring", anonymous_id="a3", session_id="s3")

    assert status == 200
    assert answer == {
        "pool": "spring",
        "number": "+18005550100",
        "national": "(800) 555-0100",
        "international": "+1 800-555-0100",
        "reserved": False,
        "reason": "pool_dry",
    }
    assert await dry_count(client) == before + 1
    [event] = publisher.touchpoints
    assert (event.type, event.name, event.source) == ("custom", "call_pool_dry", "server")
    assert (event.anonymous_id, event.session_id) == ("a3", "s3")
    assert event.properties == {
        "pool": "spring",
        "fallback_number": "+18005550100",
        "pool_size": "2",
    }
    assert event.campaign == {"source": "google", "medium": "cpc", "name": "spring"}


async def test_bad_requests_name_what_is_wrong(client: TestClient[Any, Any]) -> None:
    status, answer = await ask(client, pool="winter", session_id="s1")
    assert status == 404 and "winter" in answer["error"] and "spring" in answer["error"]
    status, answer = await ask(client, pool="spring")
    assert status == 400 and answer["errors"][0]["field"] == "session_id"
    status, answer = await ask(client, pool="spring", session_id="s1", colour="red")
    assert status == 400 and answer["errors"][0]["field"] == "colour"
    status, answer = await ask(client, pool="spring", session_id="s1", campaign={"x": "y"})
    assert status == 400 and answer["errors"][0]["field"].startswith("campaign")
    response = await client.post("/v1/numbers", data=b"{not json")
    assert response.status == 400


async def test_when_kafka_does_not_take_the_reservation_the_answer_is_503(
    client: TestClient[Any, Any], numbers: NumberReservations
) -> None:
    assert isinstance(numbers.log, MemoryLog)
    numbers.log.unavailable = True
    response = await client.post(
        "/v1/numbers", data=orjson.dumps({"pool": "spring", "session_id": "s1"})
    )
    # The wait configured in TRACKER_RETRY_AFTER_SECONDS.
    assert (response.status, response.headers["Retry-After"]) == (503, "7")
    assert numbers.book.holder("+18005550101") is None


async def test_without_reservations_the_beacon_answers_503_not_a_number(
    settings: Settings,
) -> None:
    async with TestClient(TestServer(create_app(settings, MemoryPublisher()))) as client:
        response = await client.post(
            "/v1/numbers", data=orjson.dumps({"pool": "spring", "session_id": "s1"})
        )
        answer = await response.json()
    assert response.status == 503 and "loading" in answer["error"]
    assert (response.headers["Retry-After"], answer["retry_after"]) == ("7", 7)
