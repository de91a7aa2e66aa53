"""The links service: ``GET|HEAD /{slug}`` redirects from memory, ``/api/links`` manages links."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
import segno
from aiohttp import web

from collectors.links._api import OPENAPI
from collectors.links._clicks import ClickBuffer, ClickIds, ClickPublisher
from collectors.links._model import (
    CLICK_ID_PARAM,
    QR_PARAM,
    Link,
    generate_slug,
    parse_link,
    validate_slug,
)
from collectors.links._state import LinkState, LinkTable
from tracker.errors import BackpressureError, ValidationError
from tracker.http import (
    RAW_BODIES,
    RequestLimiter,
    add_health_routes,
    client_ip,
    client_key,
    json_error,
    json_response,
    measured,
    read_body,
)
from tracker.kafka.producer import Publisher
from tracker.metrics import LINK_CLICKS, RATE_LIMITED
from tracker.privacy import truncate_ip
from tracker.ratelimit import TokenBuckets, retry_after
from tracker.settings import Settings

COLLECTOR = "links"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LinksPublisher(Publisher, ClickPublisher, Protocol):
    """What the links service produces through: click batches, and readiness."""


class Links:
    """Everything one links service holds: settings, the link table, its Kafka state, the clicks."""

    def __init__(
        self,
        settings: Settings,
        publisher: LinksPublisher,
        state: LinkState | None = None,
        table: LinkTable | None = None,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.table = table or (state.table if state else LinkTable())
        self.state = state
        self.clicks = ClickBuffer(
            publisher, settings.links_base_url, settings.links_click_buffer, self.table.instance
        )
        self.click_ids = ClickIds()
        api_limit = settings.rate_limit("links_api")
        self.limiter = RequestLimiter("links_api", api_limit) if api_limit else None
        self.redirect_limit = settings.rate_limit("links")

    @property
    def loaded(self) -> bool:
        return self.state is None or self.state.loaded

    @property
    def ready(self) -> bool:
        return self.publisher.ready and self.loaded

    @property
    def unready(self) -> list[str]:
        reasons = [self.publisher.unready] if self.publisher.unready else []
        if not self.loaded:
            reasons.append("links are still loading from Kafka")
        return reasons

    def short_url(self, slug: str) -> str:
        return f"{self.settings.links_base_url}/{slug}"

    def view(self, link: Link) -> dict[str, Any]:
        return {
            **link.to_record(),
            "short_url": self.short_url(link.slug),
            "clicks": self.table.clicks(link.slug),
        }

    async def save(self, link: Link) -> None:
        if self.state is not None:
            await self.state.put(link)
        else:
            self.table.links[link.slug] = link

    async def remove(self, slug: str) -> None:
        if self.state is not None:
            await self.state.delete(slug)
        else:
            self.table.apply_link(slug, None)


LINKS_KEY = web.AppKey("links", Links)
MAX_API_BODY = 64 * 1024  # a link's fields, with room to spare


def create_app(
    settings: Settings, publisher: LinksPublisher, state: LinkState | None = None
) -> web.Application:
    """The links service. Without ``state`` it keeps links in memory only (unit tests)."""
    links = Links(settings, publisher, state)
    # No middleware: aiohttp's middleware chain alone cost about 40% of redirect throughput, so
    # each route is measured by a wrapper instead (health routes are not measured).
    app = web.Application(client_max_size=MAX_API_BODY, handler_args=RAW_BODIES)
    app[LINKS_KEY] = links
    add_health_routes(app, lambda: links.unready)
    app.router.add_get(
        "/api/openapi.json", measured(COLLECTOR, _limited(openapi), "/api/openapi.json")
    )
    api = [
        ("GET", "/api/links", list_links, False),
        ("POST", "/api/links", create_link, True),
        ("GET", "/api/links/{slug}", show_link, False),
        ("PATCH", "/api/links/{slug}", update_link, True),
        ("DELETE", "/api/links/{slug}", delete_link, True),
        ("GET", "/api/links/{slug}/qr.svg", qr_code, False),
        ("GET", "/api/links/{slug}/qr.png", qr_code, False),
    ]
    for method, path, handler, writes in api:
        app.router.add_route(method, path, measured(COLLECTOR, _guarded(handler, writes), path))
    app.router.add_route(
        "*", "/api/{rest:.*}", measured(COLLECTOR, _guarded(api_not_found, False), "unmatched")
    )
    # Also answers HEAD.
    app.router.add_get("/{slug}", measured(COLLECTOR, redirect_handler(links), "/{slug}"))

    async def lifecycle(app: web.Application) -> Any:
        await publisher.start()
        if state is not None:
            await state.start()
        drain = asyncio.create_task(links.clicks.run())
        yield
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        await links.clicks.flush(within=settings.produce_timeout_seconds * 2)
        if state is not None:
            await state.stop()
        await publisher.stop()

    app.cleanup_ctx.append(lifecycle)
    return app


# -- the redirect path: lean on purpose ---------------------------------------------------------

_OUTCOMES = {name: LINK_CLICKS.labels(name) for name in ("redirect", "fallback", "gone")}
_REDIRECTED = _OUTCOMES["redirect"]
_UNKNOWN = LINK_CLICKS.labels("unknown_slug")
_NO_STORE = "no-store"
_PAGES = {
    404: "This short link does not exist, or is not active yet.",
    410: "This short link is no longer active: it was disabled, has expired, or reached its limit.",
    429: "Too many requests from your network; try again in a moment.",
    503: "Short links are starting up; try again in a moment.",
}


def redirect_handler(links: Links) -> Handler:
    """The handler of ``GET|HEAD /{slug}``, bound to one service's state."""
    table, clicks, click_ids = links.table, links.clicks, links.click_ids
    queue, bound = clicks.queue, clicks.bound
    trust_forwarded_for = links.settings.trust_forwarded_for
    unavailable_for = str(links.settings.retry_after_seconds)
    # Per truncated address, before anything else: a flood of one network costs a lookup each.
    buckets = TokenBuckets.of(links.redirect_limit) if links.redirect_limit else None
    limited = RATE_LIMITED.labels("links")

    async def follow(request: web.Request) -> web.StreamResponse:
        ip = truncate_ip(client_ip(request, trust_forwarded_for))  # cached per address
        if buckets is not None and (wait := buckets.take(ip)):
            limited.inc()
            return _page(429, {"Retry-After": str(retry_after(wait))})
        slug = request.match_info["slug"]
        link = table.links.get(slug)
        if link is None:
            if not links.loaded:  # restarting: every link would look unknown until it is read
                return _page(503, {"Retry-After": unavailable_for})
            _UNKNOWN.inc()
            return _page(404)
        qr = False
        passed: list[tuple[str, str]] | None = None
        if request.query_string:
            passed = []
            for key, value in request.query.items():
                if key == QR_PARAM:
                    qr = value == "1"
                elif key != CLICK_ID_PARAM:
                    passed.append((key, value))
        headers = request.headers
        user_agent = headers.get("User-Agent", "")
        accept_language = headers.get("Accept-Language", "")
        token = click_ids.take()
        now = time.time()
        prefix = link.click_prefix
        if prefix is not None and passed is None:  # always on, untargeted, nothing passed on
            status, location, reason, counted = link.status_code, prefix + token, "", True
        else:
            count = table.clicks(slug) if link.max_clicks is not None else 0
            resolved = link.resolve(now, count, user_agent, accept_language, passed, token)
            status, location, reason, counted = resolved
        method = request.method
        if counted:
            _REDIRECTED.inc()
            outcome = "redirect"
            if method != "HEAD":
                table.count_click(slug)
        else:
            _OUTCOMES["fallback" if location else "gone"].inc()
            outcome = reason
        # The raw facts only; the worker makes the touchpoint (collectors.links.records.click_touchpoint).
        click = (
            link.click_fields,
            token,
            now,
            method,
            qr,
            outcome,
            location,
            ip,
            user_agent,
            headers.get("Referer", ""),
            accept_language,
        )
        if len(queue) < bound:
            queue.append(click)
        else:
            clicks.drop()
        if location:
            return web.Response(
                status=status, headers={"Location": location, "Cache-Control": _NO_STORE}
            )
        return _page(status)

    return follow


