"""What every email provider module shares, on top of the call webhooks' request and errors."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from collectors.calls._common import Malformed, Unauthorized, WebhookRequest, same
from collectors.email.records import MAX_ID_LENGTH, MAX_TAGS, EmailEvent
from tracker.errors import FieldError
from tracker.settings import Settings

__all__ = [
    "Batch",
    "EmailProvider",
    "Refused",
    "basic_auth",
    "each_event",
    "happened",
    "tag_list",
]


@dataclass(frozen=True, slots=True)
class Refused:
    """An authentic event Tracker cannot read: answered 400 and kept as a dead letter."""

    payload: Any
    errors: list[FieldError]


@dataclass(slots=True)
class Batch:
    """What one webhook holds: events read, events refused, events ignored (with why), and, for
    an SNS subscription, the URL an operator opens to confirm it."""

    events: list[EmailEvent] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    subscribe_url: str = ""
    topic: str = ""


@dataclass(frozen=True, slots=True)
class EmailProvider:
    name: str
    authenticate: Callable[[WebhookRequest, Settings], None]
    normalize: Callable[[WebhookRequest, Settings], Batch]


def each_event(
    items: list[Any], read: Callable[[Mapping[str, Any], str], EmailEvent | str]
) -> Batch:
    """Read a batch of events one by one: one bad event is refused alone, the others go on.
    ``read`` returns an event, or a string saying why the event is ignored."""
    batch = Batch()
    for index, item in enumerate(items):
        where = f"[{index}]"
        if not isinstance(item, dict):
            batch.refused.append(Refused(item, [FieldError(where, "must be a JSON object")]))
            continue
        try:
            result = read(item, where)
        except Malformed as exc:
            batch.refused.append(Refused(item, exc.errors))
            continue
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
            reason = f"the event could not be read: {repr(exc)[:200]}"
            batch.refused.append(Refused(item, [FieldError(where, reason)]))
            continue
        if isinstance(result, str):
            batch.ignored.append(result)
        else:
            batch.events.append(result)
    return batch


def tag_list(data: Mapping[str, Any], name: str, *, at: str = "") -> tuple[str, ...]:
    """A tag, category or list of them: each at most MAX_ID_LENGTH characters, MAX_TAGS in all."""
    value = data.get(name)
    path = f"{at}.{name}" if at else name
    if value is None or value == "":
        return ()
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_TAGS:
        raise Malformed([FieldError(path, f"must have at most {MAX_TAGS} items")])
    tags = []
    for index, item in enumerate(items):
        if isinstance(item, (dict, list)):
            raise Malformed([FieldError(f"{path}.{index}", "must be a string")])
        tag = str(item).strip()
        if len(tag) > MAX_ID_LENGTH:
            raise Malformed(
                [FieldError(f"{path}.{index}", f"must be at most {MAX_ID_LENGTH} characters")]
            )
        if tag:
            tags.append(tag)
    return tuple(tags)


def basic_auth(request: WebhookRequest, provider: str, username: str, password: str) -> None:
    """HTTP basic authentication, both parts compared in constant time."""
    scheme, _, encoded = request.header("Authorization").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise Unauthorized("HTTP basic authentication is required")
    try:
        given_user, _, given_password = (
            base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("the basic credentials are not base64 user:password") from None
    user_ok = same(given_user, username)
    password_ok = same(given_password, password)
    if not (user_ok and password_ok):
        raise Unauthorized(f"the basic credentials are not the ones configured for {provider}")


def happened(ts: datetime | None, name: str, at: str = "") -> datetime:
    """An event's required time: ``0`` reads as "did not happen", which an event cannot say."""
    if ts is None:
        field_name = f"{at}.{name}" if at else name
        raise Malformed([FieldError(field_name, "must be the time the event happened, not 0")])
    return ts
