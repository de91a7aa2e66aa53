from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from collectors._webhooks import kept, read_webhook, refused, unavailable, webhook_app
from collectors.calls._common import Malformed, WebhookError, WebhookRequest
from collectors.email import mailgun, postmark, sendgrid, ses
from collectors.email._common import Batch, EmailProvider, Refused
from collectors.email.records import SOURCE, EmailEvent, redact_emails, touchpoint_payload
from tracker.deadletter import DeadLetter
from tracker.errors import BackpressureError, FieldError, ValidationError
from tracker.http import json_error, json_response
from tracker.kafka.producer import Publisher
from tracker.metrics import COLLECTOR_EVENTS, EMAIL_WEBHOOKS
from tracker.settings import Settings
from tracker.touchpoint import RequestContext, Touchpoint, accept

COLLECTOR = "email"
PROVIDERS: dict[str, EmailProvider] = {
    p.name: p for p in (sendgrid.PROVIDER, mailgun.PROVIDER, postmark.PROVIDER, ses.PROVIDER)
}

PUBLISHER_KEY = web.AppKey("email_publisher", Publisher)
SETTINGS_KEY = web.AppKey("settings", Settings)

log = logging.getLogger(__name__)


def create_app(settings: Settings, publisher: Publisher) -> web.Application:
    app = webhook_app(settings, COLLECTOR, publisher, {"/v1/email/{provider}": post_webhook})
    app[PUBLISHER_KEY] = publisher
    app[SETTINGS_KEY] = settings
    return app


async def post_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    provider = PROVIDERS.get(request.match_info["provider"])
    if provider is None:
        return json_error(404, f"unknown email provider; use one of {', '.join(sorted(PROVIDERS))}")
    webhook = await read_webhook(request, settings)
    if isinstance(webhook, web.Response):
        return webhook
    try:
        provider.authenticate(webhook, settings)
    except WebhookError as exc:
        return refused(COLLECTOR, provider.name, exc, EMAIL_WEBHOOKS, settings.retry_after_seconds)
    try:
        batch = _normalize(provider, webhook, settings)
    except Malformed as exc:
        letter = _dead_letter(kept(webhook.body, _redacted), exc.errors, webhook.received_ts)
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
        previous_hash_salt=settings.hash_salt_previous.value,
        pii=settings.pii_rules,
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
        return unavailable(exc)
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
        return unavailable(exc)
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


def _redacted(body: bytes) -> str:
    """A refused body without an email address in clear."""
    return redact_emails(body.decode("utf-8", errors="replace"))
