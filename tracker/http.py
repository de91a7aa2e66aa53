"""What every Tracker HTTP service shares: health, readiness, metrics, JSON errors, client IPs."""

from __future__ import annotations

import asyncio
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from typing import Any

import brotli
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if sys.version_info >= (3, 14):
    from compression.zstd import ZstdDecompressor, ZstdError
else:
    from backports.zstd import ZstdDecompressor, ZstdError

from tracker.metrics import COLLECTOR_REQUEST_SECONDS, COLLECTOR_REQUESTS, RATE_LIMITED
from tracker.privacy import truncate_ip
from tracker.ratelimit import RateLimit, TokenBuckets, retry_after

__all__ = [
    "HEALTH_PATHS",
    "RAW_BODIES",
    "Handler",
    "Readiness",
    "RequestLimiter",
    "add_health_routes",
    "client_ip",
    "client_key",
    "json_error",
    "json_response",
    "measured",
    "rate_limited",
    "read_body",
    "request_metrics",
]

# Content-Encodings a request body may carry; read_body decodes them.
BODY_ENCODINGS = ("gzip", "deflate", "br", "zstd")
# Every app that reads through read_body gets its bodies as sent: had aiohttp's parser decoded
# them, a body that is not what its Content-Encoding says would get the parser's plain-text 400
# before any handler ran, instead of read_body's reason in JSON.
RAW_BODIES: dict[str, Any] = {"auto_decompress": False}

