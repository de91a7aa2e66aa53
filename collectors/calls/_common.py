"""What every provider module shares: the request as signed, the errors, parsing helpers."""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs

import orjson

from collectors.calls.records import CallCallback, normalize_number
from tracker.errors import FieldError, TrackerError
from tracker.privacy import hash_identifier
from tracker.settings import Secret, Settings

__all__ = [
    "Ignored",
    "Malformed",
    "NotConfigured",
    "Provider",
    "Unauthorized",
    "WebhookError",
    "WebhookRequest",
]


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A webhook as the provider sent it: the URL it called (which some sign), headers, raw body."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    received_ts: datetime

    def header(self, name: str) -> str:
        return self.headers.get(name, "").strip()

    @property
    def is_json(self) -> bool:
        return "json" in self.header("Content-Type").lower()

    def form(self) -> dict[str, list[str]]:
        try:
            return parse_qs(self.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise Malformed([FieldError("$", "the body is not UTF-8")]) from None

    def json_object(self) -> dict[str, Any]:
        try:
            parsed = orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise Malformed([FieldError("$", f"the body is not valid JSON: {exc}")]) from None
        if not isinstance(parsed, dict):
            raise Malformed([FieldError("$", "the body must be a JSON object")])
        return parsed


class WebhookError(TrackerError):
    """A webhook that is not accepted; ``status`` is the HTTP answer."""

    status = 400
    outcome = "malformed"


class NotConfigured(WebhookError):
    """The provider's secret is not set here, so nothing it sends can be trusted."""

    status = 503
    outcome = "not_configured"

    def __init__(self, provider: str, *variables: str) -> None:
        names = " and ".join(variables)
        super().__init__(
            f"{provider} webhooks are turned off on this server: set {names} to accept them"
        )


class Unauthorized(WebhookError):
    """The signature or credentials are missing or do not match."""

    status = 401
    outcome = "unauthorized"


class Malformed(WebhookError):
    """Authentic, but not a callback Tracker can read. It is kept as a dead letter."""

    status = 400
    outcome = "malformed"

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))


class Ignored(TrackerError):
    """Authentic and well-formed, but about something other than a call's progress."""


@dataclass(frozen=True, slots=True)
class Provider:
    """A provider: how to check that a request is really from it, and how to read its callbacks."""

    name: str
    authenticate: Callable[[WebhookRequest, Settings], None]
    normalize: Callable[[WebhookRequest, Settings], list[CallCallback]]


def secret_or_refuse(secret: Secret, provider: str, variable: str) -> str:
    if not secret:
        raise NotConfigured(provider, variable)
    return secret.value


def same(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time comparison, so timing tells an attacker nothing about the expected value."""
    left = a.encode() if isinstance(a, str) else a
    right = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(left, right)


def fresh_timestamp(raw: str, header: str, now: datetime, tolerance: int) -> int:
    """A unix-seconds header within the replay window, either side of our clock."""
    try:
        stamp = int(raw)
    except ValueError:
        raise Unauthorized(f"{header} must be unix seconds, got {raw[:40]!r}") from None
    if abs(now.timestamp() - stamp) > tolerance:
        raise Unauthorized(
            f"{header} is more than {tolerance} s away from our clock: a replay, or a wrong clock"
        )
    return stamp


def single(form: Mapping[str, list[str]]) -> dict[str, str]:
    return {k: v[-1] for k, v in form.items() if v}


def require(data: Mapping[str, Any], *names: str) -> None:
    missing = [n for n in names if data.get(n) in (None, "")]
    if missing:
        raise Malformed([FieldError(n, "is required") for n in missing])


def text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise Malformed([FieldError(name, "must be a string")])
    return str(value).strip()


def seconds(data: Mapping[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Malformed([FieldError(name, f"must be a number of seconds, got {value!r}")]) from None
    if number < 0:
        raise Malformed([FieldError(name, "must not be negative")])
    return number


def iso_time(data: Mapping[str, Any], name: str) -> datetime | None:
    """RFC 3339 / ISO 8601 with an offset; a bare time is read as UTC, as providers send it."""
    value = text(data, name)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "T", 1) if "T" not in value else value)
    except ValueError:
        raise Malformed([FieldError(name, f"is not an ISO 8601 time: {value!r}")]) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def rfc2822_time(data: Mapping[str, Any], name: str) -> datetime | None:
    value = text(data, name)
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise Malformed([FieldError(name, f"is not an RFC 2822 date: {value!r}")]) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def epoch_time(data: Mapping[str, Any], name: str, divisor: float = 1.0) -> datetime | None:
    """Unix time; ``0`` means "did not happen", as FreeSWITCH writes an unanswered answer time."""
    value = data.get(name)
    if value in (None, "", "0", 0):
        return None
    try:
        return datetime.fromtimestamp(float(value) / divisor, tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise Malformed([FieldError(name, f"is not a unix time: {value!r}")]) from None


@dataclass(frozen=True, slots=True)
class Numbers:
    caller_hash: str
    called_hash: str
    tracking_number: str


def numbers(direction: str, caller: str, called: str, settings: Settings) -> Numbers:
    """Hash both parties; keep in clear only the business's own number (the one dialled in)."""
    region, salt = settings.default_phone_region, settings.hash_salt.value
    caller_e164 = normalize_number(caller, region)  # parsing is the costly part: once each
    called_e164 = normalize_number(called, region)
    return Numbers(
        caller_hash=hash_identifier("phone", caller_e164, salt) if caller_e164 else "",
        called_hash=hash_identifier("phone", called_e164, salt) if called_e164 else "",
        tracking_number=called_e164 if direction != "outbound" else caller_e164,
    )


# A run of 7 to 15 digits standing on its own (or after a %-escape such as %2B for +): what a
# phone number looks like. Digits inside ids such as CA3f0012345678ab are left alone.
_NUMBER_LIKE = re.compile(
    r"(?:(?<=%[0-9A-F]{2})|(?<![A-Z0-9]))\+?\d{7,15}(?![A-Z0-9])", re.IGNORECASE
)


def redact_numbers(body: bytes) -> str:
    """Dead letters keep the payload, but never a phone number in clear."""
    return _NUMBER_LIKE.sub("<redacted>", body.decode("utf-8", errors="replace"))
