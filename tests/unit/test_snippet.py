"""``GET /t.js`` and ``/t/<version>.js``: the beacon serves the web snippet minified,
compressed, cacheable, and pinnable with a documented SRI hash."""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import brotli
import pytest
from aiohttp.test_utils import TestClient, TestServer

from collectors.beacon import create_app
from tracker.kafka.producer import MemoryPublisher
from tracker.settings import Settings


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_HASH_SALT": "s"})
    # Raw bodies: the compressed bytes as they travel, not as a client would decode them.
    server = TestServer(create_app(settings, MemoryPublisher()))
    async with TestClient(server, auto_decompress=False) as test_client:
        yield test_client


ROOT = Path(__file__).resolve().parents[2]
SHIPPED = resources.files("collectors.beacon").joinpath("t.min.js").read_bytes()


async def test_the_snippet_is_served_as_javascript_with_an_etag(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/t.js", headers={"Accept-Encoding": "identity"})

    assert response.status == 200
    assert response.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert response.headers["Cache-Control"] == "public, max-age=300"
    assert response.headers["ETag"].startswith('"') and response.headers["ETag"].endswith('"')
    assert await response.read() == SHIPPED
    assert b"tracker-js/0.1" in SHIPPED


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
    assert response.headers["Vary"] == "Accept-Encoding, Origin"  # caches keep both apart


def test_the_snippet_weighs_at_most_3_kb_gzipped() -> None:
    assert len(gzip.compress(SHIPPED, compresslevel=9)) <= 3 * 1024


@pytest.mark.parametrize(
    ("accept", "coding", "decode"),
    [
        ("gzip, deflate, br", "br", brotli.decompress),
        ("gzip, deflate", "gzip", gzip.decompress),
        ("br;q=0, gzip", "gzip", gzip.decompress),
    ],
)
async def test_it_travels_compressed_as_the_browser_asks(
    client: TestClient[Any, Any], accept: str, coding: str, decode: Any
) -> None:
    response = await client.get("/t.js", headers={"Accept-Encoding": accept})
    raw = await response.read()
    assert response.headers["Content-Encoding"] == coding
    assert "Accept-Encoding" in response.headers["Vary"]
    assert decode(raw) == SHIPPED
    assert len(raw) <= 3 * 1024


async def test_the_versioned_url_is_immutable_and_matches_its_integrity(
    client: TestClient[Any, Any],
) -> None:
    described = await (await client.get("/t.json")).json()
    response = await client.get(described["url"], headers={"Accept-Encoding": "identity"})
    body = await response.read()
    assert response.status == 200
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    digest = base64.b64encode(hashlib.sha384(body).digest()).decode()
    assert described["integrity"] == f"sha384-{digest}"
    assert (await client.get("/t/0000000000000000.js")).status == 404


async def test_the_documented_sri_hash_is_the_one_served(client: TestClient[Any, Any]) -> None:
    described = await (await client.get("/t.json")).json()
    docs = (ROOT / "docs" / "snippet.md").read_text()
    assert f'src="https://beacon.example.com{described["url"]}"' in docs
    assert re.findall(r'integrity="(sha384-[^"]+)"', docs) == [described["integrity"]]
