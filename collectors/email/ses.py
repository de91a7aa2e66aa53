"""Amazon SES event notifications, delivered by Amazon SNS over HTTPS.

SNS signs each message: ``Signature`` is the base64 RSA signature (SHA1 for ``SignatureVersion``
1, SHA256 for 2) of the message's fields, in a fixed order, each as ``name\\nvalue\\n``, verified
with the certificate at ``SigningCertURL``. The network may be closed, so the certificate is not
fetched: it is read from TRACKER_SES_SNS_CERTIFICATES, a directory holding each certificate under
the file name that ends its URL. Only URLs on ``sns.<region>.amazonaws.com`` are accepted, and
only topics listed in TRACKER_SES_SNS_TOPIC_ARNS: anyone can publish signed SNS messages from a
topic of their own.

A ``SubscriptionConfirmation`` is not confirmed by Tracker (it would have to fetch a URL): its
``SubscribeURL`` is logged and kept as a dead letter for an operator to open.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from collectors.calls._common import (
    Malformed,
    NotConfigured,
    Unauthorized,
    WebhookRequest,
    iso_time,
    json_object,
    require,
    text,
)
from collectors.email._common import Batch, EmailProvider, tag_list
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

__all__ = ["PROVIDER", "string_to_sign"]

_CERT_HOST: Final = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_CERT_FILE: Final = re.compile(r"^[A-Za-z0-9._-]{1,200}\.pem$")
_SIGNED_FIELDS: Final = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SIGNED_FIELDS["SubscriptionConfirmation"]
_HASHES: Final = {"1": hashes.SHA1, "2": hashes.SHA256}
CONFIG: Final = ("TRACKER_SES_SNS_TOPIC_ARNS", "TRACKER_SES_SNS_CERTIFICATES")


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    """What SNS signs: the message type's fields in order, ``name\\nvalue\\n`` each; an absent
    optional field (a notification's ``Subject``) is left out."""
    fields = _SIGNED_FIELDS[str(message.get("Type"))]
    return "".join(
        f"{name}\n{message[name]}\n" for name in fields if message.get(name) is not None
    ).encode()


@lru_cache(maxsize=64)
def _certificate(path: str) -> rsa.RSAPublicKey:
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise Unauthorized(
            f"no certificate {Path(path).name} in TRACKER_SES_SNS_CERTIFICATES: download "
            "SigningCertURL there once, after checking it is Amazon's"
        ) from None
    except (OSError, ValueError) as exc:
        raise Unauthorized(f"the certificate {Path(path).name} cannot be read: {exc}") from None
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Unauthorized(f"the certificate {Path(path).name} does not hold an RSA key")
    return key


def _message(request: WebhookRequest) -> dict[str, Any]:
    try:
        return json_object(request.body, "$")
    except Malformed as exc:
        raise Unauthorized(f"not a signed SNS message: {exc}") from None


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    if not settings.ses_sns_topic_arns or not settings.ses_sns_certificates:
        raise NotConfigured("ses", *CONFIG)
    message = _message(request)
    kind = message.get("Type")
    if kind not in _SIGNED_FIELDS:
        raise Unauthorized(f"Type must be one of {', '.join(_SIGNED_FIELDS)}")
    if message.get("TopicArn") not in settings.ses_sns_topic_arns:
        raise Unauthorized("TopicArn is not one of TRACKER_SES_SNS_TOPIC_ARNS")
    version = str(message.get("SignatureVersion", ""))
    if version not in _HASHES:
        raise Unauthorized("SignatureVersion must be 1 or 2")
    url = str(message.get("SigningCertURL", ""))
    try:
        parts = urlsplit(url)
    except ValueError:
        raise Unauthorized("SigningCertURL is not a URL") from None
    name = parts.path.rsplit("/", 1)[-1]
    if parts.scheme != "https" or not _CERT_HOST.match(parts.hostname or ""):
        raise Unauthorized("SigningCertURL must be https://sns.<region>.amazonaws.com/...")
    if not _CERT_FILE.match(name):
        raise Unauthorized("SigningCertURL must name a .pem certificate")
    for name_required in _SIGNED_FIELDS[kind]:
        if name_required != "Subject" and not isinstance(message.get(name_required), str):
            raise Unauthorized(f"{name_required} is missing from the signed message")
    key = _certificate(str(Path(settings.ses_sns_certificates) / name))
    try:
        key.verify(
            base64.b64decode(str(message.get("Signature", "")), validate=True),
            string_to_sign(message),
            padding.PKCS1v15(),
            _HASHES[version](),
        )
    except (binascii.Error, ValueError, InvalidSignature):
        raise Unauthorized("Signature does not match this message") from None


def normalize(request: WebhookRequest, _: Settings) -> Batch:
    message = _message(request)
    kind = message["Type"]
    if kind == "SubscriptionConfirmation":
        return Batch(
            subscribe_url=text(message, "SubscribeURL", limit=MAX_URL_LENGTH),
            topic=text(message, "TopicArn"),
        )
    if kind == "UnsubscribeConfirmation":
        return Batch(ignored=["an SNS unsubscribe confirmation"])
    sns_id = text(message, "MessageId")
    notification = json_object(message["Message"], "Message")
    name = text(notification, "eventType", at="Message") or text(
        notification, "notificationType", at="Message"
    )
    if not name:
        raise Malformed([FieldError("Message.eventType", "is required")])
    reader = _READERS.get(name)
    if reader is None:
        return Batch(ignored=[f"ses event {name[:40]!r} is not one Tracker records"])
    mail = notification.get("mail")
    if not isinstance(mail, dict):
        raise Malformed([FieldError("Message.mail", "is required, as an object")])
    require(mail, "messageId", at="Message.mail")
    detail_name = name[0].lower() + name[1:]
    detail = notification.get(detail_name, {})
    if not isinstance(detail, dict):
        raise Malformed([FieldError(f"Message.{detail_name}", "must be an object")])
    return Batch(events=reader(sns_id, mail, detail, f"Message.{detail_name}", request))


def _destinations(mail: Mapping[str, Any]) -> list[tuple[str, str]]:
    found = mail.get("destination")
    if not isinstance(found, list) or not found:
        raise Malformed([FieldError("Message.mail.destination", "must list the recipients")])
    return [_address(a, f"Message.mail.destination.{i}") for i, a in enumerate(found)]


def _address(value: Any, where: str) -> tuple[str, str]:
    if isinstance(value, (dict, list)):
        raise Malformed([FieldError(where, "must be a string")])
    address = str(value).strip()
    if len(address) > MAX_EMAIL_LENGTH:
        raise Malformed([FieldError(where, f"must be at most {MAX_EMAIL_LENGTH} characters")])
    return address, where


def _listed(detail: Mapping[str, Any], name: str, at: str) -> list[tuple[str, str]]:
    found = detail.get(name)
    if not isinstance(found, list) or not found:
        raise Malformed([FieldError(f"{at}.{name}", "must list the recipients")])
    listed = []
    for i, item in enumerate(found):
        where = f"{at}.{name}.{i}"
        if not isinstance(item, dict):
            raise Malformed([FieldError(where, "must be an object")])
        address = text(item, "emailAddress", at=where, limit=MAX_EMAIL_LENGTH)
        listed.append((address, f"{where}.emailAddress"))
    return listed


def _events(
    sns_id: str,
    mail: Mapping[str, Any],
    kind: str,
    recipients: list[tuple[str, str]],
    ts_source: tuple[Mapping[str, Any], str, str],
    request: WebhookRequest,
    **extra: Any,
) -> list[EmailEvent]:
    data, name, at = ts_source
    ts = iso_time(data, name, request, at=at)
    if ts is None:
        raise Malformed([FieldError(f"{at}.{name}", "is required")])
    tags = mail.get("tags")
    campaign = tag_list(tags, "campaign", at="Message.mail.tags") if isinstance(tags, dict) else ()
    return [
        EmailEvent(
            provider="ses",
            provider_event_id=f"{sns_id}:{index}",
            type=kind,
            email=email,
            ts=ts,
            message_id=text(mail, "messageId", at="Message.mail"),
            campaign={"name": campaign[0]} if campaign else {},
            tags=campaign,
            email_field=field,
            **extra,
        )
        for index, (email, field) in enumerate(recipients)
    ]


_Reader = Any  # (sns_id, mail, detail, at, request) -> list[EmailEvent]


def _simple(kind: str) -> _Reader:
    """An event about the whole message, at the time the message was sent."""

    def read(
        sns_id: str, mail: Mapping[str, Any], detail: Mapping[str, Any], at: str, r: WebhookRequest
    ) -> list[EmailEvent]:
        details = {}
        if reason := text(detail, "reason", at=at, limit=MAX_TEXT_LENGTH):
            details["reason"] = redact_emails(reason)
        return _events(
            sns_id,
            mail,
            kind,
            _destinations(mail),
            (mail, "timestamp", "Message.mail"),
            r,
            details=details,
        )

    return read


def _delivery(
    sns_id: str, mail: Mapping[str, Any], detail: Mapping[str, Any], at: str, r: WebhookRequest
) -> list[EmailEvent]:
    raw = detail.get("recipients")
    if not isinstance(raw, list) or not raw:
        raise Malformed([FieldError(f"{at}.recipients", "must list the recipients")])
    recipients = [_address(a, f"{at}.recipients.{i}") for i, a in enumerate(raw)]
    details = {}
    if response := text(detail, "smtpResponse", at=at, limit=MAX_TEXT_LENGTH):
        details["reason"] = redact_emails(response)
    return _events(
        sns_id, mail, "email_delivered", recipients, (detail, "timestamp", at), r, details=details
    )


def _bounce(
    sns_id: str, mail: Mapping[str, Any], detail: Mapping[str, Any], at: str, r: WebhookRequest
) -> list[EmailEvent]:
    details = {"bounce_type": text(detail, "bounceType", at=at)}
    if sub := text(detail, "bounceSubType", at=at):
        details["bounce_subtype"] = sub
    recipients = _listed(detail, "bouncedRecipients", at)
    return _events(
        sns_id, mail, "email_bounce", recipients, (detail, "timestamp", at), r, details=details
    )


def _complaint(
    sns_id: str, mail: Mapping[str, Any], detail: Mapping[str, Any], at: str, r: WebhookRequest
) -> list[EmailEvent]:
    details = {}
    if feedback := text(detail, "complaintFeedbackType", at=at):
        details["feedback_type"] = feedback
    recipients = _listed(detail, "complainedRecipients", at)
    return _events(
        sns_id, mail, "email_spam_report", recipients, (detail, "timestamp", at), r, details=details
    )


def _delay(
    sns_id: str, mail: Mapping[str, Any], detail: Mapping[str, Any], at: str, r: WebhookRequest
) -> list[EmailEvent]:
    details = {}
    if delay := text(detail, "delayType", at=at):
        details["delay_type"] = delay
    recipients = _listed(detail, "delayedRecipients", at)
    return _events(
        sns_id, mail, "email_deferred", recipients, (detail, "timestamp", at), r, details=details
    )


def _engagement(kind: str) -> _Reader:
    """An open or a click. SES does not say which recipient it was: with one recipient it is
    theirs; with several, the event is kept without an email."""

    def read(
        sns_id: str, mail: Mapping[str, Any], detail: Mapping[str, Any], at: str, r: WebhookRequest
    ) -> list[EmailEvent]:
        destinations = _destinations(mail)
        recipients = destinations if len(destinations) == 1 else [("", "")]
        agent = text(detail, "userAgent", at=at, limit=MAX_USER_AGENT_LENGTH)
        url = text(detail, "link", at=at, limit=MAX_URL_LENGTH) if kind == "email_click" else ""
        proxied = proxied_open(agent) if kind == "email_open" else ""
        return _events(
            sns_id,
            mail,
            "email_proxy_open" if proxied else kind,
            recipients,
            (detail, "timestamp", at),
            r,
            url=url,
            user_agent=agent,
            ip=text(detail, "ipAddress", at=at),
            proxied=proxied,
        )

    return read


def _subscription(
    sns_id: str, mail: Mapping[str, Any], detail: Mapping[str, Any], at: str, r: WebhookRequest
) -> list[EmailEvent]:
    preferences = detail.get("newTopicPreferences")
    preferences = preferences if isinstance(preferences, dict) else {}
    topics = preferences.get("topicSubscriptionStatus")
    opted_out = preferences.get("unsubscribeAll") is True or (
        isinstance(topics, list)
        and any(isinstance(t, dict) and t.get("subscriptionStatus") == "OptOut" for t in topics)
    )
    kind = "email_unsubscribe" if opted_out else "email_resubscribe"
    return _events(sns_id, mail, kind, _destinations(mail), (detail, "timestamp", at), r)


_READERS: Final[dict[str, _Reader]] = {
    "Send": _simple("email_sent"),
    "Reject": _simple("email_dropped"),
    "Rendering Failure": _simple("email_dropped"),
    "RenderingFailure": _simple("email_dropped"),
    "Delivery": _delivery,
    "Bounce": _bounce,
    "Complaint": _complaint,
    "DeliveryDelay": _delay,
    "Open": _engagement("email_open"),
    "Click": _engagement("email_click"),
    "Subscription": _subscription,
}

PROVIDER = EmailProvider("ses", authenticate, normalize)
