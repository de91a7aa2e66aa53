"""Postmark webhooks: one JSON event per request, with HTTP basic authentication.

Postmark signs nothing; its webhook URL carries credentials (``https://user:password@host/...``)
that it sends as basic authentication: TRACKER_POSTMARK_WEBHOOK_USERNAME and
TRACKER_POSTMARK_WEBHOOK_PASSWORD. Both are compared in constant time.
"""

from __future__ import annotations

from collectors.calls._common import (
    Malformed,
    NotConfigured,
    WebhookRequest,
    iso_time,
    require,
    text,
)
from collectors.email._common import Batch, EmailProvider, basic_auth, happened
from collectors.email.records import (
    MAX_EMAIL_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_URL_LENGTH,
    MAX_USER_AGENT_LENGTH,
    EmailEvent,
    proxied_open,
    recipient_key,
    redact_emails,
)
from tracker.errors import FieldError
from tracker.settings import Settings

__all__ = ["PROVIDER"]

# Where each record type keeps its recipient and its time.
_RECORDS = {
    "Delivery": ("Recipient", "DeliveredAt"),
    "Bounce": ("Email", "BouncedAt"),
    "SpamComplaint": ("Email", "BouncedAt"),
    "Open": ("Recipient", "ReceivedAt"),
    "Click": ("Recipient", "ReceivedAt"),
    "SubscriptionChange": ("Recipient", "ChangedAt"),
}
# Bounce records that are not a refused message.
_BOUNCE_TYPES = {
    "Transient": "email_deferred",
    "Unsubscribe": "email_unsubscribe",
    "SpamNotification": "email_spam_report",
    "SpamComplaint": "email_spam_report",
}
_NOT_BOUNCES = frozenset(
    {"AutoResponder", "OpenRelayTest", "ChallengeVerification", "SubscribeRequest"}
)


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    if not settings.postmark_webhook_username or not settings.postmark_webhook_password:
        raise NotConfigured(
            "postmark", "TRACKER_POSTMARK_WEBHOOK_USERNAME", "TRACKER_POSTMARK_WEBHOOK_PASSWORD"
        )
    basic_auth(
        request,
        "postmark",
        settings.postmark_webhook_username,
        settings.postmark_webhook_password.value,
    )


def normalize(request: WebhookRequest, settings: Settings) -> Batch:
    data = request.json_object()
    require(data, "RecordType", "MessageID")
    record = text(data, "RecordType")
    if record not in _RECORDS:
        return Batch(ignored=[f"postmark record type {record[:40]!r} is not one Tracker records"])
    email_field, time_field = _RECORDS[record]
    require(data, email_field, time_field)
    ts = happened(iso_time(data, time_field, request), time_field)
    message_id = text(data, "MessageID")
    details: dict[str, str] = {}
    email = text(data, email_field, limit=MAX_EMAIL_LENGTH)
    recipient = recipient_key(email, settings.hash_salt.value)
    event_id = f"{record}:{message_id}:{recipient}:{text(data, time_field)}"
    agent = text(data, "UserAgent", limit=MAX_USER_AGENT_LENGTH)
    url = ""
    proxied = ""
    if record == "Delivery":
        kind = "email_delivered"
    elif record in ("Bounce", "SpamComplaint"):
        bounce_type = text(data, "Type")
        if bounce_type in _NOT_BOUNCES:
            return Batch(ignored=[f"postmark bounce of type {bounce_type!r} is not a bounce"])
        kind = (
            "email_spam_report"
            if record == "SpamComplaint"
            else _BOUNCE_TYPES.get(bounce_type, "email_bounce")
        )
        require(data, "ID")
        event_id = f"bounce:{text(data, 'ID')}"
        details["bounce_type"] = bounce_type
        if description := text(data, "Description", limit=MAX_TEXT_LENGTH):
            details["reason"] = redact_emails(description)
    elif record == "Open":
        proxied = proxied_open(agent)
        kind = "email_proxy_open" if proxied else "email_open"
        if data.get("FirstOpen") is not None:
            details["first_open"] = "true" if data.get("FirstOpen") is True else "false"
    elif record == "Click":
        kind = "email_click"
        url = text(data, "OriginalLink", limit=MAX_URL_LENGTH)
        event_id += f":{url}"
    else:
        suppress = data.get("SuppressSending")
        if not isinstance(suppress, bool):
            raise Malformed([FieldError("SuppressSending", "must be true or false")])
        kind = "email_unsubscribe" if suppress else "email_resubscribe"
        if reason := text(data, "SuppressionReason"):
            details["reason_code"] = reason
    if stream := text(data, "MessageStream"):
        details["message_stream"] = stream
    tag = text(data, "Tag")
    event = EmailEvent(
        provider="postmark",
        provider_event_id=event_id,
        type=kind,
        email=email,
        ts=ts,
        message_id=message_id,
        campaign={"name": tag} if tag else {},
        tags=(tag,) if tag else (),
        url=url,
        user_agent=agent,
        proxied=proxied,
        details=details,
        email_field=email_field,
    )
    return Batch(events=[event])


PROVIDER = EmailProvider("postmark", authenticate, normalize)
