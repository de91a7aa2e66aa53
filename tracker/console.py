"""The console: a small page, the read-only query API, health and metrics.

It runs in the process that holds ClickHouse (with embedded chDB, only that process can read it),
bound to localhost unless ``TRACKER_CONSOLE_HOST`` says otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from tracker.errors import QueryRefused, TrackerError
from tracker.http import (
    Readiness,
    add_health_routes,
    json_error,
    json_response,
    request_metrics,
)
from tracker.privacy import InvalidIdentifier
from tracker.readonly_sql import check_query
from tracker.reports import ReportInvalid, run_report
from tracker.settings import Settings
from tracker.store import ClickHouseStore, QueryLimits

__all__ = ["QUERY_FORMATS", "create_console", "query_limits"]

QUERY_FORMATS = {
    "tsv": "TabSeparated",
    "tsv-header": "TabSeparatedWithNames",
    "csv": "CSVWithNames",
    "json": "JSONEachRow",
    "pretty": "PrettyCompactMonoBlock",
    "vertical": "Vertical",
}
STORE_KEY = web.AppKey("store", ClickHouseStore)
SETTINGS_KEY = web.AppKey("settings", Settings)


Forget = Callable[[str], Awaitable[dict[str, Any]]]
FORGET_KEY: web.AppKey[Forget] = web.AppKey("forget")


def create_console(
    settings: Settings,
    store: ClickHouseStore,
    ready: Readiness,
    forget: Forget | None = None,
) -> web.Application:
    app = web.Application(middlewares=[request_metrics("console")])
    app[STORE_KEY] = store
    app[SETTINGS_KEY] = settings
    app.router.add_get("/", page)
    app.router.add_post("/api/query", query)
    app.router.add_get("/api/reports/{name}", report)
    if forget is not None:
        app[FORGET_KEY] = forget
        app.router.add_post("/api/forget", forget_identifier)
    add_health_routes(app, ready)
    return app


def _refusal(request: web.Request) -> web.Response | None:
    """A token is required when one is configured; without one, only on loopback."""
    settings = request.app[SETTINGS_KEY]
    if settings.api_token:
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(supplied.encode(), settings.api_token.value.encode()):
            return json_error(401, "a valid bearer token (TRACKER_API_TOKEN) is required")
    elif settings.console_host not in ("127.0.0.1", "localhost", "::1"):
        return json_error(403, "set TRACKER_API_TOKEN before serving the console beyond localhost")
    return None


async def forget_identifier(request: web.Request) -> web.Response:
    if refused := _refusal(request):
        return refused
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return json_error(400, 'body must be JSON: {"identifier": "email:ada@example.com"}')
    identifier = body.get("identifier") if isinstance(body, dict) else None
    if not isinstance(identifier, str):
        return json_error(400, '"identifier" must be a string such as "email:ada@example.com"')
    try:
        return json_response(await request.app[FORGET_KEY](identifier))
    except InvalidIdentifier as exc:
        return json_error(400, f"identifier {exc}")
    except TrackerError as exc:
        if not exc.retriable:
            raise
        retry_after = request.app[SETTINGS_KEY].retry_after_seconds
        return json_error(
            503,
            f"could not forget now, nothing is lost by retrying: {exc}",
            headers={"Retry-After": str(retry_after)},
        )


async def query(request: web.Request) -> web.StreamResponse:
    if refused := _refusal(request):
        return refused
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return json_error(400, 'body must be JSON: {"sql": "...", "format": "tsv"}')
    sql = body.get("sql") if isinstance(body, dict) else None
    if not isinstance(sql, str) or not sql.strip():
        return json_error(400, '"sql" must be a non-empty string')
    format_name = body.get("format", "tsv")
    if not isinstance(format_name, str) or format_name not in QUERY_FORMATS:
        return json_error(400, f"format must be one of {', '.join(QUERY_FORMATS)}")
    settings = request.app[SETTINGS_KEY]
    try:
        checked = await asyncio.to_thread(check_query, sql)  # a long SQL takes a while to read
        # As in clickhouse-client, a trailing FORMAT in the SQL wins over "format".
        output = await request.app[STORE_KEY].raw_query(
            checked.statement, checked.format or QUERY_FORMATS[format_name], query_limits(settings)
        )
    except QueryRefused as exc:
        return json_error(400, str(exc))
    except TrackerError as exc:
        if exc.retriable:
            return json_error(
                503,
                f"ClickHouse cannot answer now; retry: {exc}",
                headers={"Retry-After": str(settings.retry_after_seconds)},
            )
        return json_error(400, str(exc))
    return web.Response(body=output, content_type="text/plain", charset="utf-8")


async def report(request: web.Request) -> web.Response:
    """A report's rows (tracker.reports), one JSON object per line, as ``tracker report`` gets them."""
    if refused := _refusal(request):
        return refused
    settings = request.app[SETTINGS_KEY]
    try:
        rows = await asyncio.to_thread(
            run_report,
            request.app[STORE_KEY],
            request.match_info["name"],
            dict(request.query),
            settings.journey_conversions,
            query_limits(settings),
        )
    except (ReportInvalid, QueryRefused) as exc:
        return json_error(400, str(exc))
    except TrackerError as exc:
        if not exc.retriable:
            raise
        return json_error(
            503,
            f"ClickHouse cannot answer now; retry: {exc}",
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )
    body = b"".join(orjson.dumps(row) + b"\n" for row in rows)
    return web.Response(body=body, content_type="application/x-ndjson")


def query_limits(settings: Settings) -> QueryLimits:
    return QueryLimits(
        settings.query_max_seconds, settings.query_max_memory_bytes, settings.query_max_rows
    )


async def page(_: web.Request) -> web.Response:
    return web.Response(text=_PAGE, content_type="text/html")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tracker console</title>
<style>
body{font:15px system-ui,sans-serif;margin:2rem;max-width:72rem;color:#1b1f24}
textarea{width:100%;height:6rem;font:14px ui-monospace,monospace}
pre{background:#f4f5f7;padding:1rem;overflow:auto}button{font-size:15px;padding:.3rem 1rem}
</style></head><body>
<h1>Tracker</h1>
<p>Read-only SQL against the <code>tracker</code> database. Tables: touchpoints, dead_letters, links, calls.</p>
<textarea id="sql">SELECT channel, type, count() AS events FROM tracker.touchpoints GROUP BY channel, type ORDER BY events DESC</textarea>
<p><button id="run">Run</button>
<input id="token" type="password" size="40" placeholder="API token, if TRACKER_API_TOKEN is set"></p>
<pre id="out"></pre>
<script>
const run = async () => {
  const token = document.getElementById('token').value;
  const r = await fetch('/api/query', {method: 'POST',
    headers: token ? {Authorization: 'Bearer ' + token} : {},
    body: JSON.stringify({sql: document.getElementById('sql').value, format: 'pretty'})});
  document.getElementById('out').textContent = await r.text();
};
document.getElementById('run').onclick = run; run();
</script></body></html>
"""
