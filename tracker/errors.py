"""The exception root of Tracker. Every error carries what a caller needs to act on it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BackpressureError",
    "ConfigError",
    "FieldError",
    "QueryRefused",
    "StateTooLarge",
    "StoreError",
    "TrackerError",
    "ValidationError",
]


class TrackerError(Exception):
    """Root of every error Tracker raises on purpose."""

    retriable: bool = False


class ConfigError(TrackerError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason an event was rejected: the dotted field path and a sentence a person can act on."""

    field: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason}


class ValidationError(TrackerError):
    """An event does not satisfy the touchpoint schema."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))


class BackpressureError(TrackerError):
    """Kafka could not take the write in time. Nothing was acknowledged; retry later."""

    retriable = True

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreError(TrackerError):
    """ClickHouse could not be reached (``retriable``), or refused the statement (not retriable)."""

    def __init__(self, message: str, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class QueryRefused(TrackerError):
    """A console query that is not one read-only statement, or that passed a console limit.

    The message says why, in words a person can act on; retrying the same query is futile.
    """


class StateTooLarge(TrackerError):
    """One key's state cannot be kept under ``TRACKER_STATE_MAX_BYTES`` even after folding:
    the record that grew it cannot be processed (it goes to dead letters)."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(
            f"{what} would take {size} bytes of state, above TRACKER_STATE_MAX_BYTES ({limit})"
        )
        self.size = size
        self.limit = limit
