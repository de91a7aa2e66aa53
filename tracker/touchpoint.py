"""The touchpoint event v1: validation of what clients send, and the typed model the pipeline carries.

A collector turns a client's JSON into a :class:`Touchpoint` with :func:`accept`. That validates
against ``schemas/touchpoint/1-0-0.json``, corrects the device clock, hashes email and phone, keeps
personal data out of URLs and properties (:class:`tracker.privacy.PiiRules`), and applies
consent. The raw topic carries :meth:`Touchpoint.to_wire`; the worker reads it back with
:meth:`Touchpoint.from_wire`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import fastjsonschema
import orjson

from tracker.bounds import as_utc, time_range_error
from tracker.errors import FieldError, ValidationError
from tracker.privacy import (
    InvalidIdentifier,
    PiiRules,
    hash_identifier,
    normalize_email,
    normalize_phone,
    scrub_properties,
    scrub_text,
    scrub_url,
    truncate_ip,
)

__all__ = [
    "AD_CLICK_ID_PARAMS",
    "MAX_EVENT_BYTES",
    "PREVIOUS_SALT_PROPERTIES",
    "SCHEMA_ID",
    "RequestContext",
    "Touchpoint",
    "accept",
    "load_schema",
]

SCHEMA_ID: Final = "tracker/touchpoint/1-0-0"
# One event as JSON, whatever its fields: the schema bounds each field, this bounds their sum.
MAX_EVENT_BYTES: Final = 32 * 1024
# Longest field path a refusal names; keys past it are cut (a client may send any key).
MAX_PATH: Final = 200
# The User-Agent header the collector adds to ``context`` is held to the schema's own limit.
MAX_USER_AGENT: Final = 1024
# Query parameters that identify one ad click, and so one person.
AD_CLICK_ID_PARAMS: Final = (
    "gclid",
    "gbraid",
    "wbraid",
    "dclid",
    "fbclid",
    "msclkid",
    "ttclid",
    "twclid",
    "li_fat_id",
    "epik",
    "rdt_cid",
    "sccid",
)
# During a salt rotation (TRACKER_HASH_SALT_PREVIOUS) an event also carries its email's and
# phone's hashes under the previous salt, as these properties, so the identity graph links the
# two hashes into one customer. Reserved: a client's own keys with this prefix are dropped.
PREVIOUS_SALT_PREFIX: Final = "previous_salt."
PREVIOUS_SALT_PROPERTIES: Final = {
    "email": f"{PREVIOUS_SALT_PREFIX}email_hash",
    "phone": f"{PREVIOUS_SALT_PREFIX}phone_hash",
}
# The schema's bounds, held again after scrubbing (a hash can be longer than what it replaced).
_MAX_URL: Final = 4096
_MAX_SHORT_TEXT: Final = 256
_MAX_PROPERTY: Final = 1024
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$"
)


@cache
def load_schema() -> dict[str, Any]:
    text = resources.files("schemas").joinpath("touchpoint/1-0-0.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> Any:
    return fastjsonschema.compile(load_schema())


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the collector knows about the request, beyond the event itself."""

    source: str
    received_ts: datetime
    ip: str = ""
    user_agent: str = ""
    hash_salt: str = ""
    phone_region: str = "US"
    max_event_age: timedelta = timedelta(days=730)
    # The salt being rotated out: identifiers are hashed under it too while it is set.
    previous_hash_salt: str = ""
    # What is kept out of URLs and properties; None: the defaults, under ``hash_salt``.
    pii: PiiRules | None = None

    @property
    def pii_rules(self) -> PiiRules:
        return self.pii or PiiRules(salt=self.hash_salt, phone_region=self.phone_region)


