from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from collectors._webhooks import kept, read_webhook, refused, unavailable, webhook_app
from collectors.calls._common import (
    Ignored,
    Malformed,
    WebhookError,
    WebhookRequest,
    redact_numbers,
)
from collectors.helpdesk import generic, intercom, zendesk
from collectors.helpdesk._common import HelpdeskProvider
from collectors.helpdesk.records import SupportCallback
from tracker.deadletter import DeadLetter
from tracker.errors import BackpressureError, FieldError
from tracker.http import json_error, json_response
from tracker.metrics import COLLECTOR_EVENTS, HELPDESK_WEBHOOKS
from tracker.privacy import redact_emails
from tracker.settings import Settings

COLLECTOR = "helpdesk"
PROVIDERS: dict[str, HelpdeskProvider] = {
    p.name: p for p in (zendesk.PROVIDER, intercom.PROVIDER, generic.PROVIDER)
}
log = logging.getLogger(__name__)


class SupportPublisher(Protocol):
    """Where the helpdesk collector hands callbacks; returns only once Kafka holds them."""

    @property
    def ready(self) -> bool: ...

    @property
    def unready(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish_tickets(
        self, callbacks: Sequence[SupportCallback], dead_letters: Sequence[DeadLetter] = ()
    ) -> None: ...


PUBLISHER_KEY = web.AppKey("support_publisher", SupportPublisher)
SETTINGS_KEY = web.AppKey("settings", Settings)


def create_app(settings: Settings, publisher: SupportPublisher) -> web.Application:
    app = webhook_app(settings, COLLECTOR, publisher, {"/v1/helpdesk/{provider}": post_callback})
    app[PUBLISHER_KEY] = publisher
    app[SETTINGS_KEY] = settings
    return app


async def post_callback(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    provider = PROVIDERS.get(request.match_info["provider"])
    if provider is None:
        return json_error(
            404, f"unknown helpdesk provider; use one of {', '.join(sorted(PROVIDERS))}"
        )
    webhook = await read_webhook(request, settings)
    if isinstance(webhook, web.Response):
        return webhook
    try:
        provider.authenticate(webhook, settings)
    except WebhookError as exc:
        return refused(
            COLLECTOR, provider.name, exc, HELPDESK_WEBHOOKS, settings.retry_after_seconds
        )
    try:
        callbacks = _normalize(provider, webhook, settings)
    except Ignored as exc:
        HELPDESK_WEBHOOKS.labels(provider.name, "ignored").inc()
        return json_response({"accepted": 0, "ignored": str(exc)})
    except Malformed as exc:
        letter = DeadLetter.for_payload(
            kept(webhook.body, _redacted),
            source=COLLECTOR,
            stage="collect",
            errors=exc.errors,
            received_ts=webhook.received_ts,
        )
        try:
            await request.app[PUBLISHER_KEY].publish_tickets([], [letter])
        except BackpressureError as backpressure:
            return unavailable(backpressure)
        HELPDESK_WEBHOOKS.labels(provider.name, "malformed").inc()
        COLLECTOR_EVENTS.labels(COLLECTOR, "rejected").inc()
        return json_error(
            400,
            f"not a {provider.name} ticket or conversation callback Tracker can read: {exc}",
            errors=[e.as_dict() for e in exc.errors],
        )
    try:
        await request.app[PUBLISHER_KEY].publish_tickets(callbacks)
    except BackpressureError as exc:
        return unavailable(exc)
    HELPDESK_WEBHOOKS.labels(provider.name, "accepted").inc()
    COLLECTOR_EVENTS.labels(COLLECTOR, "accepted").inc(len(callbacks))
    return json_response({"accepted": len(callbacks)})


def _normalize(
    provider: HelpdeskProvider, webhook: WebhookRequest, settings: Settings
) -> list[SupportCallback]:
    """A payload shaped in a way no rule foresaw is still the sender's problem: 400 and a dead
    letter, never a 500 that the provider would retry forever."""
    try:
        callbacks = provider.normalize(webhook, settings)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError) as exc:
        log.warning(
            "helpdesk callback not understood",
            extra={"provider": provider.name, "error": repr(exc)},
        )
        shown = repr(exc)[:200]
        raise Malformed([FieldError("$", f"the payload could not be read: {shown}")]) from exc
    errors = [FieldError(f, reason) for c in callbacks for f, reason in c.limit_errors()]
    if errors:
        raise Malformed(errors)
    return callbacks


def _redacted(body: bytes) -> str:
    """A refused body without an email address or a phone number in clear."""
    return redact_emails(redact_numbers(body))
