"""The console's answers that need no engine: refusals before ClickHouse, and forget's errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tracker.console import create_console
from tracker.errors import BackpressureError, StoreError
from tracker.privacy import InvalidIdentifier
from tracker.settings import Settings
from tracker.store import ClickHouseStore, QueryLimits

Client = TestClient[web.Request, web.Application]


class RecordingStore:
    """Stands in for ClickHouse: records what reached it."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, str, QueryLimits]] = []

    async def raw_query(self, sql: str, fmt: str, limits: QueryLimits) -> bytes:
        self.statements.append((sql, fmt, limits))
        return b"1\n"


def console_settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_RETRY_AFTER_SECONDS": "7",
            "TRACKER_QUERY_MAX_SECONDS": "3",
            "TRACKER_QUERY_MAX_MEMORY_BYTES": "33554432",
            "TRACKER_QUERY_MAX_ROWS": "50",
        }
    )


@pytest.fixture
async def store_and_client(tmp_path: Path) -> AsyncIterator[tuple[RecordingStore, Client]]:
    store = RecordingStore()
    app = create_console(console_settings(tmp_path), cast(ClickHouseStore, store), lambda: True)
    async with TestClient(TestServer(app)) as client:
        yield store, client


async def forget_client(
    tmp_path: Path, forget: Callable[[str, bool, str], Awaitable[dict[str, Any]]]
) -> Client:
    app = create_console(
        console_settings(tmp_path), cast(ClickHouseStore, RecordingStore()), lambda: True, forget
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_refused_queries_never_reach_clickhouse(
    store_and_client: tuple[RecordingStore, Client],
) -> None:
    store, client = store_and_client
    for sql in ("KILL QUERY WHERE 1", "SELECT 'hx-leak'; DROP TABLE links"):
        answer = await client.post("/api/query", json={"sql": sql})
        assert answer.status == 400
        assert (await answer.json())["error"]
    assert store.statements == []


async def test_a_query_runs_within_the_configured_limits_with_its_own_format(
    store_and_client: tuple[RecordingStore, Client],
) -> None:
    store, client = store_and_client
    answer = await client.post("/api/query", json={"sql": "SELECT 1 FORMAT CSV;", "format": "json"})
    assert answer.status == 200
    assert store.statements == [("SELECT 1", "CSV", QueryLimits(3.0, 33554432, 50))]


async def test_forget_that_kafka_did_not_take_is_a_503_with_retry_after(tmp_path: Path) -> None:
    async def forget(identifier: str, identifier_only: bool, requested_by: str) -> dict[str, Any]:
        raise BackpressureError("Kafka did not take the forget", retry_after=7)

    client = await forget_client(tmp_path, forget)
    try:
        answer = await client.post("/api/forget", json={"identifier": "email:ada@example.com"})
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "7"
        assert "nothing is lost by retrying" in (await answer.json())["error"]
    finally:
        await client.close()


async def test_forget_when_clickhouse_is_unreachable_is_a_503(tmp_path: Path) -> None:
    async def forget(identifier: str, identifier_only: bool, requested_by: str) -> dict[str, Any]:
        raise StoreError("ClickHouse is unreachable", retriable=True)

    client = await forget_client(tmp_path, forget)
    try:
        answer = await client.post("/api/forget", json={"identifier": "email:ada@example.com"})
        assert (answer.status, answer.headers["Retry-After"]) == (503, "7")
    finally:
        await client.close()


async def test_a_malformed_identifier_is_a_400(tmp_path: Path) -> None:
    async def forget(identifier: str, identifier_only: bool, requested_by: str) -> dict[str, Any]:
        raise InvalidIdentifier("must be kind:value")

    client = await forget_client(tmp_path, forget)
    try:
        answer = await client.post("/api/forget", json={"identifier": "ada"})
        assert answer.status == 400
        assert "kind:value" in (await answer.json())["error"]
    finally:
        await client.close()


async def test_forget_passes_on_the_scope_and_who_asked_for_the_audit(tmp_path: Path) -> None:
    asked: list[tuple[str, bool, str]] = []

    async def forget(identifier: str, identifier_only: bool, requested_by: str) -> dict[str, Any]:
        asked.append((identifier, identifier_only, requested_by))
        return {"identifier": "email:…"}

    client = await forget_client(tmp_path, forget)
    try:
        person = await client.post("/api/forget", json={"identifier": "email:ada@example.com"})
        narrow = await client.post(
            "/api/forget",
            json={"identifier": "user:u-1", "identifier_only": True, "via": "cli"},
        )
        wrong = await client.post(
            "/api/forget", json={"identifier": "user:u-1", "identifier_only": "yes"}
        )
        assert (person.status, narrow.status, wrong.status) == (200, 200, 400)
        assert "identifier_only" in (await wrong.json())["error"]
    finally:
        await client.close()
    # The console's own caller is the token's holder (TRACKER_API_TOKEN_NAME, "console" unset).
    assert asked == [("email:ada@example.com", False, "console"), ("user:u-1", True, "cli")]
