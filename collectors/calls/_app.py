from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from aiohttp import web

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
from tracker.http import (
    add_health_routes,
    json_error,
    json_response,
    read_body,
    request_metrics,
)
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

# A refused body is kept as a dead letter up to this many bytes, so that the letter itself always
# fits in one Kafka record whatever TRACKER_MAX_BODY_BYTES allows.
MAX_DEAD_LETTER_PAYLOAD: Final = 256 * 1024


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
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[request_metrics(COLLECTOR)]
    )
    app[PUBLISHER_KEY] = publisher
    app[SETTINGS_KEY] = settings
    app.router.add_post("/v1/calls/{provider}", post_callback)
    add_health_routes(app, lambda: [publisher.unready] if publisher.unready else [])

    async def lifecycle(app: web.Application) -> Any:
        await publisher.start()
        yield
        await publisher.stop()

    app.cleanup_ctx.append(lifecycle)
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
    # Decoded as its Content-Encoding says, bounded in size and time: a body that is not what
    # its encoding claims is the sender's 400, never our 500.
    body = await read_body(request, settings.max_body_bytes, settings.body_read_timeout_seconds)
    if isinstance(body, web.Response):
        return body
    webhook = WebhookRequest(
        method=request.method,
        url=public_url(request, settings),
        headers=request.headers,
        body=body,
        received_ts=datetime.now(UTC),
        max_event_age=timedelta(days=settings.max_event_age_days),
    )
    try:
        provider.authenticate(webhook, settings)
    except WebhookError as exc:
        CALL_WEBHOOKS.labels(provider.name, exc.outcome).inc()
        log.info(
            "call webhook refused",
            extra={"provider": provider.name, "status": exc.status, "reason": str(exc)},
        )
        return _refused(exc, settings)
    try:
        callbacks = _normalize(provider, webhook, settings)
    except Ignored as exc:
        CALL_WEBHOOKS.labels(provider.name, "ignored").inc()
        return json_response({"accepted": 0, "ignored": str(exc)})
    except Malformed as exc:
        letter = DeadLetter.for_payload(
            _kept(body),
            source=COLLECTOR,
            stage="collect",
            errors=exc.errors,
            received_ts=webhook.received_ts,
        )
        try:
            await request.app[PUBLISHER_KEY].publish_calls([], [letter])
        except BackpressureError as backpressure:
            return _unavailable(backpressure)
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
        return _unavailable(exc)
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


def _kept(body: bytes) -> str:
    """What a dead letter keeps of a refused body: redacted, and cut at MAX_DEAD_LETTER_PAYLOAD."""
    if len(body) <= MAX_DEAD_LETTER_PAYLOAD:
        return redact_numbers(body)
    cut = len(body) - MAX_DEAD_LETTER_PAYLOAD
    return f"{redact_numbers(body[:MAX_DEAD_LETTER_PAYLOAD])}... [{cut} more bytes not kept]"


def _unavailable(exc: BackpressureError) -> web.Response:
    retry = str(max(1, round(exc.retry_after)))
    return json_error(503, str(exc), headers={"Retry-After": retry}, retry_after=int(retry))


def _refused(exc: WebhookError, settings: Settings) -> web.Response:
    """A 503 (the provider is not configured here: ours to fix) says when to try again."""
    if exc.status == 503:
        retry = settings.retry_after_seconds
        return json_error(503, str(exc), headers={"Retry-After": str(retry)}, retry_after=retry)
    return json_error(exc.status, str(exc))