# What keeps a service from its work, in words an operator can act on: none means ready. A bare
# bool is accepted too (False: not ready, for no stated reason).
Unready = Sequence[str] | bool
Readiness = Callable[[], Awaitable[Unready] | Unready]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Probes and scrapes are never rate limited: a limited kubelet would restart a healthy pod.
HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


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
    """``/healthz`` (the process answers), ``/readyz`` (it can do its work: 200, or 503 with the
    ``reasons`` it cannot), ``/metrics``."""

    async def healthz(_: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        outcome = ready()
        if not isinstance(outcome, bool | Sequence):
            outcome = await outcome
        if isinstance(outcome, bool):
            reasons: Sequence[str] = () if outcome else ("not ready",)
        else:
            reasons = outcome
        if not reasons:
            return json_response({"status": "ready"})
        return json_response({"status": "not ready", "reasons": list(reasons)}, status=503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


class _RouteMetrics:
    """The answer counters and the timing histogram of one route of one collector."""

    __slots__ = ("_answers", "_collector", "_route", "_timing")

    def __init__(self, collector: str, route: str) -> None:
        self._collector = collector
        self._route = route
        self._answers: dict[int, Any] = {}
        self._timing = COLLECTOR_REQUEST_SECONDS.labels(collector, route)

    def record(self, status: int, seconds: float) -> None:
        answers = self._answers.get(status)
        if answers is None:
            answers = self._answers[status] = COLLECTOR_REQUESTS.labels(
                self._collector, self._route, str(status)
            )
        answers.inc()
        self._timing.observe(seconds)


@lru_cache(maxsize=256)
def _route_metrics(collector: str, route: str) -> _RouteMetrics:
    return _RouteMetrics(collector, route)


def request_metrics(collector: str) -> Any:
    """Middleware counting answers and timing them per route (the route pattern, never the raw path)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        return await measured(collector, handler, route)(request)

    return middleware


def measured(collector: str, handler: Handler, route: str) -> Handler:
    """``handler``, counting its answers by status and timing them, without a middleware's cost
    per request: for hot paths such as redirects."""
    metrics = _route_metrics(collector, route)

    async def measured_handler(request: web.Request) -> web.StreamResponse:
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
            metrics.record(status, time.perf_counter() - started)

    return measured_handler


def client_ip(request: web.Request, trust_forwarded_for: bool) -> str:
    """The caller's address: the first ``X-Forwarded-For`` hop only behind a trusted proxy."""
    if trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        first = forwarded.split(",", 1)[0].strip()
        if first:
            return first
    return request.remote or ""


async def read_body(
    request: web.Request, max_bytes: int, wait_seconds: float
) -> bytes | web.Response:
    """The request's body, decoded, or the answer to give instead: 415 for a Content-Encoding
    Tracker does not read, 400 for a body that is not what its encoding says, 413 past
    ``max_bytes`` (decoded), and 408 (closing the connection) when it does not arrive within
    ``wait_seconds``."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity", *BODY_ENCODINGS):
        return json_error(
            415,
            f"Content-Encoding {encoding[:40]!r} is not supported; send the body as is or "
            f"with one of {', '.join(BODY_ENCODINGS)}",
        )
    if request.content_length is not None and request.content_length > max_bytes:
        return _too_large(max_bytes)
    try:
        async with asyncio.timeout(wait_seconds):
            sent = await request.read()
        return decode_body(sent, encoding, max_bytes) if encoding in BODY_ENCODINGS else sent
    except BodyTooLarge:
        return _too_large(max_bytes)
    except InvalidEncoding:
        return json_error(400, f"body is not valid {encoding} data, as its Content-Encoding says")
    except TimeoutError:
        response = json_error(
            408,
            f"the body did not arrive within {wait_seconds:g} s of the headers; "
            "send the whole body its Content-Length announces",
        )
        response.force_close()
        return response
    except web.HTTPRequestEntityTooLarge:
        return _too_large(max_bytes)
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        if encoding:
            return json_error(
                400, f"body is not valid {encoding} data, as its Content-Encoding says"
            )
        return json_error(400, f"body could not be read: {str(exc).strip()[:200]}")


class BodyTooLarge(Exception):
    """A body that decodes to more than the service takes."""


class InvalidEncoding(Exception):
    """A body that is not what its Content-Encoding says: corrupt, or cut short."""


def decode_body(sent: bytes, encoding: str, max_bytes: int) -> bytes:
    """``sent`` decoded as ``encoding`` says (one of :data:`BODY_ENCODINGS`), never more than
    ``max_bytes`` of it held: a compression bomb stops at the limit."""
    try:
        if encoding == "br":
            return _unbrotli(sent, max_bytes)
        if encoding == "zstd":
            return _unstream(lambda: ZstdDecompressor(), sent, max_bytes)
        if encoding == "gzip":
            wbits = 16 + zlib.MAX_WBITS
        elif sent[:1] and sent[0] & 0x0F == 8:
            wbits = zlib.MAX_WBITS  # deflate as RFC 9110 means it: zlib's wrapper
        else:
            wbits = -zlib.MAX_WBITS  # deflate as some clients send it: the bare stream
        return _unstream(lambda: zlib.decompressobj(wbits), sent, max_bytes)
    except (zlib.error, ZstdError, brotli.error) as exc:
        raise InvalidEncoding(str(exc)) from None


def _unstream(start: Callable[[], Any], sent: bytes, max_bytes: int) -> bytes:
    """A zlib or zstd stream of one or more members, each ending whole."""
    out = bytearray()
    rest = sent
    while True:
        decoder = start()
        out += decoder.decompress(rest, max_bytes + 1 - len(out))
        if len(out) > max_bytes:
            raise BodyTooLarge
        if not decoder.eof:
            raise InvalidEncoding("the body ends before its compressed stream does")
        rest = decoder.unused_data
        if not rest:
            return bytes(out)


def _unbrotli(sent: bytes, max_bytes: int) -> bytes:
    decoder = brotli.Decompressor()
    out = bytearray(decoder.process(sent, output_buffer_limit=max_bytes + 1))
    while len(out) <= max_bytes and not decoder.can_accept_more_data():
        more = decoder.process(b"", output_buffer_limit=max_bytes + 1 - len(out))
        if not more:
            break
        out += more
    if len(out) > max_bytes:
        raise BodyTooLarge
    if not decoder.is_finished():
        raise InvalidEncoding("the body ends before its compressed stream does")
    return bytes(out)


def _too_large(max_bytes: int) -> web.Response:
    return json_error(413, f"body is larger than {max_bytes} bytes; send smaller batches")


def client_key(request: web.Request, trust_forwarded_for: bool) -> str:
    """Who a request's rate limit counts against: its address truncated to the network (IPv4
    /24, IPv6 /48), so that one host cannot dodge its limit by rotating through its subnet."""
    return "ip:" + (truncate_ip(client_ip(request, trust_forwarded_for)) or "unknown")


class RequestLimiter:
    """One surface's rate limit: a token bucket per client key. :meth:`refuse` answers 429."""

    def __init__(self, surface: str, limit: RateLimit) -> None:
        self.surface = surface
        self.limit = limit
        self._buckets = TokenBuckets.of(limit)
        self._refused = RATE_LIMITED.labels(surface)

    def take(self, key: str) -> int:
        """0 when the client ``key`` may go ahead, else the whole seconds it must wait."""
        wait = self._buckets.take(key)
        if not wait:
            return 0
        self._refused.inc()
        return retry_after(wait)

    def refuse(self, key: str) -> web.Response | None:
        """None when ``key`` may go ahead, else the 429 answer with its ``Retry-After``."""
        wait = self.take(key)
        if not wait:
            return None
        return json_error(
            429,
            f"too many requests from this client to the {self.surface} "
            f"(at most {self.limit.rate:g} a second, bursts of {self.limit.burst}); retry after "
            "the Retry-After seconds (TRACKER_RATE_LIMITS)",
            headers={"Retry-After": str(wait)},
            retry_after=wait,
        )


ClientKey = Callable[[web.Request], str | None]


def rate_limited(
    surface: str, limit: RateLimit | None, trust_forwarded_for: bool, key: ClientKey | None = None
) -> Any:
    """Middleware: each request counts against its client's bucket first, before its body is
    read; over the limit it is answered 429 with ``Retry-After``. ``key`` names the client
    (None: the request is limited elsewhere, e.g. per write key); the default is
    :func:`client_key`. Health, readiness and metrics are never limited; nothing is when
    ``limit`` is None (the surface's limit is off)."""
    if limit is None:

        @web.middleware
        async def unlimited(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await handler(request)

        return unlimited
    limiter = RequestLimiter(surface, limit)

    def default_key(request: web.Request) -> str | None:
        return client_key(request, trust_forwarded_for)

    keyed = key or default_key

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        client = None if request.path in HEALTH_PATHS else keyed(request)
        refused = limiter.refuse(client) if client is not None else None
        return refused or await handler(request)

    return middleware
