"""What every Tracker HTTP service shares: health, readiness, metrics, JSON errors, client IPs."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tracker.metrics import COLLECTOR_REQUEST_SECONDS, COLLECTOR_REQUESTS

__all__ = [
    "add_health_routes",
    "client_ip",
    "json_error",
    "json_response",
    "measured",
    "request_metrics",
]

Readiness = Callable[[], Awaitable[bool] | bool]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def json_error(
    status: int, error: str, headers: dict[str, str] | None = None, **details: Any
) -> web.Response:
    return json_response({"error": error, **details}, status=status, headers=headers)


def add_health_routes(app: web.Application, ready: Readiness) -> None:
    """``/healthz`` (the process answers), ``/readyz`` (it can do its work), ``/metrics``."""

    async def healthz(_: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        outcome = ready()
        is_ready = outcome if isinstance(outcome, bool) else await outcome
        if is_ready:
            return json_response({"status": "ready"})
        return json_response({"status": "not ready"}, status=503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


@lru_cache(maxsize=1024)
def _answers(collector: str, route: str, status: int) -> Any:
    return COLLECTOR_REQUESTS.labels(collector, route, str(status))


@lru_cache(maxsize=256)
def _timings(collector: str, route: str) -> Any:
    return COLLECTOR_REQUEST_SECONDS.labels(collector, route)


async def _counted(
    collector: str, route: str, handler: Handler, request: web.Request
) -> web.StreamResponse:
    """Run ``handler``, counting its answer by status and timing it (label children cached)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        _answers(collector, route, status).inc()
        _timings(collector, route).observe(time.perf_counter() - started)


def request_metrics(collector: str) -> Any:
    """Middleware counting answers and timing them per route (the route pattern, never the raw path)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        return await _counted(collector, route, handler, request)

    return middleware


def measured(collector: str, handler: Handler, route: str) -> Handler:
    """``handler``, counted and timed like :func:`request_metrics` but without a middleware's
    cost per request: for hot paths such as redirects."""

    async def measured_handler(request: web.Request) -> web.StreamResponse:
        return await _counted(collector, route, handler, request)

    return measured_handler


def client_ip(request: web.Request, trust_forwarded_for: bool) -> str:
    """The caller's address: the first ``X-Forwarded-For`` hop only behind a trusted proxy."""
    if trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        first = forwarded.split(",", 1)[0].strip()
        if first:
            return first
    return request.remote or ""
