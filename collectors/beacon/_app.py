from __future__ import annotations

import base64
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from collectors.beacon._numbers import NumberReservations, numbers_handler
from collectors.beacon._segment_app import (
    SOURCES_KEY,
    add_segment_routes,
    claimed,
    keyed_source,
    refused_answer,
)
from collectors.beacon._snippet import add_snippet_routes
from collectors.beacon.sources import Refused
from tracker.bounds import MAX_DEPTH, deeper_than
from tracker.deadletter import DeadLetter
from tracker.errors import BackpressureError, FieldError, ValidationError
from tracker.http import (
    HEALTH_PATHS,
    RAW_BODIES,
    Handler,
    RequestLimiter,
    add_health_routes,
    client_ip,
    client_key,
    json_error,
    json_response,
    read_body,
    request_metrics,
)
from tracker.kafka.producer import Publisher
from tracker.metrics import COLLECTOR_EVENTS
from tracker.privacy import (
    InvalidIdentifier,
    hash_identifier,
    normalize_email,
    normalize_phone,
    redact_emails,
)
from tracker.settings import Settings
from tracker.touchpoint import RequestContext, Touchpoint, accept

COLLECTOR = "beacon"
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
PUBLISHER_KEY = web.AppKey("publisher", Publisher)
SETTINGS_KEY = web.AppKey("settings", Settings)

_PIXEL_FIELDS = (
    "event_id",
    "type",
    "name",
    "channel",
    "ts",
    "anonymous_id",
    "user_id",
    "email",
    "phone",
    "session_id",
    "click_id",
)
_PIXEL_PAGE = {"url": "url", "referrer": "referrer", "title": "title"}
_PIXEL_CAMPAIGN = {f"utm_{k}": k for k in ("source", "medium", "campaign", "term", "content")}


