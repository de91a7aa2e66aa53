"""What every provider module shares: the request as signed, the errors, parsing helpers."""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import parse_qs

import orjson

from collectors.calls.records import MAX_ID_LENGTH, MAX_SECONDS, CallCallback, normalize_number
from tracker.bounds import as_utc, time_range_error
from tracker.errors import FieldError, TrackerError
from tracker.privacy import hash_identifier
from tracker.settings import Secret, Settings

__all__ = [
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_KEYS",
    "MAX_STRING_LENGTH",
    "MAX_URL_LENGTH",
    "Ignored",
    "Malformed",
    "NotConfigured",
    "Provider",
    "Unauthorized",
    "WebhookError",
    "WebhookRequest",
]


# The shape any callback payload is held to, whatever the provider (docs/calls.md). The fields
# Tracker reads are held tighter: MAX_ID_LENGTH, or MAX_URL_LENGTH for a recording's URL or path.
MAX_DEPTH: Final = 32  # objects and arrays inside one another
MAX_KEYS: Final = 1000  # keys of one object, or fields of one form
MAX_ITEMS: Final = 1000  # items of one array
MAX_STRING_LENGTH: Final = 65_536  # any string or key anywhere in the payload, in characters
MAX_URL_LENGTH: Final = 2048


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A webhook as the provider sent it: the URL it called (which some sign), headers, raw body."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    received_ts: datetime
    max_event_age: timedelta | None = None  # TRACKER_MAX_EVENT_AGE_DAYS: older times are refused

    def header(self, name: str) -> str:
        return self.headers.get(name, "").strip()

    @property
    def is_json(self) -> bool:
        return "json" in self.header("Content-Type").lower()

    def form(self) -> dict[str, list[str]]:
        try:
            form = parse_qs(
                self.body.decode("utf-8"),
                keep_blank_values=True,
                strict_parsing=False,
                max_num_fields=MAX_KEYS,
            )
        except UnicodeDecodeError:
            raise Malformed([FieldError("$", "the body is not UTF-8")]) from None
        except ValueError:
            raise Malformed([FieldError("$", f"must have at most {MAX_KEYS} fields")]) from None
        check_shape(form)
        return form

    def json_object(self) -> dict[str, Any]:
        return json_object(self.body, "$")


