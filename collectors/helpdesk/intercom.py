"""Intercom: webhook notifications about conversations (live chat and messenger) and tickets.

Intercom signs the raw body with HMAC-SHA1 keyed by the app's client secret and sends
``X-Hub-Signature: sha1=<hex digest>``. Every notification is an envelope
(``type: notification_event``, ``id``, ``topic``, ``created_at``) around ``data.item``, the
conversation as it stands after the event.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
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
from collectors.helpdesk._common import (
    HelpdeskProvider,
    Requester,
    body_id,
    obj,
    rating,
    requester,
    when,
)
from collectors.helpdesk.records import SupportCallback
from tracker.errors import FieldError
from tracker.settings import Settings

__all__ = ["PROVIDER", "TOPICS", "sign"]

SIGNATURE: Final = "X-Hub-Signature"
# The topics Tracker reads, and what each says happened to the conversation or ticket.
TOPICS: Final = {
    "conversation.user.created": "opened",
    "conversation.user.replied": "customer_replied",
    "conversation.admin.replied": "replied",
    "conversation.admin.closed": "solved",
    "conversation.admin.opened": "reopened",
    "conversation.rating.added": "rated",
    "conversation.admin.assigned": "updated",
    "conversation.admin.snoozed": "updated",
    "conversation.admin.unsnoozed": "updated",
    "conversation.priority.updated": "updated",
    "ticket.created": "opened",
    "ticket.admin.assigned": "updated",
    "ticket.state.updated": "updated",
    "ticket.note.created": "updated",
    "ticket.closed": "solved",
    "ticket.rating.provided": "rated",
}
CUSTOMERS: Final = frozenset({"user", "lead", "contact"})
SOLVED_STATES: Final = frozenset({"closed", "resolved"})


def sign(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature`` Intercom sends for ``body``."""
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def authenticate(request: WebhookRequest, settings: Settings) -> None:
    secret = secret_or_refuse(
        settings.intercom_client_secret, "intercom", "TRACKER_INTERCOM_CLIENT_SECRET"
    )
    signature = request.header(SIGNATURE)
    if not signature:
        raise Unauthorized(f"{SIGNATURE} is required")
    if not same(sign(secret, request.body), signature.lower()):
        raise Unauthorized(f"{SIGNATURE} does not match this request")


def normalize(request: WebhookRequest, settings: Settings) -> list[SupportCallback]:
    data = request.json_object()
    require(data, "topic")
    topic = text(data, "topic")
    if topic == "ping":
        raise Ignored("a ping: Intercom checks that the endpoint answers")
    event = TOPICS.get(topic)
    if event is None:
        raise Ignored(f"topic {topic} is not about a conversation's or ticket's progress")
    item = obj(obj(data, "data"), "item", "data")
    require(item, "id", at="data.item")
    at = "data.item"
    state = text(item, "state", at=at).lower() or text(item, "ticket_state", at=at).lower()
    if event == "updated" and topic.startswith("ticket.") and state in SOLVED_STATES:
        event = "solved"
    stats = obj(item, "statistics", at)
    score = rating(obj(item, "conversation_rating", at), "rating", at=f"{at}.conversation_rating")
    if event == "rated" and score is None:
        raise Malformed([FieldError(f"{at}.conversation_rating.rating", "is required")])
    who = _requester(item, settings)
    ts = when(data, "created_at", request) or when(item, "updated_at", request, at=at)
    if ts is None:
        raise Malformed([FieldError("created_at", "is required")])
    source = obj(item, "source", at)
    return [
        SupportCallback(
            provider="intercom",
            kind="ticket" if topic.startswith("ticket.") else "chat",
            ticket_id=text(item, "id", at=at),
            callback_id=text(data, "id") or body_id(request),
            event=event,
            event_ts=ts,
            received_ts=request.received_ts,
            email_hash=who.email_hash,
            phone_hash=who.phone_hash,
            user_id=who.user_id,
            status=state,
            agent=text(item, "admin_assignee_id", at=at),
            queue=text(item, "team_assignee_id", at=at),
            priority=text(item, "priority", at=at).lower(),
            via=text(source, "delivered_as", at=f"{at}.source") or text(source, "type"),
            opened_at=when(item, "created_at", request, at=at),
            first_reply_at=when(stats, "first_admin_reply_at", request, at=f"{at}.statistics"),
            solved_at=(
                when(stats, "last_close_at", request, at=f"{at}.statistics")
                if state in SOLVED_STATES
                else None
            ),
            reopens=_count(stats, "count_reopens", f"{at}.statistics"),
            rating=score,
        )
    ]


def _requester(item: Mapping[str, Any], settings: Settings) -> Requester:
    """Who asked: the author of the conversation's first message when a customer wrote it, else
    its first contact. ``external_id`` is the business's own id of the person."""
    at = "data.item"
    author = obj(obj(item, "source", at), "author", f"{at}.source")
    contact = _first_contact(item)
    if text(author, "email", at=f"{at}.source.author") and text(author, "type") in CUSTOMERS:
        found = requester(author, settings, user_id="external_id", at=f"{at}.source.author")
    elif text(contact, "email", at=f"{at}.contacts.0"):
        found = requester(contact, settings, user_id="external_id", at=f"{at}.contacts.0")
    else:
        found = requester(obj(item, "user", at), settings, at=f"{at}.user")
    external = text(contact, "external_id", at=f"{at}.contacts.0")
    if external and not found.user_id:
        return Requester(found.email_hash, found.phone_hash, external)
    return found


def _first_contact(item: Mapping[str, Any]) -> Mapping[str, Any]:
    """The first contact, whether ``contacts`` is a list or a ``contact.list`` object."""
    contacts = item.get("contacts")
    if isinstance(contacts, dict):
        contacts = contacts.get("contacts")
    if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict):
        first: Mapping[str, Any] = contacts[0]
        return first
    return {}


def _count(data: Mapping[str, Any], name: str, at: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Malformed([FieldError(f"{at}.{name}", "must be a whole number of at least 0")])
    return value


PROVIDER = HelpdeskProvider("intercom", authenticate, normalize)
