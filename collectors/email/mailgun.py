"""Mailgun webhooks: one JSON event per request, signed in the body.

``signature.signature`` is the hex HMAC-SHA256, keyed by the webhook signing key
(TRACKER_MAILGUN_WEBHOOK_SIGNING_KEY), of ``signature.timestamp`` followed by ``signature.token``.
The timestamp must be within TRACKER_EMAIL_SIGNATURE_TOLERANCE_SECONDS of our clock.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from collectors.calls._common import (
    Malformed,
    Unauthorized,
    WebhookRequest,
    epoch_time,
    fresh_timestamp,
    json_object,
    require,
    same,
    secret_or_refuse,
    text,
)
from collectors.email._common import Batch, EmailProvider, happened, tag_list
from collectors.email.records import (
    MAX_EMAIL_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_URL_LENGTH,
    MAX_USER_AGENT_LENGTH,
    EmailEvent,
    proxied_open,
    redact_emails,
)
from tracker.errors import FieldError
from tracker.settings import Settings

__all__ = ["PROVIDER", "sign"]

AT = "event-data"
_TYPES = {
    "accepted": "email_sent",
    "delivered": "email_delivered",
    "rejected": "email_dropped",
    "opened": "email_open",
    "clicked": "email_click",
    "unsubscribed": "email_unsubscribe",
    "complained": "email_spam_report",
}


def sign(key: str, timestamp: str, token: str) -> str:
    return hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def _body(request: WebhookRequest) -> dict[str, Any]:
    """The body, which holds the signature, read before anything is trusted: an unreadable body
    cannot be shown to come from Mailgun, so it is refused as unsigned."""
    try:
        return json_object(request.body, "$")
    except Malformed as exc:
        raise Unauthorized(f"not a signed Mailgun JSON webhook: {exc}") from None


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    key = secret_or_refuse(
        settings.mailgun_webhook_signing_key, "mailgun", "TRACKER_MAILGUN_WEBHOOK_SIGNING_KEY"
    )
    signed = _body(request).get("signature")
    if not isinstance(signed, dict):
        raise Unauthorized("the signature object is missing")
    parts = [str(signed.get(n, "")).strip() for n in ("timestamp", "token", "signature")]
    stamp, token, signature = parts
    if not all(parts):
        raise Unauthorized(
            "signature.timestamp, signature.token and signature.signature are required"
        )
    fresh_timestamp(
        stamp,
        "signature.timestamp",
        request.received_ts,
        settings.email_signature_tolerance_seconds,
    )
    if not same(sign(key, stamp, token), signature.lower()):
        raise Unauthorized("signature.signature does not match this request")


def normalize(request: WebhookRequest, _: Settings) -> Batch:
    data = _body(request).get(AT)
    if not isinstance(data, dict):
        raise Malformed([FieldError(AT, "is required, as an object")])
    require(data, "id", "event", "timestamp", "recipient", at=AT)
    name = text(data, "event", at=AT)
    kind = _TYPES.get(name)
    details: dict[str, str] = {}
    if name == "failed":
        severity = text(data, "severity", at=AT)
        reason = text(data, "reason", at=AT)
        details["bounce_type"] = severity
        if severity == "temporary":
            kind = "email_deferred"
        elif reason.startswith("suppress"):
            kind = "email_dropped"  # Mailgun did not try: the address is on a suppression list
        else:
            kind = "email_bounce"
        if reason:
            details["reason_code"] = reason
    if kind is None:
        return Batch(ignored=[f"mailgun event {name[:40]!r} is not one Tracker records"])
    ts = happened(epoch_time(data, "timestamp", request, at=AT), "timestamp", AT)
    status = data.get("delivery-status")
    if isinstance(status, dict):
        if code := text(status, "code", at=f"{AT}.delivery-status"):
            details["smtp_status"] = code
        message = text(status, "message", at=f"{AT}.delivery-status", limit=MAX_TEXT_LENGTH)
        if message:
            details["reason"] = redact_emails(message)
    client = data.get("client-info")
    client = client if isinstance(client, dict) else {}
    agent = text(client, "user-agent", at=f"{AT}.client-info", limit=MAX_USER_AGENT_LENGTH)
    proxied = ""
    if kind == "email_open":
        proxied = proxied_open(agent, bot=text(client, "bot", at=f"{AT}.client-info"))
        kind = "email_proxy_open" if proxied else kind
    tags = tag_list(data, "tags", at=AT)
    campaigns = data.get("campaigns")
    campaign_name = ""
    if isinstance(campaigns, list) and campaigns and isinstance(campaigns[0], dict):
        campaign_name = text(campaigns[0], "name", at=f"{AT}.campaigns.0")
    campaign_name = campaign_name or (tags[0] if tags else "")
    sent = data.get("message")
    headers = sent.get("headers") if isinstance(sent, dict) else None
    message_id = (
        text(headers, "message-id", at=f"{AT}.message.headers") if isinstance(headers, dict) else ""
    )
    event = EmailEvent(
        provider="mailgun",
        provider_event_id=text(data, "id", at=AT),
        type=kind,
        email=text(data, "recipient", at=AT, limit=MAX_EMAIL_LENGTH),
        ts=ts,
        message_id=message_id,
        campaign={"name": campaign_name} if campaign_name else {},
        tags=tags,
        url=text(data, "url", at=AT, limit=MAX_URL_LENGTH) if kind == "email_click" else "",
        user_agent=agent,
        ip=text(data, "ip", at=AT),
        proxied=proxied,
        details=details,
        where=AT,
        email_field="recipient",
    )
    return Batch(events=[event])


PROVIDER = EmailProvider("mailgun", authenticate, normalize)
