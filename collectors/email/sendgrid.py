"""SendGrid's Event Webhook: a JSON array of events, signed with ECDSA.

``X-Twilio-Email-Event-Webhook-Signature`` is the base64 DER ECDSA (P-256, SHA-256) signature of
``X-Twilio-Email-Event-Webhook-Timestamp`` followed by the raw body, verified with the public key
SendGrid shows when signed webhooks are turned on (TRACKER_SENDGRID_WEBHOOK_PUBLIC_KEY).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from collectors.calls._common import (
    Malformed,
    NotConfigured,
    Unauthorized,
    WebhookRequest,
    check_shape,
    epoch_time,
    fresh_timestamp,
    require,
    secret_or_refuse,
    text,
)
from collectors.email._common import Batch, EmailProvider, each_event, happened, tag_list
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

__all__ = ["PROVIDER", "public_key"]

SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
VARIABLE = "TRACKER_SENDGRID_WEBHOOK_PUBLIC_KEY"

_TYPES = {
    "processed": "email_sent",
    "deferred": "email_deferred",
    "delivered": "email_delivered",
    "dropped": "email_dropped",
    "bounce": "email_bounce",
    "open": "email_open",
    "click": "email_click",
    "spamreport": "email_spam_report",
    "unsubscribe": "email_unsubscribe",
    "group_unsubscribe": "email_unsubscribe",
    "group_resubscribe": "email_resubscribe",
}


@lru_cache(maxsize=4)
def public_key(encoded: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it: base64 of the DER public key."""
    try:
        key = load_der_public_key(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        raise NotConfigured("sendgrid", f"{VARIABLE} (a base64 ECDSA public key)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise NotConfigured("sendgrid", f"{VARIABLE} (an ECDSA key, not another kind)")
    return key


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    key = public_key(secret_or_refuse(settings.sendgrid_webhook_public_key, "sendgrid", VARIABLE))
    signature, stamp = request.header(SIGNATURE), request.header(TIMESTAMP)
    if not signature or not stamp:
        raise Unauthorized(f"{SIGNATURE} and {TIMESTAMP} are required")
    fresh_timestamp(
        stamp, TIMESTAMP, request.received_ts, settings.email_signature_tolerance_seconds
    )
    try:
        key.verify(
            base64.b64decode(signature, validate=True),
            stamp.encode() + request.body,
            ec.ECDSA(hashes.SHA256()),
        )
    except (binascii.Error, ValueError, InvalidSignature):
        raise Unauthorized(f"{SIGNATURE} does not match this request") from None


def normalize(request: WebhookRequest, _: Settings) -> Batch:
    try:
        parsed = orjson.loads(request.body)
    except orjson.JSONDecodeError as exc:
        raise Malformed([FieldError("$", f"is not valid JSON: {exc}")]) from None
    if not isinstance(parsed, list):
        raise Malformed([FieldError("$", "must be a JSON array of events")])
    check_shape(parsed)
    return each_event(parsed, lambda item, where: _event(item, where, request))


def _event(data: Mapping[str, Any], where: str, request: WebhookRequest) -> EmailEvent | str:
    require(data, "event", "sg_event_id", "email", "timestamp", at=where)
    name = text(data, "event", at=where)
    kind = _TYPES.get(name)
    if kind is None:
        return f"sendgrid event {name[:40]!r} is not one Tracker records"
    ts = happened(epoch_time(data, "timestamp", request, at=where), "timestamp", where)
    tags = tag_list(data, "category", at=where)
    campaign_name = text(data, "marketing_campaign_name", at=where) or (tags[0] if tags else "")
    agent = text(data, "useragent", at=where, limit=MAX_USER_AGENT_LENGTH)
    proxied = ""
    if kind == "email_open":
        proxied = proxied_open(agent, data.get("sg_machine_open") is True)
        kind = "email_proxy_open" if proxied else kind
    details = {}
    for name_in, name_out in (
        ("type", "bounce_type"),
        ("bounce_classification", "bounce_classification"),
        ("status", "smtp_status"),
        ("asm_group_id", "unsubscribe_group"),
    ):
        if value := text(data, name_in, at=where):
            details[name_out] = value
    for name_in in ("reason", "response"):
        if value := text(data, name_in, at=where, limit=MAX_TEXT_LENGTH):
            details["reason"] = redact_emails(value)
    if kind == "email_bounce" and "bounce_type" not in details:
        details["bounce_type"] = "bounce"
    return EmailEvent(
        provider="sendgrid",
        provider_event_id=text(data, "sg_event_id", at=where),
        type=kind,
        email=text(data, "email", at=where, limit=MAX_EMAIL_LENGTH),
        ts=ts,
        message_id=text(data, "sg_message_id", at=where),
        campaign={"name": campaign_name} if campaign_name else {},
        tags=tags,
        url=text(data, "url", at=where, limit=MAX_URL_LENGTH) if kind == "email_click" else "",
        user_agent=agent,
        ip=text(data, "ip", at=where),
        proxied=proxied,
        details=details,
        where=where,
    )


PROVIDER = EmailProvider("sendgrid", authenticate, normalize)
