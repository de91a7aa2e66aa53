from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from aiohttp import web

from collectors.calls._common import Malformed, WebhookError, WebhookRequest
from collectors.email import mailgun, postmark, sendgrid, ses
from collectors.email._common import Batch, EmailProvider, Refused
from collectors.email.records import SOURCE, EmailEvent, redact_emails, touchpoint_payload
from tracker.deadletter import DeadLetter
from tracker.errors import BackpressureError, FieldError, ValidationError
from tracker.http import (
    add_health_routes,
    json_error,
    json_response,
    read_body,
    request_metrics,
)
from tracker.kafka.producer import Publisher
from tracker.metrics import COLLECTOR_EVENTS, EMAIL_WEBHOOKS
from tracker.settings import Settings
from tracker.touchpoint import RequestContext, Touchpoint, accept

COLLECTOR = "email"
PROVIDERS: dict[str, EmailProvider] = {
    p.name: p for p in (sendgrid.PROVIDER, mailgun.PROVIDER, postmark.PROVIDER, ses.PROVIDER)
}
# A refused body is kept as a dead letter up to this many bytes (as for call webhooks).
MAX_DEAD_LETTER_PAYLOAD: Final = 256 * 1024

PUBLISHER_KEY = web.AppKey("email_publisher", Publisher)
SETTINGS_KEY = web.AppKey("settings", Settings)

log = logging.getLogger(__name__)


def create_app(settings: Settings, publisher: Publisher) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[request_metrics(COLLECTOR)]
    )
    app[PUBLISHER_KEY] = publisher
    app[SETTINGS_KEY] = settings
    app.router.add_post("/v1/email/{provider}", post_webhook)
    add_health_routes(app, lambda: publisher.ready)

    async def lifecycle(app: web.Application) -> Any:
        await publisher.start()
        yield
        await publisher.stop()

    app.cleanup_ctx.append(lifecycle)
    return app


async def post_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    provider = PROVIDERS.get(request.match_info["provider"])
    if provider is None:
        return json_error(404, f"unknown email provider; use one of {', '.join(sorted(PROVIDERS))}")
    # Decoded as its Content-Encoding says, bounded in size and time: a body that is not what
    # its encoding claims is the sender's 400, never our 500.
    body = await read_body(request, settings.max_body_bytes, settings.body_read_timeout_seconds)
    if isinstance(body, web.Response):
        return body
    webhook = WebhookRequest(
        method=request.method,
        url=str(request.url),
        headers=request.headers,
        body=body,
        received_ts=datetime.now(UTC),
        max_event_age=timedelta(days=settings.max_event_age_days),
    )
    try:
        provider.authenticate(webhook, settings)
    except WebhookError as exc:
        EMAIL_WEBHOOKS.labels(provider.name, exc.outcome).inc()
        log.info(
            "email webhook refused",
            extra={"provider": provider.name, "status": exc.status, "reason": str(exc)},
        )
        return _refused(exc, settings)
    try:
        batch = _normalize(provider, webhook, settings)
    except Malformed as exc:
        letter = _dead_letter(_kept(body), exc.errors, webhook.received_ts)
        return await _answer(request, provider, [], [letter], exc.errors, 0)
    if batch.subscribe_url:
        return await _subscription(request, provider, batch, webhook.received_ts)
    touchpoints, letters, errors = _accepted(batch, webhook.received_ts, settings)
    return await _answer(request, provider, touchpoints, letters, errors, len(batch.ignored))


def _normalize(provider: EmailProvider, webhook: WebhookRequest, settings: Settings) -> Batch:
    """A payload shaped in a way no rule foresaw is still the sender's problem: 400 and a dead
    letter, never a 500 that the provider would retry forever."""
    try:
        return provider.normalize(webhook, settings)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError) as exc:
        log.warning(
            "email webhook not understood", extra={"provider": provider.name, "error": repr(exc)}
        )
        shown = repr(exc)[:200]
        raise Malformed([FieldError("$", f"the payload could not be read: {shown}")]) from exc


def _accepted(
    batch: Batch, received_ts: datetime, settings: Settings
) -> tuple[list[Touchpoint], list[DeadLetter], list[FieldError]]:
    """Each event as a touchpoint, through the same validation as any client's (which hashes
    the email); the refused ones as dead letters, with their reasons."""
    touchpoints: list[Touchpoint] = []
    refused = list(batch.refused)
    for event in batch.events:
        try:
            touchpoints.append(
                accept(touchpoint_payload(event), _context(event, received_ts, settings))
            )
        except ValidationError as exc:
            errors = [FieldError(event.field(e.field), e.reason) for e in exc.errors]
            refused.append(Refused(_redacted_event(event), errors))
    letters = [
        _dead_letter(redact_emails(orjson.dumps(r.payload).decode()), r.errors, received_ts)
        for r in refused
    ]
    return touchpoints, letters, [e for r in refused for e in r.errors]


