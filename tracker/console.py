"""The console: the analysts' page, the reports and journey API, the read-only query API,
health and metrics.

The page (``tracker/static/``: plain HTML, CSS and JavaScript, no build step) draws with the
plotly.js that the ``plotly`` wheel ships, served from here at a versioned path, so the browser
asks nothing of any other host.

It runs in the process that holds ClickHouse (with embedded chDB, only that process can read it),
bound to localhost unless ``TRACKER_CONSOLE_HOST`` says otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.util
import re
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from tracker.errors import QueryRefused, TrackerError
from tracker.http import (
    Readiness,
    add_health_routes,
    client_key,
    json_error,
    json_response,
    rate_limited,
    request_metrics,
)
from tracker.journeys import find_journey, journey_document
from tracker.privacy import InvalidIdentifier
from tracker.readonly_sql import check_query
from tracker.reports import ReportInvalid, run_report
from tracker.settings import Settings
from tracker.store import ClickHouseStore, QueryLimits

__all__ = ["QUERY_FORMATS", "create_console", "plotly_js", "query_limits"]

QUERY_FORMATS = {
    "tsv": "TabSeparated",
    "tsv-header": "TabSeparatedWithNames",
    "csv": "CSVWithNames",
    "json": "JSONEachRow",
    "pretty": "PrettyCompactMonoBlock",
    "vertical": "Vertical",
}
# A query, a report's options or a forget: a few kilobytes. Larger bodies are answered 413.
MAX_CONSOLE_BODY = 256 * 1024
STORE_KEY = web.AppKey("store", ClickHouseStore)
SETTINGS_KEY = web.AppKey("settings", Settings)


# (identifier, identifier only?, who asked) -> what was erased
Forget = Callable[[str, bool, str], Awaitable[dict[str, Any]]]
FORGET_KEY: web.AppKey[Forget] = web.AppKey("forget")


def create_console(
    settings: Settings,
    store: ClickHouseStore,
    ready: Readiness,
    forget: Forget | None = None,
) -> web.Application:
    def api_client(request: web.Request) -> str | None:
        """The API counts against its client's limit; the page and its assets do not."""
        if not request.path.startswith("/api/"):
            return None
        return client_key(request, settings.trust_forwarded_for)

    app = web.Application(
        client_max_size=MAX_CONSOLE_BODY,
        middlewares=[
            request_metrics("console"),
            rate_limited(
                "console",
                settings.rate_limit("console"),
                settings.trust_forwarded_for,
                key=api_client,
            ),
        ],
    )
    app[STORE_KEY] = store
    app[SETTINGS_KEY] = settings
    app.router.add_get("/", page)
    app.router.add_get("/static/{file}", static_file)
    app.router.add_post("/api/query", query)
    app.router.add_get("/api/reports/{name}", report)
    app.router.add_get("/api/journey", journey)
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
    identifier_only = body.get("identifier_only", False)
    if not isinstance(identifier_only, bool):
        return json_error(400, '"identifier_only" must be true or false')
    # Who the audit names: the CLI says it is the CLI; anyone else is the token's holder.
    settings = request.app[SETTINGS_KEY]
    requested_by = "cli" if body.get("via") == "cli" else settings.api_token_name
    try:
        forget = request.app[FORGET_KEY]
        return json_response(await forget(identifier, identifier_only, requested_by))
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


async def journey(request: web.Request) -> web.Response:
    """A customer's journey (``tracker.journeys``), the document ``tracker journey --format json``
    prints: ``GET /api/journey?id=jane@example.com`` (any identifier, or a customer id)."""
    if refused := _refusal(request):
        return refused
    raw = request.query.get("id", "").strip()
    if not raw:
        return json_error(400, "id must name a customer: an identifier such as jane@example.com")
    settings = request.app[SETTINGS_KEY]
    store = request.app[STORE_KEY]

    def read(sql: str) -> list[dict[str, Any]]:
        output: bytes = store.run_sync(
            store.raw_query_sync, sql, QUERY_FORMATS["json"], query_limits(settings)
        )
        return [orjson.loads(line) for line in output.splitlines() if line.strip()]

    try:
        found = await asyncio.to_thread(find_journey, settings, raw, read)
    except TrackerError as exc:
        if exc.retriable:
            return json_error(
                503,
                f"ClickHouse cannot answer now; retry: {exc}",
                headers={"Retry-After": str(settings.retry_after_seconds)},
            )
        return json_error(400, str(exc))
    if found is None:
        return json_error(
            404,
            f"no customer is known by {raw}: no event carrying it has been stitched (yet), "
            "or it was forgotten",
        )
    return json_response(journey_document(found))


def query_limits(settings: Settings) -> QueryLimits:
    return QueryLimits(
        settings.query_max_seconds, settings.query_max_memory_bytes, settings.query_max_rows
    )


_STATIC = Path(__file__).with_name("static")
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}
# The page may load only what this console serves: no third-party request, by the browser's rule.
_PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


@cache
def plotly_js() -> tuple[str, Path]:
    """The plotly.js the ``plotly`` wheel ships (plotly/package_data/plotly.min.js): its
    version, read from the file's banner, and its path. Found without importing plotly."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise TrackerError("the plotly package is missing: reinstall tracker to get the console")
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    with path.open("rb") as file:
        banner = file.read(200).decode("ascii", "replace")
    found = re.search(r"plotly\.js v([0-9][0-9A-Za-z.\-]*)", banner)
    return (found.group(1) if found else "unknown"), path


async def page(_: web.Request) -> web.Response:
    version, _path = plotly_js()
    html = (
        (_STATIC / "index.html")
        .read_text("utf-8")
        .replace("{{plotly}}", f"plotly-{version}.min.js")
    )
    return web.Response(
        text=html,
        content_type="text/html",
        headers={"Content-Security-Policy": _PAGE_POLICY, "Cache-Control": "no-cache"},
    )


async def static_file(request: web.Request) -> web.StreamResponse:
    """The page's own files, and plotly.js under its version (cached for good: a new version
    is a new path)."""
    name = request.match_info["file"]
    version, plotly_path = plotly_js()
    if name == f"plotly-{version}.min.js":
        return web.FileResponse(
            plotly_path,
            headers={
                "Content-Type": "text/javascript",
                "Cache-Control": "public, max-age=31536000, immutable",
            },
        )
    path = _STATIC / name
    if (
        name.startswith(".")
        or "/" in name
        or path.suffix not in _STATIC_TYPES
        or not path.is_file()
    ):
        raise web.HTTPNotFound()
    return web.FileResponse(
        path, headers={"Content-Type": _STATIC_TYPES[path.suffix], "Cache-Control": "no-cache"}
    )