@dataclass(slots=True)
class Touchpoint:
    event_id: str
    type: str
    name: str
    source: str
    channel: str
    ts: datetime
    device_ts: datetime
    received_ts: datetime
    sent_ts: datetime | None = None
    version: int = 0
    anonymous_id: str = ""
    user_id: str = ""
    email_hash: str = ""
    phone_hash: str = ""
    session_id: str = ""
    click_id: str = ""
    ad_click_ids: dict[str, str] = field(default_factory=dict)
    page: dict[str, str] = field(default_factory=dict)
    campaign: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    value: float | None = None
    currency: str = ""
    survey: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, bool] = field(default_factory=dict)
    context: dict[str, str] = field(default_factory=dict)

    @property
    def identity_hint(self) -> str:
        """The Kafka key: the strongest identifier the event carries, so a customer's events share a partition."""
        for kind, value in (
            ("user", self.user_id),
            ("anon", self.anonymous_id),
            ("email", self.email_hash),
            ("phone", self.phone_hash),
            ("click", self.click_id),
        ):
            if value:
                return f"{kind}:{value}"
        return f"event:{self.event_id}"

    def identifier_keys(self) -> set[str]:
        """Every identifier the event carries, as ``kind:value`` (email and phone hashed, also
        under the previous salt during a rotation)."""
        pairs = (
            ("user", self.user_id),
            ("anon", self.anonymous_id),
            ("email", self.email_hash),
            ("phone", self.phone_hash),
            ("click", self.click_id),
            ("email", self.properties.get(PREVIOUS_SALT_PROPERTIES["email"], "")),
            ("phone", self.properties.get(PREVIOUS_SALT_PROPERTIES["phone"], "")),
        )
        return {f"{kind}:{value}" for kind, value in pairs if value}

    def to_wire(self) -> dict[str, Any]:
        """The raw-topic form: the contract's shape, with identifiers hashed and collector fields added."""
        wire: dict[str, Any] = {
            "schema": SCHEMA_ID,
            "event_id": self.event_id,
            "type": self.type,
            "name": self.name,
            "source": self.source,
            "channel": self.channel,
            "ts": _format_ts(self.ts),
            "device_ts": _format_ts(self.device_ts),
            "received_ts": _format_ts(self.received_ts),
        }
        if self.sent_ts is not None:
            wire["sent_ts"] = _format_ts(self.sent_ts)
        if self.version:
            wire["version"] = self.version
        for name in (
            "anonymous_id",
            "user_id",
            "email_hash",
            "phone_hash",
            "session_id",
            "click_id",
            "currency",
        ):
            if value := getattr(self, name):
                wire[name] = value
        for name in (
            "ad_click_ids",
            "page",
            "campaign",
            "properties",
            "survey",
            "consent",
            "context",
        ):
            if value := getattr(self, name):
                wire[name] = value
        if self.value is not None:
            wire["value"] = self.value
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Touchpoint:
        """Read a raw-topic event back. Raises ``KeyError``, ``TypeError`` or ``ValueError`` on a malformed one."""
        if wire.get("schema") != SCHEMA_ID:
            raise ValueError(f"unknown schema {wire.get('schema')!r}")
        sent = wire.get("sent_ts")
        value = wire.get("value")
        return cls(
            event_id=str(wire["event_id"]),
            type=str(wire["type"]),
            name=str(wire.get("name", "")),
            source=str(wire["source"]),
            channel=str(wire.get("channel", "")),
            ts=_parse_wire_ts(wire["ts"]),
            device_ts=_parse_wire_ts(wire["device_ts"]),
            received_ts=_parse_wire_ts(wire["received_ts"]),
            sent_ts=_parse_wire_ts(sent) if sent else None,
            version=int(wire.get("version", 0)),
            anonymous_id=str(wire.get("anonymous_id", "")),
            user_id=str(wire.get("user_id", "")),
            email_hash=str(wire.get("email_hash", "")),
            phone_hash=str(wire.get("phone_hash", "")),
            session_id=str(wire.get("session_id", "")),
            click_id=str(wire.get("click_id", "")),
            ad_click_ids=_str_map(wire.get("ad_click_ids")),
            page=_str_map(wire.get("page")),
            campaign=_str_map(wire.get("campaign")),
            properties=_str_map(wire.get("properties")),
            value=float(value) if value is not None else None,
            currency=str(wire.get("currency", "")),
            survey=dict(wire.get("survey") or {}),
            consent={k: bool(v) for k, v in (wire.get("consent") or {}).items()},
            context=_str_map(wire.get("context")),
        )


