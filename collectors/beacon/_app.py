from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from collectors.beacon._numbers import NumberReservations, numbers_handler
from tracker.deadletter import DeadLetter
from tracker.errors import BackpressureError, FieldError, ValidationError
from tracker.http import add_health_routes, client_ip, json_error, json_response, request_metrics
from tracker.kafka.producer import Publisher
from tracker.metrics import COLLECTOR_EVENTS
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
        middlewares=[request_metrics(COLLECTOR), _cors(settings)],
    )
    app[PUBLISHER_KEY] = publisher
    app[SETTINGS_KEY] = settings
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/p.gif", get_pixel, allow_head=False)  # a HEAD is no open
    app.router.add_get("/t.js", _snippet_handler())
    app.router.add_post("/v1/numbers", numbers_handler(settings, publisher, numbers))
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
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        return _too_large(settings)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _too_large(settings)
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

    context = _request_context(request, settings)
    accepted: list[Touchpoint] = []
    rejected: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    for index, event in enumerate(events):
        try:
            accepted.append(accept(event, context))
        except ValidationError as exc:
            rejected.append(_rejection(index, event, exc.errors))
            dead.append(_dead_letter(event, exc.errors, context))
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


def _snippet_handler() -> Any:
    """``GET /t.js``: the web snippet, cached by browsers for a few minutes and revalidated by ETag."""
    body = resources.files("collectors.beacon").joinpath("t.js").read_bytes()
    etag = f'"{hashlib.sha256(body).hexdigest()[:20]}"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=300"}

    async def get_snippet(request: web.Request) -> web.Response:
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=body,
            headers={**headers, "Content-Type": "application/javascript; charset=utf-8"},
        )

    return get_snippet


def _request_context(request: web.Request, settings: Settings) -> RequestContext:
    return RequestContext(
        source="web_beacon",
        received_ts=datetime.now(UTC),
        ip=client_ip(request, settings.trust_forwarded_for),
        user_agent=request.headers.get("User-Agent", ""),
        hash_salt=settings.hash_salt.value,
        phone_region=settings.default_phone_region,
        max_event_age=timedelta(days=settings.max_event_age_days),
    )


def _rejection(index: int, event: Any, errors: list[FieldError]) -> dict[str, Any]:
    event_id = event.get("event_id") if isinstance(event, dict) else None
    return {"index": index, "event_id": event_id, "errors": [e.as_dict() for e in errors]}


def _dead_letter(event: Any, errors: list[FieldError], context: RequestContext) -> DeadLetter:
    return DeadLetter.for_payload(
        _redacted(event),
        source=COLLECTOR,
        stage="collect",
        errors=errors,
        received_ts=context.received_ts,
    )


def _redacted(event: Any) -> Any:
    """Dead letters keep the payload, but never an email or phone number in clear."""
    if isinstance(event, dict) and ("email" in event or "phone" in event):
        return {k: ("<redacted>" if k in ("email", "phone") else v) for k, v in event.items()}
    return event


def _too_large(settings: Settings) -> web.Response:
    return json_error(
        413, f"body is larger than {settings.max_body_bytes} bytes; send smaller batches"
    )


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
            response.headers["Vary"] = "Origin"
        return response

    return middleware
