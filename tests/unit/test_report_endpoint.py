"""GET /api/reports/<name> answers that need no engine: access, and options refused with a reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from aiohttp.test_utils import TestClient, TestServer

from tracker.console import create_console
from tracker.errors import QueryRefused
from tracker.settings import Settings
from tracker.store import ClickHouseStore, QueryLimits


class NoStore:
    """Nothing may reach ClickHouse in these tests."""

    def run_sync(self, *_: object) -> None:
        raise AssertionError("a refused report reached ClickHouse")


def client(tmp_path: Path, **env: str) -> TestClient:  # type: ignore[type-arg]
    settings = Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path), **env})
    app = create_console(settings, cast(ClickHouseStore, NoStore()), lambda: True)
    return TestClient(TestServer(app))


async def test_reports_need_the_token_like_queries(tmp_path: Path) -> None:
    async with client(tmp_path, TRACKER_API_TOKEN="s3cret-token-for-reports") as c:
        answer = await c.get("/api/reports/stages")
        assert answer.status == 401
        assert "bearer token" in (await answer.json())["error"]


async def test_reports_beyond_localhost_need_a_token(tmp_path: Path) -> None:
    async with client(tmp_path, TRACKER_CONSOLE_HOST="0.0.0.0") as c:
        answer = await c.get("/api/reports/stages")
        assert answer.status == 403


async def test_bad_options_are_refused_before_clickhouse_with_a_reason(tmp_path: Path) -> None:
    async with client(tmp_path) as c:
        for query, reason in (
            ("/api/reports/funnel?steps=purchase", "a funnel needs at least two steps"),
            ("/api/reports/stages?top=3", "stages takes no option top"),
            ("/api/reports/scorecard?window_days=-1", "window_days must be above 0"),
            ("/api/reports/attribution?model=u_shaped", "model must be one of first_touch"),
            ("/api/reports/paths?ending=maybe", "ending must be conversion or no-conversion"),
            ("/api/reports/revenue", "no report 'revenue'"),
        ):
            answer = await c.get(query)
            assert answer.status == 400, query
            assert reason in (await answer.json())["error"], query


class RefusingStore(ClickHouseStore):
    """Records the limits each report read is given, and refuses it as ClickHouse would."""

    def __init__(self) -> None:
        super().__init__("chdb:///nowhere", "tracker")
        self.limits: list[QueryLimits] = []

    def run_sync(self, fn: Any, *args: Any) -> Any:
        limits = args[3]
        self.limits.append(limits)
        raise QueryRefused(limits.passed(241) or "refused")


async def test_reports_run_within_the_consoles_limits_and_say_which_they_passed(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env(
        {
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_QUERY_MAX_SECONDS": "7",
            "TRACKER_QUERY_MAX_MEMORY_BYTES": "50000000",
        }
    )
    store = RefusingStore()
    app = create_console(settings, store, lambda: True)
    async with TestClient(TestServer(app)) as c:
        answer = await c.get("/api/reports/stages?from=2026-11-01&to=2026-11-30")
        assert answer.status == 400
        assert (
            "more memory than the console allows (50000000 bytes" in (await answer.json())["error"]
        )
    (limits,) = store.limits
    assert limits.max_memory_bytes == 50_000_000
    assert 0 < limits.max_seconds <= 7  # what is left of the report's 7 s
    store.close()