def _page(status: int, headers: dict[str, str] | None = None) -> web.Response:
    text = _PAGES.get(status, "Not found.")
    body = (
        f"<!doctype html><meta charset=utf-8><title>{status}</title>"
        f"<h1>{status}</h1><p>{text}</p>\n"
    )
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        headers={"Cache-Control": _NO_STORE, **(headers or {})},
    )


# -- the management API -------------------------------------------------------------------------


def _guarded(handler: Handler, writes: bool) -> Handler:
    """Rate limit per client address, then the bearer token. Writes need a configured token."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        links = request.app[LINKS_KEY]
        settings = links.settings
        limiter = links.limiter
        key = client_key(request, settings.trust_forwarded_for)
        if limiter is not None and (refused := limiter.refuse(key)):
            return refused
        token = settings.api_token
        if not token:
            if writes:
                return json_error(
                    403,
                    "link changes are refused: no TRACKER_API_TOKEN is configured on this "
                    "service; set one and send it as 'Authorization: Bearer <token>'",
                )
            return await handler(request)
        sent = request.headers.get("Authorization", "")
        scheme, _, value = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), token.value.encode()
        ):
            return json_error(
                401,
                "missing or wrong bearer token; send 'Authorization: Bearer <TRACKER_API_TOKEN>'",
                headers={"WWW-Authenticate": 'Bearer realm="tracker-links"'},
            )
        return await handler(request)

    return guarded


def _limited(handler: Handler) -> Handler:
    """The management API's rate limit alone, for its public document."""

    async def limited(request: web.Request) -> web.StreamResponse:
        links = request.app[LINKS_KEY]
        key = client_key(request, links.settings.trust_forwarded_for)
        refused = links.limiter.refuse(key) if links.limiter is not None else None
        return refused or await handler(request)

    return limited


