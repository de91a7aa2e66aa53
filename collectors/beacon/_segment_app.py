"""The Segment-compatible routes of the beacon: ``POST /v1/batch`` and ``/v1/{track,identify,
page,screen,alias,group}``. The mapping is collectors/beacon/segment.py; every message then goes
through :func:`tracker.touchpoint.accept`, as ``/v1/events`` does. Answers follow Segment's API:
``200 {"success": true}`` once Kafka acknowledged, errors as ``{"code", "message"}``."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from collectors.beacon.segment import (
    CALLS,
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    segment_field,
    to_event,
)
from collectors.beacon.sources import Refused, Sources
from tracker.bounds import MAX_DEPTH, deeper_than
from tracker.deadletter import DeadLetter
from tracker.errors import BackpressureError, FieldError, ValidationError
from tracker.http import client_ip, json_error, json_response, read_body
from tracker.kafka.producer import Publisher
from tracker.metrics import COLLECTOR_EVENTS
from tracker.settings import Settings, Source
from tracker.touchpoint import RequestContext, Touchpoint, accept

__all__ = ["SOURCES_KEY", "add_segment_routes", "claimed", "keyed_source", "refused_answer"]

COLLECTOR = "beacon"
SOURCES_KEY = web.AppKey("sources", Sources)
_SETTINGS_KEY = web.AppKey("segment_settings", Settings)
_PUBLISHER_KEY = web.AppKey("segment_publisher", Publisher)
_REDACTED = "<redacted>"


def add_segment_routes(app: web.Application, settings: Settings, publisher: Publisher) -> None:
    app[SOURCES_KEY] = Sources(settings)
    app[_SETTINGS_KEY] = settings
    app[_PUBLISHER_KEY] = publisher
    app.router.add_post("/v1/batch", _segment)
    for call in CALLS:
        app.router.add_post(f"/v1/{call}", _segment)


def keyed_source(request: web.Request) -> Source | None:
    """For ``/v1/events``: the source whose write key a request carries (HTTP basic), or None
    without one; such a request stays open, as it always was. Raises :class:`Refused`."""
    authorization = request.headers.get("Authorization")
    if not authorization:
        return None
    sources = request.app[SOURCES_KEY]
    source = sources.authenticate(authorization)
    sources.throttle(source)
    return source


def claimed(touchpoint: Touchpoint, source: Source, channel_field: str = "channel") -> Touchpoint:
    """What a known source sent, marked with its name, and for a server source as trusted
    (enrichment then never classifies it as a bot). Raises :class:`ValidationError` for a
    channel the source may not claim."""
    channel = touchpoint.channel
    if source.channels and channel and channel not in source.channels:
        raise ValidationError(
            [
                FieldError(
                    channel_field,
                    f"source {source.name!r} may claim only the channels "
                    f"{', '.join(source.channels)}, not {channel!r}",
                )
            ]
        )
    touchpoint.context["source_name"] = source.name
    if source.kind == "server":
        touchpoint.source = "server"
        touchpoint.context["source_kind"] = "server"
    return touchpoint


def refused_answer(exc: Refused) -> web.Response:
    """A refusal in ``/v1/events`` terms: ``{"error": ...}``."""
    headers = (
        {"Retry-After": str(exc.retry_after)}
        if exc.status == 429
        else {"WWW-Authenticate": 'Basic realm="tracker"'}
    )
    return json_error(exc.status, exc.reason, headers=headers)


async def _segment(request: web.Request) -> web.Response:
    settings = request.app[_SETTINGS_KEY]
    sources = request.app[SOURCES_KEY]
    call = request.path.rsplit("/", 1)[-1]
    batch = call == "batch"
    limit = MAX_BATCH_BYTES if batch else MAX_MESSAGE_BYTES
    authorization = request.headers.get("Authorization")
    try:
        source = sources.authenticate(authorization) if authorization else None
    except Refused as exc:
        return _refused(exc)
    body = await read_body(request, limit, settings.body_read_timeout_seconds)
    if isinstance(body, web.Response):  # the beacon's answer, in Segment's shape
        if body.status == 413:
            return _too_large(batch)
        reason = orjson.loads(body.body if isinstance(body.body, bytes) else b"{}").get("error")
        answer = _error(body.status, "invalid_request", str(reason))
        if body.status == 408:
            answer.force_close()
        return answer
    if len(body) > limit:
        return _too_large(batch)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _error(400, "invalid_request", f"body is not valid JSON: {exc}")
    if not isinstance(parsed, dict):
        return _error(400, "invalid_request", "body must be a JSON object")
    if deeper_than(parsed, MAX_DEPTH):  # no message nests like that; orjson could not measure it
        return _error(
            400, "invalid_request", f"body nests deeper than {MAX_DEPTH} levels; a message nests 3"
        )
    try:
        if not authorization:
            key = parsed.get("writeKey")
            source = sources.authenticate(None, key if isinstance(key, str) else None)
        sources.throttle(source)
    except Refused as exc:
        return _refused(exc)

    if batch:
        messages = parsed.get("batch")
        if not isinstance(messages, list) or not messages:
            return _error(400, "invalid_request", 'body must be {"batch": [message, ...]}')
        if len(messages) > settings.max_events_per_request:
            return _error(
                413,
                "too_large",
                f"at most {settings.max_events_per_request} messages per batch, "
                f"got {len(messages)}",
            )
        shared = parsed.get("context")
        if isinstance(shared, dict):  # a batch's context applies to each of its messages
            messages = [
                {**m, "context": {**shared, **(m.get("context") or {})}}
                if isinstance(m, dict) and isinstance(m.get("context") or {}, dict)
                else m
                for m in messages
            ]
    else:
        messages = [parsed]

    base = _request_context(request, settings)
    received = base.received_ts.isoformat()
    accepted: list[Touchpoint] = []
    rejected: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    for index, message in enumerate(messages):
        try:
            accepted.append(
                _accept(
                    message, None if batch else call, parsed.get("sentAt"), received, base, source
                )
            )
        except ValidationError as exc:
            rejected.append(_rejection(index, message, exc.errors))
            dead.append(
                DeadLetter.for_payload(
                    _redacted(message),
                    source=COLLECTOR,
                    stage="collect",
                    errors=exc.errors,
                    received_ts=base.received_ts,
                )
            )
    try:
        await request.app[_PUBLISHER_KEY].publish(accepted, dead)
    except BackpressureError as exc:
        retry = str(max(1, round(exc.retry_after)))
        return _error(503, "unavailable", str(exc), headers={"Retry-After": retry})
    COLLECTOR_EVENTS.labels(COLLECTOR, "accepted").inc(len(accepted))
    if not rejected:
        return json_response({"success": True})
    COLLECTOR_EVENTS.labels(COLLECTOR, "rejected").inc(len(rejected))
    message = f"{len(rejected)} of {len(messages)} messages were rejected"
    if accepted:
        message += "; the others were accepted"
    return json_response(
        {
            "success": False,
            "code": "invalid_request",
            "message": message + f": {rejected[0]['errors'][0]['field']} "
            f"{rejected[0]['errors'][0]['reason']}",
            "accepted": len(accepted),
            "rejected": rejected,
        },
        status=400,
    )


def _accept(
    message: Any,
    call: str | None,
    sent_at: Any,
    received: str,
    base: RequestContext,
    source: Source | None,
) -> Touchpoint:
    size = len(orjson.dumps(message))
    if size > MAX_MESSAGE_BYTES:
        raise ValidationError(
            [FieldError("$", f"a message may be at most 32 KB, this one is {size} bytes")]
        )
    event, ip = to_event(message, received, call, sent_at)
    # The request's user agent is the sending library's; the person's is context.userAgent.
    context = dataclasses.replace(base, user_agent="", ip=ip or base.ip)
    try:
        touchpoint = accept(event, context)
    except ValidationError as exc:
        raise ValidationError(
            [
                FieldError(segment_field(e.field, call or str(message.get("type"))), e.reason)
                for e in exc.errors
            ]
        ) from None
    if source is None:
        return touchpoint
    return claimed(touchpoint, source, "integrations.Tracker.channel")


def _request_context(request: web.Request, settings: Settings) -> RequestContext:
    return RequestContext(
        source="web_beacon",
        received_ts=datetime.now(UTC),
        ip=client_ip(request, settings.trust_forwarded_for),
        hash_salt=settings.hash_salt.value,
        previous_hash_salt=settings.hash_salt_previous.value,
        pii=settings.pii_rules,
        phone_region=settings.default_phone_region,
        max_event_age=timedelta(days=settings.max_event_age_days),
    )


def _rejection(index: int, message: Any, errors: list[FieldError]) -> dict[str, Any]:
    message_id = message.get("messageId") if isinstance(message, dict) else None
    return {"index": index, "messageId": message_id, "errors": [e.as_dict() for e in errors]}


def _redacted(message: Any) -> Any:
    """Dead letters keep the message, but never an email or phone number in clear."""
    if not isinstance(message, dict):
        return message
    copy = {**message, "traits": _without_contacts(message.get("traits"))}
    if isinstance(message.get("context"), dict):
        context = message["context"]
        copy["context"] = {**context, "traits": _without_contacts(context.get("traits"))}
        if copy["context"]["traits"] is None:
            del copy["context"]["traits"]
    if copy["traits"] is None:
        del copy["traits"]
    return copy


def _without_contacts(traits: Any) -> Any:
    if not isinstance(traits, dict):
        return traits
    return {k: (_REDACTED if k in ("email", "phone") else v) for k, v in traits.items()}


def _refused(exc: Refused) -> web.Response:
    if exc.status == 429:
        return _error(
            429, "rate_limited", exc.reason, headers={"Retry-After": str(exc.retry_after)}
        )
    return _error(
        401, "unauthorized", exc.reason, headers={"WWW-Authenticate": 'Basic realm="tracker"'}
    )


def _too_large(batch: bool) -> web.Response:
    what = "a batch may be at most 500 KB" if batch else "a message may be at most 32 KB"
    return _error(413, "too_large", f"{what}; send smaller batches")


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    # Segment's libraries read "code" and "message" from an error answer.
    return json_response(
        {"success": False, "code": code, "message": message}, status=status, headers=headers
    )
