"""Zendesk: webhooks sent by triggers and automations, with the JSON body docs/helpdesk.md gives,
and ticket events from event subscriptions (``zen:event-type:ticket.*``).

Zendesk signs ``X-Zendesk-Webhook-Signature-Timestamp`` followed by the raw body with HMAC-SHA256
keyed by the webhook's signing secret, and sends the digest in base64 as
``X-Zendesk-Webhook-Signature``. A timestamp further than the tolerance from our clock is refused,
so that a captured request cannot be replayed later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any, Final

from collectors.calls._common import (
    Ignored,
    Malformed,
    Unauthorized,
    WebhookRequest,
    require,
    same,
    secret_or_refuse,
    text,
)
from collectors.helpdesk._common import HelpdeskProvider, body_id, obj, rating, requester, when
from collectors.helpdesk.records import LIFECYCLE, SupportCallback
from tracker.errors import FieldError
from tracker.settings import Settings

__all__ = ["PROVIDER", "sign"]

SIGNATURE: Final = "X-Zendesk-Webhook-Signature"
TIMESTAMP: Final = "X-Zendesk-Webhook-Signature-Timestamp"
# How a ticket came in that makes it a chat rather than a ticket (the ticket's via channel).
CHAT_VIA: Final = frozenset({"chat", "native_messaging", "messaging", "chat_transcript"})
SOLVED: Final = frozenset({"solved", "closed"})


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature Zendesk sends for ``body`` at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    secret = secret_or_refuse(
        settings.zendesk_webhook_secret, "zendesk", "TRACKER_ZENDESK_WEBHOOK_SECRET"
    )
    signature, timestamp = request.header(SIGNATURE), request.header(TIMESTAMP)
    if not (signature and timestamp):
        raise Unauthorized(f"{SIGNATURE} and {TIMESTAMP} are required")
    _fresh(timestamp, request.received_ts, settings.helpdesk_signature_tolerance_seconds)
    if not same(sign(secret, timestamp, request.body), signature):
        raise Unauthorized(f"{SIGNATURE} does not match this request")


def _fresh(raw: str, now: datetime, tolerance: int) -> None:
    """Zendesk sends the timestamp as RFC 3339 (``2026-11-30T10:00:00Z``); unix seconds pass too."""
    try:
        stamp = (
            datetime.fromtimestamp(int(raw), UTC)
            if raw.isdigit()
            else datetime.fromisoformat(raw.replace("Z", "+00:00"))
        )
    except (ValueError, OverflowError, OSError):
        raise Unauthorized(f"{TIMESTAMP} is not a time: {raw[:40]!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    if abs((now - stamp).total_seconds()) > tolerance:
        raise Unauthorized(
            f"{TIMESTAMP} is more than {tolerance} s away from our clock: a replay, or a wrong clock"
        )


def normalize(request: WebhookRequest, settings: Settings) -> list[SupportCallback]:
    data = request.json_object()
    kind = text(data, "type")
    if kind.startswith("zen:event-type:"):
        return [_event(data, request)]
    return [_trigger(data, request, settings)]


def _trigger(data: dict[str, Any], request: WebhookRequest, settings: Settings) -> SupportCallback:
    """A trigger's or automation's webhook, its body written with Zendesk placeholders."""
    require(data, "ticket_id", "updated_at")
    status = text(data, "status").lower()
    event = text(data, "event").lower()
    if not event:
        event = "solved" if status in SOLVED else "updated"
    if event not in LIFECYCLE:
        raise Malformed([FieldError("event", f"must be one of {', '.join(LIFECYCLE)}")])
    score = rating(data, "satisfaction")
    if event == "rated" and score is None:
        raise Malformed([FieldError("satisfaction", "is required for a rated event")])
    who = requester(
        data,
        settings,
        email="requester_email",
        phone="requester_phone",
        user_id="requester_external_id",
    )
    updated = when(data, "updated_at", request)
    assert updated is not None
    via = text(data, "via").lower().replace(" ", "_")
    return SupportCallback(
        provider="zendesk",
        kind="chat" if via in CHAT_VIA else "ticket",
        ticket_id=text(data, "ticket_id"),
        callback_id=body_id(request),
        event=event,
        event_ts=updated,
        received_ts=request.received_ts,
        email_hash=who.email_hash,
        phone_hash=who.phone_hash,
        user_id=who.user_id,
        status=status,
        agent=text(data, "assignee"),
        queue=text(data, "group"),
        priority=text(data, "priority").lower(),
        via=via,
        opened_at=when(data, "created_at", request),
        solved_at=updated if event == "solved" else None,
        rating=score,
    )


def _event(data: dict[str, Any], request: WebhookRequest) -> SupportCallback:
    """A ticket event from an event subscription. It names the requester by Zendesk's own id
    only: a trigger's webhook about the same ticket brings the email that stitches it."""
    kind = text(data, "type").removeprefix("zen:event-type:")
    if not kind.startswith("ticket."):
        raise Ignored(f"{kind} is not about a ticket")
    require(data, "id", "time")
    detail = obj(data, "detail")
    require(detail, "id", at="detail")
    change = obj(data, "event")
    status = text(detail, "status").lower()
    event = "updated"
    if kind == "ticket.created":
        event = "opened"
    elif kind == "ticket.status_changed":
        current = text(change, "current", at="event").lower()
        previous = text(change, "previous", at="event").lower()
        status = current or status
        if current in SOLVED:
            event = "solved"
        elif previous in SOLVED:
            event = "reopened"
    at = when(data, "time", request)
    assert at is not None
    via = text(obj(detail, "via", "detail"), "channel", at="detail.via").lower()
    return SupportCallback(
        provider="zendesk",
        kind="chat" if via in CHAT_VIA else "ticket",
        ticket_id=text(detail, "id", at="detail"),
        callback_id=text(data, "id"),
        event=event,
        event_ts=at,
        received_ts=request.received_ts,
        status=status,
        agent=text(detail, "assignee_id", at="detail"),
        queue=text(detail, "group_id", at="detail"),
        priority=text(detail, "priority", at="detail").lower(),
        via=via,
        opened_at=when(detail, "created_at", request, at="detail"),
        solved_at=at if event == "solved" else None,
    )


PROVIDER = HelpdeskProvider("zendesk", authenticate, normalize)