def accept(payload: Any, request: RequestContext) -> Touchpoint:
    """Validate one client event and normalize it. Raises :class:`ValidationError` naming each bad field."""
    if not isinstance(payload, dict):
        raise ValidationError([FieldError("$", "an event must be a JSON object")])
    try:
        _validator()(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise ValidationError([_field_error(exc)]) from None
    size = len(orjson.dumps(payload))
    if size > MAX_EVENT_BYTES:
        raise ValidationError(
            [FieldError("$", f"is {size} bytes as JSON; an event may be at most {MAX_EVENT_BYTES}")]
        )

    errors: list[FieldError] = []
    device_ts = _checked_ts(payload, "ts", errors, request)
    sent_ts = _checked_ts(payload, "sent_ts", errors, request) if "sent_ts" in payload else None
    email_hash = _hashed(payload, "email", request.hash_salt, request, errors)
    phone_hash = _hashed(payload, "phone", request.hash_salt, request, errors)
    if errors:
        raise ValidationError(errors)
    assert device_ts is not None
    ts = _event_time(device_ts, sent_ts, request)

    context = dict(payload.get("context") or {})
    if request.user_agent and "user_agent" not in context:
        context["user_agent"] = request.user_agent[:MAX_USER_AGENT]
    if request.ip:
        context["ip"] = truncate_ip(request.ip)

    touchpoint = Touchpoint(
        event_id=payload["event_id"].lower(),
        type=payload["type"],
        name=payload.get("name") or payload["type"],
        source=payload.get("source") or request.source,
        channel=payload.get("channel", ""),
        ts=ts,
        device_ts=device_ts,
        received_ts=request.received_ts,
        sent_ts=sent_ts,
        anonymous_id=payload.get("anonymous_id", ""),
        user_id=payload.get("user_id", ""),
        email_hash=email_hash,
        phone_hash=phone_hash,
        session_id=payload.get("session_id", ""),
        click_id=payload.get("click_id", ""),
        ad_click_ids=dict(payload.get("ad_click_ids") or {}),
        page=_scrubbed_page(payload.get("page") or {}, request.pii_rules),
        campaign=dict(payload.get("campaign") or {}),
        properties=_properties(payload, request),
        value=payload.get("value"),
        currency=payload.get("currency", ""),
        survey=dict(payload.get("survey") or {}),
        consent=dict(payload.get("consent") or {}),
        context=context,
    )
    if touchpoint.consent.get("analytics") is False:
        _strip_identifiers(touchpoint)
    return touchpoint


def _event_time(device_ts: datetime, sent_ts: datetime | None, request: RequestContext) -> datetime:
    """When the event happened by the collector's clock, held to the accepted range.

    Without ``sent_ts`` that is ``ts`` itself. With it, the device clock may be wrong but the
    delay it measured between event and send is right, so the event happened that long before
    the collector received it. ``ts`` and ``sent_ts`` are already within 1970 to now + the skew,
    so no subtraction here can overflow.
    """
    now = request.received_ts
    if sent_ts is None:
        if reason := time_range_error(device_ts, now, request.max_event_age):
            raise ValidationError([FieldError("ts", reason)])
        return device_ts
    if sent_ts < device_ts:
        raise ValidationError(
            [FieldError("sent_ts", "is earlier than ts; send the time the batch left the device")]
        )
    waited = sent_ts - device_ts
    if waited > request.max_event_age:
        raise ValidationError(
            [
                FieldError(
                    "ts",
                    f"is {waited.days} days before sent_ts; an event may wait at most "
                    f"{request.max_event_age.days} days on the device (TRACKER_MAX_EVENT_AGE_DAYS)",
                )
            ]
        )
    ts = now - waited
    if reason := time_range_error(ts, now, request.max_event_age):
        raise ValidationError([FieldError("ts", f"once corrected by sent_ts, {reason}")])
    return ts


def _strip_identifiers(touchpoint: Touchpoint) -> None:
    """Without analytics consent an event still counts, but can never be tied to a person."""
    touchpoint.anonymous_id = touchpoint.user_id = touchpoint.session_id = ""
    touchpoint.email_hash = touchpoint.phone_hash = touchpoint.click_id = ""
    touchpoint.ad_click_ids = {}
    touchpoint.context.pop("ip", None)
    for name in PREVIOUS_SALT_PROPERTIES.values():
        touchpoint.properties.pop(name, None)
    for part in ("url", "referrer"):
        if part in touchpoint.page:
            touchpoint.page[part] = _without_click_ids(touchpoint.page[part])


def _scrubbed_page(page: dict[str, str], rules: PiiRules) -> dict[str, str]:
    """``page`` with no email, phone number or listed query parameter in its URLs or title."""
    if not rules.enabled:
        return dict(page)
    scrubbed = dict(page)
    for part in ("url", "referrer"):
        if part in scrubbed:
            scrubbed[part] = scrub_url(scrubbed[part], rules)[:_MAX_URL]
    if "title" in scrubbed:
        scrubbed["title"] = scrub_text(scrubbed["title"], rules)[:_MAX_SHORT_TEXT]
    return scrubbed


def _properties(payload: dict[str, Any], request: RequestContext) -> dict[str, str]:
    """The client's properties, scrubbed, plus the previous salt's hashes during a rotation."""
    sent = {
        k: v
        for k, v in (payload.get("properties") or {}).items()
        if not k.startswith(PREVIOUS_SALT_PREFIX)
    }
    rules = request.pii_rules
    properties = (
        {k: v[:_MAX_PROPERTY] for k, v in scrub_properties(sent, rules).items()}
        if rules.enabled
        else sent
    )
    if request.previous_hash_salt and request.previous_hash_salt != request.hash_salt:
        for name, key in PREVIOUS_SALT_PROPERTIES.items():
            if previous := _hashed(payload, name, request.previous_hash_salt, request, []):
                properties[key] = previous
    return properties


def _without_click_ids(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if not parts.query:
        return url
    kept = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k not in AD_CLICK_ID_PARAMS
    ]
    return urlunsplit(parts._replace(query=urlencode(kept)))


def _field_error(exc: Any) -> FieldError:
    path = str(exc.name)
    path = path[len("data") :].lstrip(".") if path.startswith("data") else path
    message = str(exc.message)
    if message.startswith(str(exc.name)):
        message = message[len(str(exc.name)) :].strip()
    value, definition = exc.value, exc.definition or {}
    if exc.rule == "additionalProperties" and isinstance(value, dict):
        unknown = sorted(set(value) - set(definition.get("properties", {})))
        return FieldError(
            _join(path, unknown[0]), "is not a touchpoint field; see docs/touchpoint.md"
        )
    if exc.rule == "required" and isinstance(value, dict):
        missing = [name for name in definition.get("required", []) if name not in value]
        return FieldError(_join(path, missing[0]), "is required")
    if exc.rule == "pattern" and path == "event_id":
        message = "must be a UUID made by the client, e.g. 0b8f3c2e-5d7a-4e1b-9c3f-2a6d8e4f1b7c"
    if exc.rule == "not" and path == "event_id":
        message = "must not be the nil UUID; make a random UUID (v4) for each event"
    if exc.rule == "propertyNames":
        names = definition.get("propertyNames", {})
        limit = names.get("maxLength")
        message = (
            f"has a key longer than {limit} characters"
            if limit
            else f"has a key that does not match {names.get('pattern')}"
        )
    return FieldError(_short(path) or "$", message)


def _join(path: str, name: str) -> str:
    return _short(f"{path}.{name}" if path else name)


def _short(path: str) -> str:
    """A field path as a client can be told it: a key past any limit is cut, not echoed whole."""
    return path if len(path) <= MAX_PATH else f"{path[:MAX_PATH]}..."


def _checked_ts(
    payload: dict[str, Any], name: str, errors: list[FieldError], request: RequestContext
) -> datetime | None:
    """The timestamp ``name`` in UTC, when it parses and lies between 1970 and now + the skew."""
    try:
        parsed = _parse_ts(payload[name])
    except ValueError as exc:
        errors.append(FieldError(name, str(exc)))
        return None
    if reason := time_range_error(parsed, request.received_ts):
        errors.append(FieldError(name, reason))
        return None
    return parsed


def _hashed(
    payload: dict[str, Any],
    name: str,
    salt: str,
    request: RequestContext,
    errors: list[FieldError],
) -> str:
    raw = payload.get(name)
    if not raw:
        return ""
    try:
        normalized = (
            normalize_email(raw) if name == "email" else normalize_phone(raw, request.phone_region)
        )
    except InvalidIdentifier as exc:
        errors.append(FieldError(name, str(exc)))
        return ""
    return hash_identifier(name, normalized, salt)


def _parse_ts(raw: str) -> datetime:
    try:
        if not _RFC3339.match(raw):
            raise ValueError
        parsed = datetime.fromisoformat(raw)
    except (TypeError, ValueError):
        raise ValueError(
            f"must be an RFC 3339 timestamp such as 2026-11-22T10:00:00Z, got {raw!r}"
        ) from None
    return as_utc(parsed)


def _parse_wire_ts(raw: str) -> datetime:
    """Timestamps Tracker wrote itself: RFC 3339 in UTC, so only the offset is checked."""
    parsed = datetime.fromisoformat(raw)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without offset: {raw!r}")
    return parsed


def _format_ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _str_map(raw: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (raw or {}).items()}
