"""``GET /t.js``: the beacon serves the web snippet, cacheable and revalidated by ETag."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from collectors.beacon import create_app
from tracker.kafka.producer import MemoryPublisher
from tracker.settings import Settings


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_HASH_SALT": "s"})
    async with TestClient(TestServer(create_app(settings, MemoryPublisher()))) as test_client:
        yield test_client


async def test_the_snippet_is_served_as_javascript_with_an_etag(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/t.js")

    assert response.status == 200
    assert response.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert response.headers["Cache-Control"] == "public, max-age=300"
    assert response.headers["ETag"].startswith('"') and response.headers["ETag"].endswith('"')
    shipped = resources.files("collectors.beacon").joinpath("t.js").read_bytes()
    assert await response.read() == shipped
    assert b"tracker-js/0.1" in shipped


async def test_a_matching_if_none_match_gets_304_without_a_body(
    client: TestClient[Any, Any],
) -> None:
    etag = (await client.get("/t.js")).headers["ETag"]

    response = await client.get("/t.js", headers={"If-None-Match": etag})

    assert response.status == 304
    assert response.headers["ETag"] == etag
    assert await response.read() == b""


async def test_a_stale_etag_gets_the_script_again(client: TestClient[Any, Any]) -> None:
    response = await client.get("/t.js", headers={"If-None-Match": '"an-older-version"'})

    assert response.status == 200
    assert len(await response.read()) > 0


async def test_browsers_on_other_origins_may_load_it(client: TestClient[Any, Any]) -> None:
    response = await client.get("/t.js", headers={"Origin": "https://shop.example"})

    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
