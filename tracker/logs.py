"""Structured logging: one JSON object per line on stderr, configured once by the entry point."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["JsonFormatter", "RepeatFilter", "configure_logging", "logging_config"]

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON; ``extra={...}`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class RepeatFilter(logging.Filter):
    """Lets one warning or error of a kind through per ``interval`` seconds, so that an outage
    cannot fill a disk. A kind is what the line would say: the logger, the level, the message
    and its ``extra`` fields (so "component exited" of the worker and of Kafka are two kinds).
    The first line after an interval carries ``repeated``: how many were held back.
    """

    _MAX_KINDS = 4096

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._kinds: dict[tuple[Any, ...], list[float]] = {}  # kind: [window start, held]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = _kind(record)
        now = self._clock()
        with self._lock:
            window = self._kinds.get(kind)
            if window is not None and now - window[0] < self._interval:
                window[1] += 1
                return False
            if window is not None and window[1]:
                record.repeated = int(window[1])
            if len(self._kinds) >= self._MAX_KINDS:
                self._forget_before(now - self._interval)
            self._kinds[kind] = [now, 0]
        return True

    def _forget_before(self, cutoff: float) -> None:
        """Kinds whose window has ended; if none has, all: a count lost beats unbounded memory."""
        stale = [kind for kind, (start, _) in self._kinds.items() if start < cutoff]
        for kind in stale or list(self._kinds):
            del self._kinds[kind]


def _kind(record: logging.LogRecord) -> tuple[Any, ...]:
    extra = tuple(
        (key, repr(value))
        for key, value in record.__dict__.items()
        if key not in _RESERVED and not key.startswith("_")
    )
    try:
        message = record.getMessage()
    except Exception:  # arguments that do not fit the message: the handler reports it
        message = str(record.msg)
    return (record.name, record.levelno, message, extra)


def logging_config(level: str, repeat_seconds: float = 60.0) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` mapping; Faust's worker takes the same mapping. Repeated
    warnings and errors are held back by :class:`RepeatFilter` on the one handler."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"repeats": {"()": RepeatFilter, "interval": repeat_seconds}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["repeats"],
                "stream": sys.stderr,
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "aiokafka": {"level": "WARNING"},
            "faust": {"level": "WARNING"},
            "mode": {"level": "WARNING"},
            "aiohttp.access": {"level": "WARNING"},
            "clickhouse_connect": {"level": "WARNING"},
        },
    }


def configure_logging(level: str = "INFO", repeat_seconds: float = 60.0) -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level, repeat_seconds))
