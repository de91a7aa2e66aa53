from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from aiohttp import web

from collectors.calls._common import Ignored, Malformed, WebhookError, WebhookRequest
from collectors.calls._common import redact_numbers as _redact_numbers
from collectors.helpdesk import generic, intercom, zendesk
from collectors.helpdesk._common import HelpdeskProvider
from collectors.helpdesk.records import SupportCallback
from tracker.deadletter import DeadLetter
from tracker.errors import BackpressureError, FieldError
from tracker.http import add_health_routes, json_error, json_response, request_metrics
from tracker.metrics import COLLECTOR_EVENTS, HELPDESK_WEBHOOKS
from tracker.privacy import redact_emails
from tracker.settings import Settings

COLLECTOR = "helpdesk"
PROVIDERS: dict[str, HelpdeskProvider] = {
    p.name: p for p in (zendesk.PROVIDER, intercom.PROVIDER, generic.PROVIDER)
}
# A refused body is kept as a dead letter up to this many bytes (as for call webhooks).
MAX_DEAD_LETTER_PAYLOAD: Final = 256 * 1024

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
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[request_metrics(COLLECTOR)]
    )
    app[PUBLISHER_KEY] = publisher
    app[SETTINGS_KEY] = settings
    app.router.add_post("/v1/helpdesk/{provider}", post_callback)
    add_health_routes(app, lambda: [publisher.unready] if publisher.unready else [])

    async def lifecycle(app: web.Application) -> Any:
        await publisher.start()
        yield
        await publisher.stop()

    app.cleanup_ctx.append(lifecycle)
    return app


async def post_callback(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    provider = PROVIDERS.get(request.match_info["provider"])
    if provider is None:
        return json_error(
            404, f"unknown helpdesk provider; use one of {', '.join(sorted(PROVIDERS))}"
        )
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, f"body is larger than {settings.max_body_bytes} bytes")
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
        HELPDESK_WEBHOOKS.labels(provider.name, exc.outcome).inc()
        log.info(
            "helpdesk webhook refused",
            extra={"provider": provider.name, "status": exc.status, "reason": str(exc)},
        )
        return json_error(exc.status, str(exc))
    try:
        callbacks = _normalize(provider, webhook, settings)
    except Ignored as exc:
        HELPDESK_WEBHOOKS.labels(provider.name, "ignored").inc()
        return json_response({"accepted": 0, "ignored": str(exc)})
    except Malformed as exc:
        letter = DeadLetter.for_payload(
            kept(body),
            source=COLLECTOR,
            stage="collect",
            errors=exc.errors,
            received_ts=webhook.received_ts,
        )
        try:
            await request.app[PUBLISHER_KEY].publish_tickets([], [letter])
        except BackpressureError as backpressure:
            return _unavailable(backpressure)
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
        return _unavailable(exc)
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


def kept(body: bytes) -> str:
    """What a dead letter keeps of a refused body: no email address nor phone number in clear,
    cut at MAX_DEAD_LETTER_PAYLOAD."""
    cut = max(0, len(body) - MAX_DEAD_LETTER_PAYLOAD)
    text = redact_emails(_redact_numbers(body[:MAX_DEAD_LETTER_PAYLOAD]))
    return f"{text}... [{cut} more bytes not kept]" if cut else text


def _unavailable(exc: BackpressureError) -> web.Response:
    retry = str(max(1, round(exc.retry_after)))
    return json_error(503, str(exc), headers={"Retry-After": retry}, retry_after=int(retry))
