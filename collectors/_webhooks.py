"""What every provider-webhook collector (calls, email, helpdesk) shares around its providers:
the app with its health routes and publisher lifecycle, reading a body into a
:class:`~collectors.calls._common.WebhookRequest`, the answer to a refused signature, the 503 when
Kafka is away, and what a dead letter keeps of a refused body."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from aiohttp import web
from prometheus_client import Counter

from tracker.deadletter import DeadLetter
from tracker.errors import BackpressureError, FieldError
from tracker.http import (
    RAW_BODIES,
    add_health_routes,
    client_key,
    json_error,
    json_response,
    rate_limited,
    read_body,
    request_metrics,
)
from tracker.metrics import COLLECTOR_EVENTS
from tracker.settings import Settings

if TYPE_CHECKING:
    from collectors.calls._common import WebhookError, WebhookRequest

__all__ = [
    "MAX_DEAD_LETTER_PAYLOAD",
    "CallbackProvider",
    "accept_callbacks",
    "kept",
    "read_callbacks",
    "read_webhook",
    "refused",
    "unavailable",
    "webhook_app",
]

# A refused body is kept as a dead letter up to this many bytes, so that the letter itself always
# fits in one Kafka record whatever TRACKER_MAX_BODY_BYTES allows.
MAX_DEAD_LETTER_PAYLOAD: Final = 256 * 1024

log = logging.getLogger(__name__)


class BoundedCallback(Protocol):
    """A callback read from a provider, which says which of its fields are over their bounds."""

    def limit_errors(self) -> list[tuple[str, str]]: ...


Callback = TypeVar("Callback", bound=BoundedCallback)


class CallbackProvider(Protocol[Callback]):
    """A provider as the collectors dispatch to it: who it is, how to check that a request is
    really from it, and how to read its callbacks."""

    @property
    def name(self) -> str: ...

    @property
    def authenticate(self) -> Callable[[WebhookRequest, Settings], None]: ...

    @property
    def normalize(self) -> Callable[[WebhookRequest, Settings], list[Callback]]: ...


class Lifecycle(Protocol):
    """A publisher as the app runs it: started with the app, stopped with it, and why not ready."""

    @property
    def unready(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def webhook_app(
    settings: Settings,
    collector: str,
    publisher: Lifecycle,
    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]],
) -> web.Application:
    """An app taking POSTs on ``routes``, with /healthz, /readyz (ready while the publisher is)
    and /metrics, bodies up to TRACKER_MAX_BODY_BYTES, the collector's rate limit per provider
    and client (TRACKER_RATE_LIMITS, surface ``collector``), and the publisher started and
    stopped with it. The caller stores what its handlers need under its own app keys."""

    def client(request: web.Request) -> str:
        # One provider's burst never holds up another's (each sends from its own addresses).
        provider = request.match_info.get("provider", "")[:32]
        return f"{provider}|{client_key(request, settings.trust_forwarded_for)}"

    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args=RAW_BODIES,
        middlewares=[
            request_metrics(collector),
            rate_limited(
                collector, settings.rate_limit(collector), settings.trust_forwarded_for, client
            ),
        ],
    )
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    add_health_routes(app, lambda: [publisher.unready] if publisher.unready else [])

    async def lifecycle(app: web.Application) -> Any:
        await publisher.start()
        yield
        await publisher.stop()

    app.cleanup_ctx.append(lifecycle)
    return app


async def read_webhook(
    request: web.Request, settings: Settings, url: str = ""
) -> WebhookRequest | web.Response:
    """The request as the provider sent it, or the answer instead: 413 for a body over
    TRACKER_MAX_BODY_BYTES, 408 for one that stalls (TRACKER_BODY_READ_TIMEOUT_SECONDS), 415 for
    a Content-Encoding Tracker does not read. ``url`` is the URL the provider called, where it
    differs from the one received (a proxy)."""
    # Imported here: the calls package imports this module as it loads.
    from collectors.calls._common import WebhookRequest

    # Decoded as its Content-Encoding says, bounded in size and time: a body that is not what its
    # encoding claims is the sender's 400 (it was a 500), an unknown encoding a 415, a bomb a 413.
    body = await read_body(request, settings.max_body_bytes, settings.body_read_timeout_seconds)
    if isinstance(body, web.Response):
        return body
    return WebhookRequest(
        method=request.method,
        url=url or str(request.url),
        headers=request.headers,
        body=body,
        received_ts=datetime.now(UTC),
        max_event_age=timedelta(days=settings.max_event_age_days),
    )


def refused(
    collector: str, provider: str, exc: WebhookError, counter: Counter, retry_after: int
) -> web.Response:
    """A webhook whose signature or credentials do not hold (or whose provider is turned off):
    counted, logged with the reason, answered with its status. Nothing is produced. A 503 (the
    provider is turned off here: ours to fix) says when to try again: ``retry_after`` seconds."""
    counter.labels(provider, exc.outcome).inc()
    log.info(
        f"{collector} webhook refused",
        extra={"provider": provider, "status": exc.status, "reason": str(exc)},
    )
    if exc.status == 503:
        retry = max(1, retry_after)
        return json_error(503, str(exc), headers={"Retry-After": str(retry)}, retry_after=retry)
    return json_error(exc.status, str(exc))


def unavailable(exc: BackpressureError) -> web.Response:
    """Kafka did not take the write: 503, and when to try again."""
    retry = str(max(1, round(exc.retry_after)))
    return json_error(503, str(exc), headers={"Retry-After": retry}, retry_after=int(retry))


def kept(body: bytes, redact: Callable[[bytes], str]) -> str:
    """What a dead letter keeps of a refused body: redacted by ``redact``, cut at
    MAX_DEAD_LETTER_PAYLOAD."""
    if len(body) <= MAX_DEAD_LETTER_PAYLOAD:
        return redact(body)
    cut = len(body) - MAX_DEAD_LETTER_PAYLOAD
    return f"{redact(body[:MAX_DEAD_LETTER_PAYLOAD])}... [{cut} more bytes not kept]"


async def accept_callbacks(
    webhook: WebhookRequest,
    provider: CallbackProvider[Callback],
    settings: Settings,
    *,
    collector: str,
    counter: Counter,
    publish: Callable[[Sequence[Callback], Sequence[DeadLetter]], Awaitable[None]],
    redact: Callable[[bytes], str],
    what: str,
) -> web.Response:
    """A provider's webhook, authenticated, read into callbacks and published: 200 once Kafka
    holds them; 401/403/503 for a signature or credentials that do not hold; 200 with the reason
    for an authentic callback about something else; 400 and a dead letter (its body redacted by
    ``redact``) for a payload that cannot be read; 503 with ``Retry-After`` when Kafka is away.
    ``what`` names the callbacks in the 400's reason."""
    # Imported here: the calls package imports this module as it loads.
    from collectors.calls._common import Ignored, Malformed, WebhookError

    try:
        provider.authenticate(webhook, settings)
    except WebhookError as exc:
        return refused(collector, provider.name, exc, counter, settings.retry_after_seconds)
    try:
        callbacks = read_callbacks(provider, webhook, settings)
    except Ignored as exc:
        counter.labels(provider.name, "ignored").inc()
        return json_response({"accepted": 0, "ignored": str(exc)})
    except Malformed as exc:
        letter = DeadLetter.for_payload(
            kept(webhook.body, redact),
            source=collector,
            stage="collect",
            errors=exc.errors,
            received_ts=webhook.received_ts,
        )
        try:
            await publish([], [letter])
        except BackpressureError as backpressure:
            return unavailable(backpressure)
        counter.labels(provider.name, "malformed").inc()
        COLLECTOR_EVENTS.labels(collector, "rejected").inc()
        return json_error(
            400,
            f"not a {provider.name} {what} Tracker can read: {exc}",
            errors=[e.as_dict() for e in exc.errors],
        )
    try:
        await publish(callbacks, [])
    except BackpressureError as exc:
        return unavailable(exc)
    counter.labels(provider.name, "accepted").inc()
    COLLECTOR_EVENTS.labels(collector, "accepted").inc(len(callbacks))
    return json_response({"accepted": len(callbacks)})


def read_callbacks(
    provider: CallbackProvider[Callback], webhook: WebhookRequest, settings: Settings
) -> list[Callback]:
    """The provider's callbacks in ``webhook``, each within its bounds, or ``Malformed``. A payload shaped in a way no rule foresaw is still the sender's problem: 400 and a dead
    letter, never a 500 that the provider would retry forever."""
    from collectors.calls._common import Malformed

    try:
        callbacks = provider.normalize(webhook, settings)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError) as exc:
        log.warning(
            "webhook callback not understood",
            extra={"provider": provider.name, "error": repr(exc)},
        )
        shown = repr(exc)[:200]
        raise Malformed([FieldError("$", f"the payload could not be read: {shown}")]) from exc
    # Every provider's fields are bounded as they are read; this holds whatever one composes.
    errors = [FieldError(f, reason) for c in callbacks for f, reason in c.limit_errors()]
    if errors:
        raise Malformed(errors)
    return callbacks
