from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from collectors._webhooks import kept, read_webhook, refused, unavailable, webhook_app
from collectors.calls import asterisk, freeswitch, generic, plivo, telnyx, twilio, vonage
from collectors.calls._common import (
    Ignored,
    Malformed,
    Provider,
    WebhookError,
    WebhookRequest,
    redact_numbers,
)
from collectors.calls.records import CallCallback
from tracker.deadletter import DeadLetter
from tracker.errors import BackpressureError, FieldError
from tracker.http import json_error, json_response
from tracker.metrics import CALL_WEBHOOKS, COLLECTOR_EVENTS
from tracker.settings import Settings

COLLECTOR = "calls"
PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        twilio.PROVIDER,
        vonage.PROVIDER,
        telnyx.PROVIDER,
        plivo.PROVIDER,
        freeswitch.PROVIDER,
        asterisk.PROVIDER,
        generic.PROVIDER,
    )
}

log = logging.getLogger(__name__)


class CallPublisher(Protocol):
    """Where the calls collector hands callbacks; returns only once Kafka holds them."""

    @property
    def ready(self) -> bool: ...

    @property
    def unready(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish_calls(
        self, callbacks: Sequence[CallCallback], dead_letters: Sequence[DeadLetter] = ()
    ) -> None: ...


PUBLISHER_KEY = web.AppKey("call_publisher", CallPublisher)
SETTINGS_KEY = web.AppKey("settings", Settings)


def create_app(settings: Settings, publisher: CallPublisher) -> web.Application:
    app = webhook_app(settings, COLLECTOR, publisher, {"/v1/calls/{provider}": post_callback})
    app[PUBLISHER_KEY] = publisher
    app[SETTINGS_KEY] = settings
    return app


def public_url(request: web.Request, settings: Settings) -> str:
    """The URL the provider called, which Twilio and Plivo sign: behind a proxy, set
    TRACKER_CALLS_PUBLIC_URL to the scheme and host the provider uses."""
    if settings.calls_public_url:
        return settings.calls_public_url + request.rel_url.raw_path_qs
    return str(request.url)


async def post_callback(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    provider = PROVIDERS.get(request.match_info["provider"])
    if provider is None:
        return json_error(404, f"unknown call provider; use one of {', '.join(sorted(PROVIDERS))}")
    webhook = await read_webhook(request, settings, public_url(request, settings))
    if isinstance(webhook, web.Response):
        return webhook
    try:
        provider.authenticate(webhook, settings)
    except WebhookError as exc:
        return refused(COLLECTOR, provider.name, exc, CALL_WEBHOOKS, settings.retry_after_seconds)
    try:
        callbacks = _normalize(provider, webhook, settings)
    except Ignored as exc:
        CALL_WEBHOOKS.labels(provider.name, "ignored").inc()
        return json_response({"accepted": 0, "ignored": str(exc)})
    except Malformed as exc:
        letter = DeadLetter.for_payload(
            kept(webhook.body, redact_numbers),
            source=COLLECTOR,
            stage="collect",
            errors=exc.errors,
            received_ts=webhook.received_ts,
        )
        try:
            await request.app[PUBLISHER_KEY].publish_calls([], [letter])
        except BackpressureError as backpressure:
            return unavailable(backpressure)
        CALL_WEBHOOKS.labels(provider.name, "malformed").inc()
        COLLECTOR_EVENTS.labels(COLLECTOR, "rejected").inc()
        return json_error(
            400,
            f"not a {provider.name} call callback Tracker can read: {exc}",
            errors=[e.as_dict() for e in exc.errors],
        )
    try:
        await request.app[PUBLISHER_KEY].publish_calls(callbacks)
    except BackpressureError as exc:
        return unavailable(exc)
    CALL_WEBHOOKS.labels(provider.name, "accepted").inc()
    COLLECTOR_EVENTS.labels(COLLECTOR, "accepted").inc(len(callbacks))
    return json_response({"accepted": len(callbacks)})


def _normalize(
    provider: Provider, webhook: WebhookRequest, settings: Settings
) -> list[CallCallback]:
    """A payload shaped in a way no rule foresaw is still the sender's problem: 400 and a dead
    letter, never a 500 that the provider would retry forever."""
    try:
        callbacks = provider.normalize(webhook, settings)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError) as exc:
        log.warning(
            "call callback not understood", extra={"provider": provider.name, "error": repr(exc)}
        )
        shown = repr(exc)[:200]
        raise Malformed([FieldError("$", f"the payload could not be read: {shown}")]) from exc
    # Every provider's fields are bounded as they are read; this holds whatever one composes.
    errors = [FieldError(f, reason) for c in callbacks for f, reason in c.limit_errors()]
    if errors:
        raise Malformed(errors)
    return callbacks
