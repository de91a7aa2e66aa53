from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiohttp import web

from collectors._webhooks import Lifecycle, accept_callbacks, read_webhook, webhook_app
from collectors.calls import asterisk, freeswitch, generic, plivo, telnyx, twilio, vonage
from collectors.calls._common import Provider, redact_numbers
from collectors.calls.records import CallCallback
from tracker.deadletter import DeadLetter
from tracker.http import json_error
from tracker.metrics import CALL_WEBHOOKS
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


class CallPublisher(Lifecycle, Protocol):
    """Where the calls collector hands callbacks; returns only once Kafka holds them."""

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
    return await accept_callbacks(
        webhook,
        provider,
        settings,
        collector=COLLECTOR,
        counter=CALL_WEBHOOKS,
        publish=request.app[PUBLISHER_KEY].publish_calls,
        redact=redact_numbers,
        what="call callback",
    )