def create_app(
    settings: Settings, publisher: Publisher, numbers: NumberReservations | None = None
) -> web.Application:
    """The beacon. ``numbers`` keeps the number-pool reservations (``POST /v1/numbers``);
    without it, that endpoint answers 503 for a configured pool."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args=RAW_BODIES,
        middlewares=[request_metrics(COLLECTOR), _cors(settings), _rate_limited(settings)],
    )
    app[PUBLISHER_KEY] = publisher
    app[SETTINGS_KEY] = settings
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/p.gif", get_pixel, allow_head=False)  # a HEAD is no open
    add_snippet_routes(app)  # /t.js, /t/<version>.js, /t.json
    app.router.add_post("/v1/numbers", numbers_handler(settings, publisher, numbers))
    add_segment_routes(app, settings, publisher)  # Segment's tracking API, docs/segment.md
    add_health_routes(app, lambda: _unready(publisher, numbers))

    async def lifecycle(app: web.Application) -> Any:
        await publisher.start()
        if numbers is not None:
            await numbers.log.start()
        yield
        if numbers is not None:
            await numbers.log.stop()
        await publisher.stop()

    app.cleanup_ctx.append(lifecycle)
    return app


def _unready(publisher: Publisher, numbers: NumberReservations | None) -> list[str]:
    reasons = [publisher.unready] if publisher.unready else []
    if numbers is not None and not numbers.loaded:
        reasons.append("number pool reservations are still loading from Kafka")
    return reasons


async def post_events(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    body = await read_body(request, settings.max_body_bytes, settings.body_read_timeout_seconds)
    if isinstance(body, web.Response):
        return body
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return json_error(400, f"body is not valid JSON: {exc}")
    events = parsed.get("events") if isinstance(parsed, dict) else parsed
    if not isinstance(events, list):
        return json_error(400, 'body must be a JSON array of events, or {"events": [...]}')
    if not events:
        return json_error(400, "the batch has no events")
    if len(events) > settings.max_events_per_request:
        return json_error(
            413, f"at most {settings.max_events_per_request} events per request, got {len(events)}"
        )

    try:
        source = keyed_source(request)  # a write key is optional here; a wrong one is refused
    except Refused as exc:
        return refused_answer(exc)
    context = _request_context(request, settings)
    accepted: list[Touchpoint] = []
    rejected: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    for index, event in enumerate(events):
        try:
            touchpoint = accept(event, context)
            accepted.append(touchpoint if source is None else claimed(touchpoint, source))
        except ValidationError as exc:
            errors = _with_depth(event, exc.errors)
            rejected.append(_rejection(index, event, errors))
            dead.append(_dead_letter(event, errors, context))
    return await _publish(request, accepted, dead, rejected)


async def get_pixel(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    context = _request_context(request, settings)
    event = _pixel_event(request, context.received_ts)
    try:
        touchpoint = accept(event, context)
    except ValidationError as exc:
        response = await _publish(
            request,
            [],
            [_dead_letter(event, exc.errors, context)],
            [_rejection(0, event, exc.errors)],
        )
        return response
    response = await _publish(request, [touchpoint], [], [])
    if response.status != 200:
        return response
    return web.Response(
        body=PIXEL,
        content_type="image/gif",
        headers={"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0"},
    )


async def _publish(
    request: web.Request,
    accepted: list[Touchpoint],
    dead: list[DeadLetter],
    rejected: list[dict[str, Any]],
) -> web.Response:
    try:
        await request.app[PUBLISHER_KEY].publish(accepted, dead)
    except BackpressureError as exc:
        retry = str(max(1, round(exc.retry_after)))
        return json_error(503, str(exc), headers={"Retry-After": retry}, retry_after=int(retry))
    COLLECTOR_EVENTS.labels(COLLECTOR, "accepted").inc(len(accepted))
    if rejected:
        COLLECTOR_EVENTS.labels(COLLECTOR, "rejected").inc(len(rejected))
        total = len(accepted) + len(rejected)
        error = f"{len(rejected)} of {total} events were rejected"
        if accepted:
            error += "; the others were accepted"
        return json_response(
            {
                "error": error,
                "accepted": len(accepted),
                "rejected": rejected,
            },
            status=400,
        )
    return json_response({"accepted": len(accepted)})


def _pixel_event(request: web.Request, received_ts: datetime) -> dict[str, Any]:
    """A pixel carries its event in the query string; what it omits gets sensible defaults."""
    query = request.query
    event: dict[str, Any] = {name: query[name] for name in _PIXEL_FIELDS if query.get(name)}
    event.setdefault("event_id", str(uuid.uuid4()))
    event.setdefault("type", "page_view")
    event.setdefault("ts", received_ts.isoformat())
    page = {key: query[param] for param, key in _PIXEL_PAGE.items() if query.get(param)}
    if "url" not in page and request.headers.get("Referer"):
        page["url"] = request.headers["Referer"]
    if page:
        event["page"] = page
    campaign = {key: query[param] for param, key in _PIXEL_CAMPAIGN.items() if query.get(param)}
    if "campaign" in campaign:
        campaign["name"] = campaign.pop("campaign")
    if campaign:
        event["campaign"] = campaign
    properties = {k[2:]: v for k, v in query.items() if k.startswith("p.") and len(k) > 2}
    if properties:
        event["properties"] = properties
    return event


def _request_context(request: web.Request, settings: Settings) -> RequestContext:
    return RequestContext(
        source="web_beacon",
        received_ts=datetime.now(UTC),
        ip=client_ip(request, settings.trust_forwarded_for),
        user_agent=request.headers.get("User-Agent", ""),
        hash_salt=settings.hash_salt.value,
        previous_hash_salt=settings.hash_salt_previous.value,
        pii=settings.pii_rules,
        phone_region=settings.default_phone_region,
        max_event_age=timedelta(days=settings.max_event_age_days),
    )


def _with_depth(event: Any, errors: list[FieldError]) -> list[FieldError]:
    """A refused event that nests too deep says so first: no touchpoint nests like that.

    Asked only of refused events: the schema holds accepted ones to two levels.
    """
    if deeper_than(event, MAX_DEPTH):
        return [FieldError("$", f"nests deeper than {MAX_DEPTH} levels; a touchpoint nests 2")]
    return errors


def _rejection(index: int, event: Any, errors: list[FieldError]) -> dict[str, Any]:
    event_id = event.get("event_id") if isinstance(event, dict) else None
    if not isinstance(event_id, str) or len(event_id) > 36:
        event_id = None  # only a UUID's worth is echoed back
    return {"index": index, "event_id": event_id, "errors": [e.as_dict() for e in errors]}


def _dead_letter(event: Any, errors: list[FieldError], context: RequestContext) -> DeadLetter:
    """The refused event as a dead letter, bounded in size and depth, with no email address or
    phone number in clear: ``email`` and ``phone`` become the hashes the touchpoint would have
    carried, and any other address in the payload or the reasons is redacted."""
    letter = DeadLetter.for_payload(
        _hashed_identifiers(event, context),
        source=COLLECTOR,
        stage="collect",
        errors=[FieldError(e.field, redact_emails(e.reason)) for e in errors],
        received_ts=context.received_ts,
    )
    return dataclasses.replace(
        letter, payload=redact_emails(letter.payload), event_id=letter.event_id[:64]
    )


def _hashed_identifiers(event: Any, context: RequestContext) -> Any:
    if not isinstance(event, dict) or not ("email" in event or "phone" in event):
        return event
    kept = {k: v for k, v in event.items() if k not in ("email", "phone")}
    for name in ("email", "phone"):
        if name in event:
            kept.update(_hashed(name, event[name], context))
    return kept


def _hashed(name: str, raw: Any, context: RequestContext) -> dict[str, str]:
    """``{"email_hash": ...}`` as the touchpoint would carry it, or a redaction marker."""
    try:
        if not isinstance(raw, str):
            raise InvalidIdentifier("not a string")
        normalized = (
            normalize_email(raw) if name == "email" else normalize_phone(raw, context.phone_region)
        )
    except InvalidIdentifier:
        return {name: "<redacted>"}
    return {f"{name}_hash": hash_identifier(name, normalized, context.hash_salt)}


_SEGMENT_PATHS = ("/v1/batch", "/v1/track", "/v1/identify", "/v1/page", "/v1/screen")


def _rate_limited(settings: Settings) -> Any:
    """Every route but health counts against its client's bucket before its body is read: the
    truncated address, or for a request carrying a configured source's write key, that
    source's own limit (TRACKER_SOURCES), checked by the route. 429 with Retry-After, in
    Segment's shape on Segment's routes."""
    limit = settings.rate_limit("beacon")
    limiter = RequestLimiter("beacon", limit) if limit is not None else None
    trust = settings.trust_forwarded_for

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if limiter is None or request.path in HEALTH_PATHS or _keyed_by_source(request):
            return await handler(request)
        wait = limiter.take(client_key(request, trust))
        if not wait:
            return await handler(request)
        reason = (
            "too many requests from this address; retry after the Retry-After seconds, or send "
            "with a source's write key (TRACKER_RATE_LIMITS, TRACKER_SOURCES)"
        )
        headers = {"Retry-After": str(wait)}
        if request.path.startswith(_SEGMENT_PATHS) or request.path in ("/v1/alias", "/v1/group"):
            return json_response(
                {"success": False, "code": "rate_limited", "message": reason},
                status=429,
                headers=headers,
            )
        return json_error(429, reason, headers=headers, retry_after=wait)

    return middleware


def _keyed_by_source(request: web.Request) -> bool:
    """Whether the request carries the write key of a configured, unrevoked source."""
    authorization = request.headers.get("Authorization")
    sources = request.app[SOURCES_KEY]
    if not authorization or sources.open:
        return False
    try:
        return sources.authenticate(authorization) is not None
    except Refused:
        return False


def _cors(settings: Settings) -> Any:
    allowed = settings.cors_origins

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        if origin and ("*" in allowed or origin in allowed):
            # No credentials: the snippet keeps its ids itself and sends no cookies.
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type"
            response.headers["Access-Control-Max-Age"] = "86400"
            vary = response.headers.get("Vary")  # the snippet varies by Accept-Encoding too
            response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
        return response

    return middleware
