"""Segment's tracking API spoken by the beacon: a Segment message becomes a touchpoint v1 event.

HTTP-free. :func:`to_event` maps one message (``track``, ``identify``, ``page``, ``screen``,
``alias``, ``group``) to the client form that :func:`tracker.touchpoint.accept` validates, so
every rule and bound of ``/v1/events`` applies. The mapping, field by field, is in
docs/segment.md.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any, Final

import orjson

from tracker.errors import FieldError, ValidationError

__all__ = [
    "CALLS",
    "MAX_BATCH_BYTES",
    "MAX_MESSAGE_BYTES",
    "event_id_for",
    "segment_field",
    "to_event",
]

CALLS: Final = ("track", "identify", "page", "screen", "alias", "group")
MAX_MESSAGE_BYTES: Final = 32 * 1024  # the spec's limits
MAX_BATCH_BYTES: Final = 500 * 1024
# messageIds that are not UUIDs become a UUIDv5 in this namespace: the same id, the same event.
MESSAGE_ID_NAMESPACE: Final = uuid.UUID("8c0f6a52-3b1e-4d7f-9a26-5e4b7c1d2f90")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_NOT_WORD = re.compile(r"[^a-z0-9]+")
_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_FIXED_TYPES: Final = {
    "identify": "identify",
    "page": "page_view",
    "screen": "screen_view",
    "alias": "alias",
    "group": "group",
}
_CAMPAIGN = ("name", "source", "medium", "term", "content")
_PAGE = ("url", "referrer", "title")
_CRM_PREFIX = "crm."
# Touchpoint fields named back in the sender's terms, for the reasons of a refusal.
_SEGMENT_NAMES: Final = (
    ("event_id", "messageId"),
    ("type", "event"),
    ("ts", "timestamp"),
    ("sent_ts", "sentAt"),
    ("anonymous_id", "anonymousId"),
    ("user_id", "userId"),
    ("email", "traits.email"),
    ("phone", "traits.phone"),
    ("page", "context.page"),
    ("campaign", "context.campaign"),
    ("context.user_agent", "context.userAgent"),
    ("context", "context"),
    ("value", "properties.revenue"),
    ("currency", "properties.currency"),
    ("channel", "integrations.Tracker.channel"),
)


def event_id_for(message_id: Any) -> str:
    """A UUID ``messageId`` as it is; any other id as a UUIDv5 of it, so a retry keeps its id."""
    if message_id is None or message_id == "":
        return str(uuid.uuid4())  # the sender gave none: nothing to be idempotent on
    text = str(message_id)
    if _UUID.match(text):
        return text.lower()
    return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, text))


def to_event(
    message: Any, received: str, call: str | None = None, sent_at: Any = None
) -> tuple[dict[str, Any], str]:
    """The touchpoint event for one Segment message, and the end user's IP it names (or "").

    ``call`` is the endpoint's call type (``/v1/track``); in a batch each message names its own.
    ``sent_at`` is the batch's ``sentAt`` when the message has none; ``received``, the time the
    request arrived, is the event's time when the message gives no time at all. Raises
    :class:`ValidationError` with the fields named as the sender named them."""
    if not isinstance(message, dict):
        raise ValidationError([FieldError("$", "a message must be a JSON object")])
    kind = call or message.get("type")
    if kind not in CALLS:
        raise ValidationError(
            [FieldError("type", f"must be one of {', '.join(CALLS)}, got {kind!r}")]
        )
    errors: list[FieldError] = []
    context = _object(message, "context", errors)
    properties_in = _object(message, "properties", errors)
    traits = _object(message, "traits", errors) or _object(context, "traits", errors, "context.")
    user_id = _identifier(message, "userId", errors)
    anonymous_id = _identifier(message, "anonymousId", errors)
    event: dict[str, Any] = {"event_id": event_id_for(message.get("messageId"))}

    if kind == "track":
        name = message.get("event")
        if not isinstance(name, str) or not name.strip():
            errors.append(FieldError("event", "is required: the name of what happened"))
            name = ""
        event["type"] = _type_of(name)
        event["name"] = name
    else:
        event["type"] = _FIXED_TYPES[kind]
        if kind in ("page", "screen") and isinstance(message.get("name"), str) and message["name"]:
            event["name"] = message["name"]
    if kind == "alias":
        previous = _identifier(message, "previousId", errors)
        if not previous:
            errors.append(FieldError("previousId", "is required for an alias"))
        if not user_id:
            errors.append(FieldError("userId", "is required for an alias"))
        # The id a person had before is, in practice, the anonymous id of their device.
        anonymous_id = previous
    elif not user_id and not anonymous_id:
        errors.append(FieldError("userId", "or anonymousId is required"))
    if user_id:
        event["user_id"] = user_id
    if anonymous_id:
        event["anonymous_id"] = anonymous_id

    _times(message, sent_at, received, event)
    for trait in ("email", "phone"):
        if traits.get(trait):
            event[trait] = str(traits[trait])

    properties = _properties(kind, message, properties_in, traits, context, errors)
    if properties:
        event["properties"] = properties
    if kind in ("track", "page", "screen"):
        _money(properties_in, event, errors)

    page = {
        key: str(value)
        for key, value in _object(context, "page", errors, "context.").items()
        if key in _PAGE and value
    }
    if kind == "page":
        for key in _PAGE:
            if properties_in.get(key) and key not in page:
                page[key] = str(properties_in[key])
    if page:
        event["page"] = page
    campaign = {
        key: str(value)
        for key, value in _object(context, "campaign", errors, "context.").items()
        if key in _CAMPAIGN and value not in (None, "")
    }
    if campaign:
        event["campaign"] = campaign
    device = _device(context)
    if device:
        event["context"] = device
    channel = _object(
        _object(message, "integrations", errors), "Tracker", errors, "integrations."
    ).get("channel")
    if channel:
        event["channel"] = channel
    if errors:
        raise ValidationError(errors)
    ip = context.get("ip")
    return event, ip if isinstance(ip, str) else ""


def segment_field(path: str, call: str = "") -> str:
    """A touchpoint field path in the terms of the Segment message it came from."""
    if path == "name":
        return "event" if call == "track" else "name"
    for ours, theirs in _SEGMENT_NAMES:
        if path == ours or path.startswith(ours + "."):
            return theirs + path[len(ours) :]
    return path


def _type_of(name: str) -> str:
    """``Order Completed`` becomes ``order_completed``; a name that gives no word, ``custom``."""
    word = _NOT_WORD.sub("_", name.lower()).strip("_")[:64].rstrip("_")
    return word if _TYPE.match(word) else "custom"


def _times(message: dict[str, Any], sent_at: Any, received: str, event: dict[str, Any]) -> None:
    """``originalTimestamp`` (else ``timestamp``) is the device's time of the event, ``sentAt``
    the device's time of sending: the collector corrects the device clock with the two."""
    happened = message.get("originalTimestamp") or message.get("timestamp")
    sent = message.get("sentAt") or sent_at
    if happened:
        event["ts"] = happened
        # A time set ahead of sending (a scheduled event) is taken as given, uncorrected.
        if sent and not _earlier(sent, happened):
            event["sent_ts"] = sent
    elif sent:
        event["ts"] = sent
        event["sent_ts"] = sent
    else:
        event["ts"] = received


