"""What every helpdesk provider module shares, on top of the call webhooks' request and errors."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from collectors.calls._common import Malformed, WebhookRequest, epoch_time, iso_time, text
from collectors.helpdesk.records import SupportCallback
from tracker.errors import FieldError
from tracker.privacy import InvalidIdentifier, hash_identifier, normalize_email, normalize_phone
from tracker.settings import Settings

__all__ = [
    "HelpdeskProvider",
    "Requester",
    "body_id",
    "obj",
    "rating",
    "requester",
    "when",
]


@dataclass(frozen=True, slots=True)
class HelpdeskProvider:
    """A helpdesk: how to check that a request is really from it, and how to read its callbacks."""

    name: str
    authenticate: Callable[[WebhookRequest, Settings], None]
    normalize: Callable[[WebhookRequest, Settings], list[SupportCallback]]


@dataclass(frozen=True, slots=True)
class Requester:
    email_hash: str = ""
    phone_hash: str = ""
    user_id: str = ""


def requester(
    data: Mapping[str, Any],
    settings: Settings,
    *,
    email: str = "email",
    phone: str = "phone",
    user_id: str = "user_id",
    at: str = "",
) -> Requester:
    """The requester's identifiers, hashed as the beacon hashes them. A value that is there but
    is no address or number is refused, naming its field: it would stitch nobody."""
    salt, region = settings.hash_salt.value, settings.default_phone_region
    email_text = text(data, email, at=at, limit=320)
    phone_text = text(data, phone, at=at, limit=64)
    found = Requester(user_id=text(data, user_id, at=at))
    try:
        email_hash = (
            hash_identifier("email", normalize_email(email_text), salt) if email_text else ""
        )
    except InvalidIdentifier as exc:
        raise Malformed([FieldError(_path(at, email), str(exc))]) from None
    try:
        phone_hash = (
            hash_identifier("phone", normalize_phone(phone_text, region), salt)
            if phone_text
            else ""
        )
    except InvalidIdentifier as exc:
        raise Malformed([FieldError(_path(at, phone), str(exc))]) from None
    return Requester(email_hash, phone_hash, found.user_id)


def obj(data: Mapping[str, Any], name: str, at: str = "") -> Mapping[str, Any]:
    """The object at ``name``, or an empty one when absent or null."""
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Malformed([FieldError(_path(at, name), "must be an object")])
    return value


def when(
    data: Mapping[str, Any], name: str, request: WebhookRequest, *, at: str = ""
) -> datetime | None:
    """A time as unix seconds or RFC 3339, whichever the provider sent."""
    value = data.get(name)
    if isinstance(value, bool):
        raise Malformed([FieldError(_path(at, name), "must be a time")])
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        return epoch_time(data, name, request, at=at)
    return iso_time(data, name, request, at=at)


def rating(data: Mapping[str, Any], name: str, *, at: str = "") -> float | None:
    """A CSAT rating from 1 to 5; Zendesk's ``good`` and ``bad`` count as 5 and 1. A rating only
    offered, or not offered, is no rating."""
    value = text(data, name, at=at).lower()
    if not value or value.startswith(("offered", "unoffered", "not offered")):
        return None
    if value.startswith("good"):
        return 5.0
    if value.startswith("bad"):
        return 1.0
    try:
        score = float(value)
    except ValueError:
        raise Malformed(
            [FieldError(_path(at, name), "must be a number from 1 to 5, good or bad")]
        ) from None
    if not 1 <= score <= 5:
        raise Malformed([FieldError(_path(at, name), "must be from 1 to 5")])
    return score


def body_id(request: WebhookRequest) -> str:
    """A callback's id where the provider sends none: the body's digest. A retry sends the same
    body, so it is the same callback, merged once."""
    return "sha256:" + hashlib.sha256(request.body).hexdigest()


def _path(at: str, name: str) -> str:
    return f"{at}.{name}" if at else name
