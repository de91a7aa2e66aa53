"""GET /api/reports/<name> answers that need no engine: access, and options refused with a reason."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from aiohttp.test_utils import TestClient, TestServer

from tracker.console import create_console
from tracker.settings import Settings
from tracker.store import ClickHouseStore


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