def json_object(raw: str | bytes, where: str) -> dict[str, Any]:
    """A JSON object within the shape bounds, or :class:`Malformed` naming ``where``."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Malformed([FieldError(where, f"is not valid JSON: {exc}")]) from None
    if not isinstance(parsed, dict):
        raise Malformed([FieldError(where, "must be a JSON object")])
    check_shape(parsed, where)
    return parsed


def check_shape(payload: Any, where: str = "$") -> None:
    """Refuse a payload nested deeper than MAX_DEPTH, with an object or array larger than
    MAX_KEYS or MAX_ITEMS, or a string or key longer than MAX_STRING_LENGTH. Iterative: depth
    cannot exhaust the stack. The first fault found is named by its dotted path."""
    pending: list[tuple[Any, str, int]] = [(payload, where, 0)]
    while pending:
        value, path, depth = pending.pop()
        if isinstance(value, str):
            if len(value) > MAX_STRING_LENGTH:
                raise Malformed(
                    [FieldError(path, f"must be at most {MAX_STRING_LENGTH} characters")]
                )
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth >= MAX_DEPTH:
            raise Malformed([FieldError(path, f"must not nest more than {MAX_DEPTH} levels")])
        if isinstance(value, dict):
            if len(value) > MAX_KEYS:
                raise Malformed([FieldError(path, f"must have at most {MAX_KEYS} keys")])
            for key, item in value.items():
                if len(key) > MAX_STRING_LENGTH:
                    raise Malformed(
                        [FieldError(path, f"has a key longer than {MAX_STRING_LENGTH} characters")]
                    )
                pending.append((item, _path("" if path == "$" else path, _key(key)), depth + 1))
        else:
            if len(value) > MAX_ITEMS:
                raise Malformed([FieldError(path, f"must have at most {MAX_ITEMS} items")])
            pending.extend(
                (item, _path("" if path == "$" else path, str(index)), depth + 1)
                for index, item in enumerate(value)
            )


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
    if abs(int(now.timestamp()) - stamp) > tolerance:  # whole numbers: no float overflow
        raise Unauthorized(
            f"{header} is more than {tolerance} s away from our clock: a replay, or a wrong clock"
        )
    return stamp


def single(form: Mapping[str, list[str]]) -> dict[str, str]:
    return {k: v[-1] for k, v in form.items() if v}


def require(data: Mapping[str, Any], *names: str, at: str = "") -> None:
    """Each of ``names`` present and not blank (``" "`` is as missing as ``""``)."""
    missing = [n for n in names if not text(data, n, at=at)]
    if missing:
        raise Malformed([FieldError(_path(at, n), "is required") for n in missing])


def text(data: Mapping[str, Any], name: str, *, at: str = "", limit: int = MAX_ID_LENGTH) -> str:
    """The field ``name`` of ``data`` (found at dotted path ``at``) as stripped text, ``""`` when
    absent; refused when it is an object or array or longer than ``limit`` characters."""
    value = data.get(name)
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise Malformed([FieldError(_path(at, name), "must be a string")])
    result = str(value).strip()
    if len(result) > limit:
        raise Malformed(
            [FieldError(_path(at, name), f"must be at most {limit} characters, got {len(result)}")]
        )
    return result


def seconds(data: Mapping[str, Any], name: str, *, at: str = "") -> float | None:
    value = text(data, name, at=at)
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise Malformed(
            [FieldError(_path(at, name), f"must be a number of seconds, got {_shown(value)}")]
        ) from None
    if not 0 <= number <= MAX_SECONDS:  # also refuses nan and infinity
        raise Malformed(
            [FieldError(_path(at, name), f"must be a number of seconds from 0 to {MAX_SECONDS}")]
        )
    return number


def iso_time(
    data: Mapping[str, Any], name: str, request: WebhookRequest, *, at: str = ""
) -> datetime | None:
    """RFC 3339 / ISO 8601 with an offset; a bare time is read as UTC, as providers send it."""
    value = text(data, name, at=at)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "T", 1) if "T" not in value else value)
    except ValueError:
        raise Malformed(
            [FieldError(_path(at, name), f"is not an ISO 8601 time: {_shown(value)}")]
        ) from None
    return _in_range(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC), name, request, at)


def rfc2822_time(data: Mapping[str, Any], name: str, request: WebhookRequest) -> datetime | None:
    value = text(data, name)
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        raise Malformed([FieldError(name, f"is not an RFC 2822 date: {_shown(value)}")]) from None
    return _in_range(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC), name, request)


def epoch_time(
    data: Mapping[str, Any],
    name: str,
    request: WebhookRequest,
    divisor: float = 1.0,
    *,
    at: str = "",
) -> datetime | None:
    """Unix time; ``0`` means "did not happen", as FreeSWITCH writes an unanswered answer time."""
    value = text(data, name, at=at)
    if value in ("", "0"):
        return None
    try:
        parsed = datetime.fromtimestamp(float(value) / divisor, tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise Malformed(
            [FieldError(_path(at, name), f"is not a unix time: {_shown(value)}")]
        ) from None
    return _in_range(parsed, name, request, at)


def _in_range(parsed: datetime, name: str, request: WebhookRequest, at: str = "") -> datetime:
    """``parsed`` in UTC, refused with a reason outside the accepted range (tracker.bounds)."""
    try:
        utc = as_utc(parsed)
    except ValueError as exc:
        raise Malformed([FieldError(_path(at, name), str(exc))]) from None
    reason = time_range_error(utc, request.received_ts, request.max_event_age)
    if reason is not None:
        raise Malformed([FieldError(_path(at, name), reason)])
    return utc


def _path(at: str, name: str) -> str:
    return f"{at}.{name}" if at else name


def _key(key: str) -> str:
    """An object key as a field name: cut short, and never empty."""
    return key[:64] or '""'


def _shown(value: str) -> str:
    """A value quoted in a reason, cut short: reasons stay readable whatever was sent."""
    return repr(value if len(value) <= 40 else value[:40] + "...")


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
