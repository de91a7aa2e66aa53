from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from collectors._webhooks import Lifecycle, accept_callbacks, read_webhook, webhook_app
from collectors.calls._common import redact_numbers
from collectors.helpdesk import generic, intercom, zendesk
from collectors.helpdesk._common import HelpdeskProvider
from collectors.helpdesk.records import SupportCallback
from tracker.deadletter import DeadLetter
from tracker.http import json_error
from tracker.metrics import HELPDESK_WEBHOOKS
from tracker.privacy import redact_emails
from tracker.settings import Settings

COLLECTOR = "helpdesk"
PROVIDERS: dict[str, HelpdeskProvider] = {
    p.name: p for p in (zendesk.PROVIDER, intercom.PROVIDER, generic.PROVIDER)
}


class SupportPublisher(Lifecycle, Protocol):
    """Where the helpdesk collector hands callbacks; returns only once Kafka holds them."""

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
    return await accept_callbacks(
        webhook,
        provider,
        settings,
        collector=COLLECTOR,
        counter=HELPDESK_WEBHOOKS,
        publish=request.app[PUBLISHER_KEY].publish_tickets,
        redact=_redacted,
        what="ticket or conversation callback",
    )


def _redacted(body: bytes) -> str:
    """A refused body without an email address or a phone number in clear."""
    return redact_emails(redact_numbers(body))
