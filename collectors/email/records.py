"""An email event: one thing an email service provider reports about one message and recipient.

Each provider module reads its own webhook into :class:`EmailEvent` values; :func:`touchpoint_payload`
turns one into a touchpoint as a client would send it, for :func:`tracker.touchpoint.accept`,
which validates it and hashes the recipient's email. Nothing here knows HTTP.

The touchpoint's ``event_id`` is derived from the provider and its own id of the event, so a
provider's retry of the same event is the same touchpoint, stored once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "EMAIL_TYPES",
    "FRICTION_TYPES",
    "MAX_EMAIL_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_TEXT_LENGTH",
    "MAX_URL_LENGTH",
    "MAX_USER_AGENT_LENGTH",
    "SOURCE",
    "EmailEvent",
    "email_event_id",
    "proxied_open",
    "recipient_key",
    "redact_emails",
    "touchpoint_payload",
]

SOURCE: Final = "email_webhook"
CHANNEL: Final = "email"

# Every touchpoint type the email collector writes (docs/email.md).
EMAIL_TYPES: Final = (
    "email_sent",  # the provider accepted the message for delivery
    "email_delivered",  # the receiving server accepted it
    "email_deferred",  # delivery delayed; the provider keeps trying
    "email_dropped",  # the provider refused to send it (suppressed, invalid, rejected)
    "email_bounce",  # the receiving server refused it
    "email_open",  # opened by a person, as far as one can tell
    "email_proxy_open",  # fetched by a privacy proxy or a machine: not a person's open
    "email_click",
    "email_spam_report",
    "email_unsubscribe",
    "email_resubscribe",
)
# The types that are a friction in the customer's journey, and the friction's reason.
FRICTION_TYPES: Final = {
    "email_bounce": "email_bounce",
    "email_spam_report": "email_spam_report",
    "email_unsubscribe": "email_unsubscribe",
}

# Bounds of the fields Tracker reads (docs/email.md): longer values are refused, not cut.
MAX_ID_LENGTH: Final = 256  # ids, event names, tags, categories, bounce types...
MAX_URL_LENGTH: Final = 2048  # a clicked URL
MAX_USER_AGENT_LENGTH: Final = 1024
MAX_EMAIL_LENGTH: Final = 320  # a recipient's address
MAX_TEXT_LENGTH: Final = 4096  # a bounce's or drop's reason, the SMTP response
MAX_TAGS: Final = 15  # categories or tags of one event: all of them fit in one property

_NAMESPACE: Final = uuid.UUID("5d0b6a1e-2c47-4f8e-9b1d-7e3a0c6f2e51")
# Starts only where a word starts, and no part holds another "@": linear in the text's length,
# so a long run without a delimiter cannot hold the event loop (it took minutes at 256 KiB).
_EMAIL_LIKE = re.compile(
    r"(?<![^\s<>\"'(),;:@])[^\s<>\"'(),;:@]+@[^\s<>\"'(),;:@]+\.[^\s<>\"'(),;:@]+"
)
_UTM: Final = {
    "utm_source": "source",
    "utm_medium": "medium",
    "utm_campaign": "name",
    "utm_term": "term",
    "utm_content": "content",
}


def email_event_id(provider: str, provider_event_id: str) -> str:
    """The touchpoint's event id: the same for every delivery of one provider event."""
    return str(uuid.uuid5(_NAMESPACE, f"{provider}:{provider_event_id}"))


def proxied_open(user_agent: str, machine_open: bool = False, bot: str = "") -> str:
    """Who fetched an open's pixel when it was not the reader's own mail client: ``apple``
    (Mail Privacy Protection), ``gmail`` (Google's image proxy), ``yahoo``, ``machine`` (the
    provider says a machine opened it), or ``""`` for what looks like a person."""
    if bot:
        return bot.lower()
    if machine_open:
        return "machine"
    agent = user_agent.strip()
    if "GoogleImageProxy" in agent:
        return "gmail"
    if "YahooMailProxy" in agent:
        return "yahoo"
    # Apple's proxy presents itself as a bare "Mozilla/5.0", which no mail client sends.
    if agent == "Mozilla/5.0":
        return "apple"
    return ""


def recipient_key(email: str, salt: str) -> str:
    """A recipient as part of a composed event id: keyed by the salt, so the id tells nothing
    about the address to someone who does not hold it."""
    digest = hmac.new(salt.encode(), email.strip().lower().encode(), hashlib.sha256)
    return digest.hexdigest()[:32]


def redact_emails(text: str) -> str:
    """Free text from a provider (an SMTP response, a bounce reason) without addresses in clear."""
    return _EMAIL_LIKE.sub("<redacted>", text)


@dataclass(frozen=True, slots=True)
class EmailEvent:
    """One provider event about one message and one recipient, verified and read."""

    provider: str
    provider_event_id: str  # the provider's own id of the event, stable across its retries
    type: str  # one of EMAIL_TYPES
    email: str  # the recipient, in clear: hashed by accept() before anything leaves
    ts: datetime
    message_id: str = ""
    campaign: Mapping[str, str] = field(default_factory=dict)  # from the provider's tags
    tags: tuple[str, ...] = ()
    url: str = ""  # a clicked link
    user_agent: str = ""
    ip: str = ""
    proxied: str = ""  # see proxied_open
    details: Mapping[str, str] = field(default_factory=dict)  # bounce type, reason...
    where: str = ""  # where in the body this event is, for reasons: "[3]", "event-data"
    email_field: str = "email"  # the provider's name for the recipient field

    @property
    def event_id(self) -> str:
        return email_event_id(self.provider, self.provider_event_id)

    def field(self, name: str) -> str:
        """A field of this event named as the provider does, for a reason a person can act on."""
        provider_name = self.email_field if name == "email" else name
        return f"{self.where}.{provider_name}" if self.where else provider_name


def touchpoint_payload(event: EmailEvent) -> dict[str, Any]:
    """The event as a touchpoint a client would send: ``accept()`` validates it and hashes the
    email. A clicked URL's UTM parameters name the campaign; else the provider's tags do."""
    campaign = dict(event.campaign)
    from_url = _utm(event.url)
    if from_url:
        campaign = from_url
    if campaign and "medium" not in campaign:
        campaign["medium"] = "email"
    properties = {"provider": event.provider, **event.details}
    if event.message_id:
        properties["message_id"] = event.message_id
    if event.tags:
        properties["tags"] = ",".join(event.tags)
    if event.url:
        properties["url"] = event.url
    if event.proxied:
        properties["proxied_open"] = event.proxied
    payload: dict[str, Any] = {
        "event_id": event.event_id,
        "type": event.type,
        "source": SOURCE,
        "channel": CHANNEL,
        "ts": event.ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "properties": properties,
    }
    if event.email:
        payload["email"] = event.email
    if campaign:
        payload["campaign"] = campaign
    return payload


def _utm(url: str) -> dict[str, str]:
    if not url:
        return {}
    try:
        query = urlsplit(url).query
    except ValueError:
        return {}
    found: dict[str, str] = {}
    for key, value in parse_qsl(query):
        if key in _UTM and value.strip():
            found[_UTM[key]] = value.strip()[:MAX_ID_LENGTH]
    return found if "name" in found else {}
