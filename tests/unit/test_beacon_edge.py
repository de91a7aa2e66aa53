"""What the beacon does with hostile bodies, with an in-memory publisher in place of Kafka."""

from __future__ import annotations

import asyncio
import gzip
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from collectors.beacon import create_app
from tracker.deadletter import MAX_PAYLOAD_CHARS
from tracker.kafka.producer import MemoryPublisher
from tracker.privacy import hash_identifier
from tracker.settings import Settings

try:
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from backports import zstd  # type: ignore[no-redef,unused-ignore]


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
async def client(publisher: MemoryPublisher, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = Settings.from_env(
        {
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_HASH_SALT": "s",
            "TRACKER_BODY_READ_TIMEOUT_SECONDS": "0.5",
        }
    )
    async with TestClient(TestServer(create_app(settings, publisher))) as test_client:
        yield test_client


def event(**fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "page_view",
        "ts": datetime.now(UTC).isoformat(),
        **fields,
    }


async def test_a_zstd_body_that_is_not_zstd_is_a_400_with_a_reason(
    client: TestClient[Any, Any],
) -> None:
    response = await client.post(
        "/v1/events", data=orjson.dumps([event()]), headers={"Content-Encoding": "zstd"}
    )
    assert response.status == 400
    assert (await response.json())["error"].startswith("body is not valid zstd data")


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
async def test_a_compressed_batch_is_accepted(
    client: TestClient[Any, Any], publisher: MemoryPublisher, encoding: str
) -> None:
    raw = orjson.dumps([event()])
    body = gzip.compress(raw) if encoding == "gzip" else zstd.compress(raw)
    response = await client.post("/v1/events", data=body, headers={"Content-Encoding": encoding})
    assert response.status == 200 and len(publisher.touchpoints) == 1


@pytest.mark.parametrize("encoding", ["compress", "gzip, gzip", "xz"])
async def test_an_unknown_encoding_is_a_415_with_a_reason(
    client: TestClient[Any, Any], publisher: MemoryPublisher, encoding: str
) -> None:
    response = await client.post(
        "/v1/events", data=orjson.dumps([event()]), headers={"Content-Encoding": encoding}
    )
    assert response.status == 415
    assert "is not supported" in (await response.json())["error"]
    assert not publisher.touchpoints


async def test_a_body_short_of_its_content_length_gets_408_and_the_connection_closes(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /v1/events HTTP/1.1\r\nHost: beacon\r\nContent-Length: 100\r\n\r\n" + b'[{"a"'
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=30)  # read() ends when the server closes
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert "did not arrive" in orjson.loads(body)["error"]
    assert not publisher.touchpoints


async def test_a_thousand_deep_array_is_refused_and_its_dead_letter_is_bounded(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    response = await client.post("/v1/events", data=b"[" * 1000 + b"]" * 1000)
    assert response.status == 400
    [rejection] = (await response.json())["rejected"]
    assert rejection["errors"][0]["field"] == "$"
    assert "nests deeper than 32 levels" in rejection["errors"][0]["reason"]
    [letter] = publisher.dead_letters
    assert "nests deeper" in letter.reason and "<cut: nested deeper" in letter.payload


async def test_a_huge_refused_event_keeps_a_bounded_dead_letter(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    response = await client.post("/v1/events", json=[event(name="n" * 900_000)])
    assert response.status == 400
    [letter] = publisher.dead_letters
    assert len(letter.payload) < MAX_PAYLOAD_CHARS + 100
    assert letter.payload.endswith("more characters>")


async def test_an_email_in_a_refused_event_is_hashed_or_redacted_in_its_dead_letter(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    refused = event(
        ts="1899-12-31T23:59:59Z",
        email="Ada.Lovelace@Example.com",
        properties={"contact": "write to ada.lovelace@example.com"},
        notes="ada.lovelace@example.com",
    )
    response = await client.post("/v1/events", json=[refused])
    assert response.status == 400
    [letter] = publisher.dead_letters
    assert "lovelace" not in letter.payload.lower() and "lovelace" not in letter.reason.lower()
    assert orjson.loads(letter.payload)["email_hash"] == hash_identifier(
        "email", "ada.lovelace@example.com", "s"
    )
    assert letter.event_id == refused["event_id"]


async def test_a_pixel_with_an_out_of_range_timestamp_is_a_400(
    client: TestClient[Any, Any], publisher: MemoryPublisher
) -> None:
    response = await client.get(
        "/v1/p.gif", params={"ts": "0001-01-01T00:00:00+14:00", "email": "a@b.co"}
    )
    assert response.status == 400
    [rejection] = (await response.json())["rejected"]
    assert rejection["errors"][0]["field"] == "ts"
    [letter] = publisher.dead_letters
    assert "a@b.co" not in letter.payload


async def test_numbers_reads_its_body_by_the_same_rules(client: TestClient[Any, Any]) -> None:
    response = await client.post(
        "/v1/numbers", data=b"not zstd", headers={"Content-Encoding": "zstd"}
    )
    assert response.status == 400 and "zstd" in (await response.json())["error"]
