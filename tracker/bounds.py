"""The time range every input is held to at the edge, in one place.

Collectors check each timestamp a client or provider sends here, before any arithmetic on it:
a value outside Python's datetime range once its offset applies, before 1970 or far in the
future is refused with a reason, never an ``OverflowError`` deeper in the pipeline.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

__all__ = [
    "EARLIEST_TS",
    "MAX_DEPTH",
    "MAX_FUTURE_SKEW",
    "as_utc",
    "deeper_than",
    "parse_aware",
    "time_range_error",
]

EARLIEST_TS: Final = datetime(1970, 1, 1, tzinfo=UTC)
MAX_FUTURE_SKEW: Final = timedelta(hours=24)
# How deep JSON a client sends may nest. A touchpoint nests 2 levels; a request envelope adds 2.
MAX_DEPTH: Final = 32


def as_utc(parsed: datetime) -> datetime:
    """``parsed`` in UTC. Raises ``ValueError`` (with a reason a person can act on) when the
    offset takes it outside the years 1 to 9999, or it has no offset."""
    if parsed.tzinfo is None:
        raise ValueError("must carry a UTC offset, such as a trailing Z")
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError(
            "is outside the supported time range once its UTC offset applies"
        ) from None


def parse_aware(raw: Any) -> datetime:
    """An ISO 8601 time with its UTC offset, in UTC, as a record on one of our topics carries
    it. Raises ``ValueError`` (never ``OverflowError``) for text that is not one."""
    parsed = datetime.fromisoformat(str(raw))
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a UTC offset: {str(raw)[:40]!r}")
    return as_utc(parsed)


def time_range_error(
    ts: datetime,
    now: datetime,
    max_age: timedelta | None = None,
    future_skew: timedelta = MAX_FUTURE_SKEW,
) -> str | None:
    """Why ``ts`` (aware, UTC) is outside the accepted range around ``now``, or ``None``.

    The range: not before 1970, not more than ``future_skew`` ahead of ``now``, and not older
    than ``max_age`` when one is given. Safe for any aware datetime: no arithmetic can overflow.
    """
    if ts < EARLIEST_TS:
        return "must not be before 1970-01-01T00:00:00Z"
    if ts > now and ts - now > future_skew:
        return f"must not be more than {_hours(future_skew)} ahead of the server's clock"
    if max_age is not None and now > ts and now - ts > max_age:
        return f"is older than the accepted {max_age.days} days (TRACKER_MAX_EVENT_AGE_DAYS)"
    return None


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:g} hours"


def deeper_than(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON ``value`` nests more than ``limit`` objects or arrays deep.

    Walks without recursion, so any depth a parser produced is safe to ask about.
    """
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