def _context(event: EmailEvent, received_ts: datetime, settings: Settings) -> RequestContext:
    return RequestContext(
        source=SOURCE,
        received_ts=received_ts,
        ip=event.ip,
        user_agent=event.user_agent,
        hash_salt=settings.hash_salt.value,
        phone_region=settings.default_phone_region,
        max_event_age=timedelta(days=settings.max_event_age_days),
    )


async def _answer(
    request: web.Request,
    provider: EmailProvider,
    touchpoints: list[Touchpoint],
    letters: list[DeadLetter],
    errors: list[FieldError],
    ignored: int,
) -> web.Response:
    try:
        await request.app[PUBLISHER_KEY].publish(touchpoints, letters)
    except BackpressureError as exc:
        retry = str(max(1, round(exc.retry_after)))
        return json_error(503, str(exc), headers={"Retry-After": retry}, retry_after=int(retry))
    COLLECTOR_EVENTS.labels(COLLECTOR, "accepted").inc(len(touchpoints))
    if errors:
        EMAIL_WEBHOOKS.labels(provider.name, "malformed").inc()
        COLLECTOR_EVENTS.labels(COLLECTOR, "rejected").inc(len(letters))
        error = f"not a {provider.name} email event Tracker can read: " + "; ".join(
            f"{e.field}: {e.reason}" for e in errors[:10]
        )
        if touchpoints:
            error += f" ({len(touchpoints)} other events were accepted)"
        return json_error(
            400, error, errors=[e.as_dict() for e in errors], accepted=len(touchpoints)
        )
    EMAIL_WEBHOOKS.labels(provider.name, "accepted" if touchpoints else "ignored").inc()
    answer: dict[str, Any] = {"accepted": len(touchpoints)}
    if ignored:
        answer["ignored"] = ignored
    return json_response(answer)


async def _subscription(
    request: web.Request, provider: EmailProvider, batch: Batch, received_ts: datetime
) -> web.Response:
    """An SNS subscription waits for someone to open its SubscribeURL. Tracker does not fetch
    it: the URL is logged, and kept as a dead letter an operator finds in the console."""
    reason = (
        f"an SNS subscription of {batch.topic} awaits confirmation: open SubscribeURL once to "
        "confirm it"
    )
    letter = DeadLetter.for_payload(
        {"TopicArn": batch.topic, "SubscribeURL": batch.subscribe_url},
        source=COLLECTOR,
        stage="confirm",
        errors=[FieldError("SubscribeURL", reason)],
        received_ts=received_ts,
    )
    try:
        await request.app[PUBLISHER_KEY].publish([], [letter])
    except BackpressureError as exc:
        retry = str(max(1, round(exc.retry_after)))
        return json_error(503, str(exc), headers={"Retry-After": retry}, retry_after=int(retry))
    EMAIL_WEBHOOKS.labels(provider.name, "subscription").inc()
    log.warning(
        "SNS subscription awaits confirmation",
        extra={"topic": batch.topic, "subscribe_url": batch.subscribe_url},
    )
    return json_response({"accepted": 0, "subscription": "awaiting confirmation"})


def _dead_letter(payload: str, errors: list[FieldError], received_ts: datetime) -> DeadLetter:
    return DeadLetter.for_payload(
        payload, source=COLLECTOR, stage="collect", errors=errors, received_ts=received_ts
    )


def _redacted_event(event: EmailEvent) -> dict[str, Any]:
    payload = touchpoint_payload(event)
    if "email" in payload:
        payload["email"] = "<redacted>"
    return payload


def _kept(body: bytes) -> str:
    """What a dead letter keeps of a refused body: addresses redacted, cut at the limit."""
    if len(body) <= MAX_DEAD_LETTER_PAYLOAD:
        return redact_emails(body.decode("utf-8", errors="replace"))
    cut = len(body) - MAX_DEAD_LETTER_PAYLOAD
    kept = redact_emails(body[:MAX_DEAD_LETTER_PAYLOAD].decode("utf-8", errors="replace"))
    return f"{kept}... [{cut} more bytes not kept]"


def _refused(exc: WebhookError, settings: Settings) -> web.Response:
    """A 503 (the provider is not configured here: ours to fix) says when to try again."""
    if exc.status == 503:
        retry = settings.retry_after_seconds
        return json_error(503, str(exc), headers={"Retry-After": str(retry)}, retry_after=retry)
    return json_error(exc.status, str(exc))
