"""The one HTTP client for the running instance's console, for every CLI command that asks it.

With embedded chDB only the worker's process can read ClickHouse, so queries and forgets go
through its console; with a ClickHouse server, queries go straight to the server.
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

from tracker.console import QUERY_FORMATS, query_limits
from tracker.errors import TrackerError
from tracker.settings import Settings

__all__ = ["console_request", "fetch_report", "run_query"]


def run_query(settings: Settings, sql: str, format_name: str = "tsv") -> str:
    """Through the running instance's console for embedded chDB; straight to a ClickHouse server otherwise."""
    if not settings.uses_embedded_clickhouse:
        from tracker.readonly_sql import check_query
        from tracker.store import ClickHouseStore

        checked = check_query(sql)  # the console's check and limits, on this path too
        store = ClickHouseStore(settings.clickhouse_url, settings.clickhouse_database)
        try:
            data: bytes = store.run_sync(
                store.raw_query_sync,
                checked.statement,
                checked.format or QUERY_FORMATS[format_name],
                query_limits(settings),
            )
        finally:
            store.close()
        return data.decode()
    answer = console_request(settings, "/api/query", {"sql": sql, "format": format_name}, "query")
    return answer.decode()


def fetch_report(settings: Settings, name: str, options: dict[str, str]) -> list[dict[str, Any]]:
    """A report's rows: from the running instance's console for embedded chDB (GET
    /api/reports/<name>); computed here, reading the ClickHouse server, otherwise."""
    if not settings.uses_embedded_clickhouse:
        from tracker.reports import run_report
        from tracker.store import ClickHouseStore

        store = ClickHouseStore(settings.clickhouse_url, settings.clickhouse_database)
        try:
            return run_report(store, name, options, settings.journey_conversions)
        finally:
            store.close()
    path = f"/api/reports/{urllib.parse.quote(name)}?{urllib.parse.urlencode(options)}"
    answer = console_request(settings, path, None, "report")
    return [orjson.loads(line) for line in answer.splitlines() if line.strip()]


_RATE_LIMITED_ATTEMPTS = 4
_LONGEST_WAIT = 10.0


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    """The seconds a 429 asks to wait, when short enough to wait here; None otherwise."""
    if exc.code != 429:
        return None
    try:
        wait = float(exc.headers.get("Retry-After", "1"))
    except ValueError:
        return None
    return wait if 0 <= wait <= _LONGEST_WAIT else None


def console_request(
    settings: Settings, path: str, body: dict[str, object] | None, what: str
) -> bytes:
    """POST ``body`` (GET without one) to the running instance's console; its JSON errors
    become a TrackerError."""
    headers = {"Content-Type": "application/json"}
    if settings.api_token:
        headers["Authorization"] = f"Bearer {settings.api_token.value}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.console_port}{path}",
        data=None if body is None else orjson.dumps(body),
        headers=headers,
    )
    try:
        for attempt in range(_RATE_LIMITED_ATTEMPTS):
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    answer: bytes = response.read()
                    return answer
            except urllib.error.HTTPError as exc:
                wait = _retry_after(exc)
                if wait is None or attempt == _RATE_LIMITED_ATTEMPTS - 1:
                    raise
                exc.close()
                time.sleep(wait)  # the console's rate limit: wait as told, a few times
        raise AssertionError("unreachable")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
            detail = orjson.loads(detail)["error"]
        raise TrackerError(f"{what} failed: {detail}") from None
    except urllib.error.URLError as exc:
        raise TrackerError(
            f"no running instance answers on port {settings.console_port} ({exc.reason}); "
            "start one with `tracker up`"
            + (
                ", or set TRACKER_CLICKHOUSE_URL to a ClickHouse server"
                if what in ("query", "report")
                else ""
            )
        ) from None