def _earlier(left: Any, right: Any) -> bool:
    try:
        return datetime.fromisoformat(str(left)) < datetime.fromisoformat(str(right))
    except (TypeError, ValueError):
        return False  # accept() names the malformed one


def _properties(
    kind: str,
    message: dict[str, Any],
    properties: dict[str, Any],
    traits: dict[str, Any],
    context: dict[str, Any],
    errors: list[FieldError],
) -> dict[str, str]:
    """What becomes the touchpoint's string map. Traits of a person are not kept (Tracker is not
    a profile store; only email and phone, hashed), except ``crm.<system>`` identifiers."""
    out: dict[str, str] = {}
    if kind == "group":
        group_id = message.get("groupId")
        if group_id in (None, ""):
            errors.append(FieldError("groupId", "is required for a group"))
        else:
            out["group_id"] = str(group_id)
        for key, value in traits.items():
            if not key.startswith(_CRM_PREFIX) and key not in ("email", "phone"):
                _put(out, f"group.{key}", value)
    elif kind in ("track", "page", "screen"):
        for key, value in properties.items():
            _put(out, str(key), value)
    for key, value in traits.items():
        if str(key).startswith(_CRM_PREFIX):
            _put(out, str(key), value)
    external = context.get("externalIds")
    if isinstance(external, list):
        for entry in external:
            if isinstance(entry, dict) and entry.get("type") and entry.get("id"):
                _put(out, f"{_CRM_PREFIX}{entry['type']}", entry["id"])
    return out


def _put(out: dict[str, str], key: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, str):
        out[key] = value
        return
    try:
        out[key] = orjson.dumps(value).decode()
    except TypeError:  # what orjson cannot write, such as an integer past 64 bits
        out[key] = json.dumps(value, default=str, separators=(",", ":"))


def _money(properties: dict[str, Any], event: dict[str, Any], errors: list[FieldError]) -> None:
    name = "revenue" if properties.get("revenue") is not None else "value"
    raw = properties.get(name)
    if raw is not None and raw != "":
        try:
            if isinstance(raw, bool):
                raise ValueError
            event["value"] = float(raw)
        except (TypeError, ValueError):
            errors.append(FieldError(f"properties.{name}", f"must be a number, got {raw!r}"))
    currency = properties.get("currency")
    if isinstance(currency, str) and currency:
        event["currency"] = currency.upper()


def _device(context: dict[str, Any]) -> dict[str, str]:
    device: dict[str, str] = {}
    if isinstance(context.get("userAgent"), str) and context["userAgent"]:
        device["user_agent"] = context["userAgent"]
    for theirs, ours in (("locale", "locale"), ("timezone", "timezone")):
        if isinstance(context.get(theirs), str) and context[theirs]:
            device[ours] = context[theirs]
    screen = context.get("screen")
    if isinstance(screen, dict):
        width, height = screen.get("width"), screen.get("height")
        if isinstance(width, int | float) and isinstance(height, int | float):
            device["screen"] = f"{round(width)}x{round(height)}"
    library = context.get("library")
    if isinstance(library, dict) and isinstance(library.get("name"), str):
        version = library.get("version")
        device["library"] = f"{library['name']}/{version}" if version else library["name"]
    return device


def _object(
    parent: dict[str, Any], name: str, errors: list[FieldError], prefix: str = ""
) -> dict[str, Any]:
    value = parent.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(FieldError(prefix + name, "must be a JSON object"))
        return {}
    return value


def _identifier(message: dict[str, Any], name: str, errors: list[FieldError]) -> str:
    """Segment allows ids as strings or numbers."""
    value = message.get(name)
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        errors.append(FieldError(name, "must be a string or a number"))
        return ""
    return str(value)