async def openapi(_: web.Request) -> web.Response:
    return json_response(OPENAPI)


async def api_not_found(request: web.Request) -> web.Response:
    return json_error(
        404, f"no such endpoint: {request.method} {request.path}; see /api/openapi.json"
    )


async def list_links(request: web.Request) -> web.Response:
    links = request.app[LINKS_KEY]
    tag = request.query.get("tag")
    campaign = request.query.get("campaign")
    chosen = [
        links.view(link)
        for link in sorted(links.table.links.values(), key=lambda x: x.created_at)
        if (tag is None or tag in link.tags) and (campaign is None or link.campaign == campaign)
    ]
    return json_response({"links": chosen, "count": len(chosen)})


async def create_link(request: web.Request) -> web.Response:
    links = request.app[LINKS_KEY]
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body, dict):
        return json_error(400, 'the body must be a JSON object such as {"target": "https://..."}')
    slug = body.get("slug")
    if slug is None:
        slug = generate_slug(links.table.links)
    elif isinstance(slug, str) and validate_slug(slug) is None and slug in links.table.links:
        return json_error(409, f"the slug {slug!r} is taken; pick another or leave it out")
    try:
        link = parse_link({k: v for k, v in body.items() if k != "slug"}, slug=slug)
    except ValidationError as exc:
        return _invalid(exc)
    return await _saved(links, link, 201)


async def show_link(request: web.Request) -> web.Response:
    links = request.app[LINKS_KEY]
    link = links.table.links.get(request.match_info["slug"])
    if link is None:
        return _no_link(request.match_info["slug"])
    return json_response(links.view(link))


async def update_link(request: web.Request) -> web.Response:
    links = request.app[LINKS_KEY]
    slug = request.match_info["slug"]
    existing = links.table.links.get(slug)
    if existing is None:
        return _no_link(slug)
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    try:
        link = parse_link(body, existing=existing)
    except ValidationError as exc:
        return _invalid(exc)
    return await _saved(links, link, 200)


async def delete_link(request: web.Request) -> web.Response:
    links = request.app[LINKS_KEY]
    slug = request.match_info["slug"]
    if slug not in links.table.links:
        return _no_link(slug)
    try:
        await links.remove(slug)
    except BackpressureError as exc:
        return _unavailable(exc)
    return web.Response(status=204)


async def qr_code(request: web.Request) -> web.Response:
    links = request.app[LINKS_KEY]
    slug = request.match_info["slug"]
    if slug not in links.table.links:
        return _no_link(slug)
    code = segno.make(f"{links.short_url(slug)}?{QR_PARAM}=1", error="m")
    out = io.BytesIO()
    if request.path.endswith(".svg"):
        code.save(out, kind="svg", scale=8, border=4, xmldecl=False)
        content_type = "image/svg+xml"
    else:
        code.save(out, kind="png", scale=8, border=4)
        content_type = "image/png"
    return web.Response(
        body=out.getvalue(),
        content_type=content_type,
        headers={"Cache-Control": "private, max-age=3600"},
    )


async def _saved(links: Links, link: Link, status: int) -> web.Response:
    try:
        await links.save(link)
    except BackpressureError as exc:
        return _unavailable(exc)
    return json_response(
        links.view(link),
        status=status,
        headers={"Location": f"/api/links/{link.slug}"} if status == 201 else None,
    )


async def _json_body(request: web.Request) -> Any:
    # Decoded as its Content-Encoding says, bounded: a body that is not what its encoding says
    # is a 400, an unknown encoding a 415, past 64 KiB a 413 (it was a 500).
    wait = request.app[LINKS_KEY].settings.body_read_timeout_seconds
    body = await read_body(request, MAX_API_BODY, wait)
    if isinstance(body, web.Response):
        return body
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return json_error(400, f"body is not valid JSON: {exc}")


def _invalid(exc: ValidationError) -> web.Response:
    return json_error(
        400, f"the link is not valid: {exc}", errors=[e.as_dict() for e in exc.errors]
    )


def _no_link(slug: str) -> web.Response:
    return json_error(404, f"no link with slug {slug!r}")


def _unavailable(exc: BackpressureError) -> web.Response:
    retry = str(max(1, round(exc.retry_after)))
    return json_error(503, str(exc), headers={"Retry-After": retry}, retry_after=int(retry))
