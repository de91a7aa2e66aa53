"""The console page's files and the journey endpoint's refusals, without an engine or a browser
(tests/e2e/test_console_page.py draws the page in Chromium against the real pipeline)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from plotly.offline import get_plotlyjs_version

from tracker.console import create_console, plotly_js
from tracker.settings import Settings
from tracker.store import ClickHouseStore, QueryLimits

Client = TestClient[web.Request, web.Application]


class EmptyStore:
    """Stands in for an empty ClickHouse: every read answers no rows, and is recorded."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def run_sync(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    def raw_query_sync(self, sql: str, fmt: str, limits: QueryLimits) -> bytes:
        assert fmt == "JSONEachRow"
        self.statements.append(sql)
        return b""


async def client_for(tmp_path: Path, **env: str) -> tuple[EmptyStore, Client]:
    settings = Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path), **env})
    store = EmptyStore()
    client = TestClient(
        TestServer(create_console(settings, cast(ClickHouseStore, store), lambda: True))
    )
    await client.start_server()
    return store, client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    _, running = await client_for(tmp_path, TRACKER_HASH_SALT="unit-salt")
    yield running
    await running.close()


async def test_the_page_loads_plotly_from_the_console_under_its_version(client: Client) -> None:
    response = await client.get("/")
    assert response.status == 200
    html = await response.text()
    # The version the plotly package itself reports, not only the banner the console reads.
    version = get_plotlyjs_version()
    assert plotly_js()[0] == version
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert scripts == [f"/static/plotly-{version}.min.js", "/static/console.js"]
    assert all(s.startswith("/") and not s.startswith("//") for s in scripts)
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy

    script = await client.get(scripts[0])
    assert script.status == 200
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert "immutable" in script.headers["Cache-Control"]
    assert await script.read() == plotly_js()[1].read_bytes()
    for own in ("/static/console.js", "/static/console.css"):
        assert (await client.get(own)).status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/static/index.html",
        "/static/plotly-0.0.1.min.js",
        "/static/missing.js",
        "/static/..%2Fconsole.py",
        "/static/..%2F..%2Fpyproject.toml",
        "/static/.hidden.js",
    ],
)
async def test_only_the_pages_own_files_are_served(client: Client, path: str) -> None:
    assert (await client.get(path)).status == 404


async def test_a_journey_needs_an_id_and_an_unknown_one_is_a_404(client: Client) -> None:
    response = await client.get("/api/journey")
    assert response.status == 400
    assert "id must name a customer" in (await response.json())["error"]
    response = await client.get("/api/journey", params={"id": "nobody@example.com"})
    assert response.status == 404
    assert (await response.json())["error"].startswith("no customer is known by nobody@example.com")


async def test_a_journey_by_a_bare_email_reads_its_salted_hash_by_key(tmp_path: Path) -> None:
    store, running = await client_for(tmp_path, TRACKER_HASH_SALT="unit-salt")
    try:
        await running.get("/api/journey", params={"id": "Jane@Example.com"})
    finally:
        await running.close()
    # Looked up as email:<hash>, never with the address in clear, and never a scan.
    assert store.statements and all("jane@example.com" not in s.lower() for s in store.statements)
    assert any("identifier = 'email:" in s for s in store.statements)
    assert any("WHERE identity_key = 'email:" in s for s in store.statements)


async def test_a_bad_identifier_is_a_400_with_the_reason(client: Client) -> None:
    response = await client.get("/api/journey", params={"id": "email:not-an-address"})
    assert response.status == 400
    assert "not-an-address" in (await response.json())["error"]
