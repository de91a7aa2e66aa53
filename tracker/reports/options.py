"""What a report is asked: one set of options, read from the CLI's flags or the endpoint's query
string alike (both are strings), checked with reasons a person can act on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from tracker.errors import TrackerError

__all__ = ["REPORTS", "ConversionRule", "ReportInvalid", "ReportOptions", "Step", "parse_options"]

REPORTS = ("scorecard", "funnel", "paths", "stages", "attribution")


class ReportInvalid(TrackerError):
    """A report asked with an option it cannot take; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ConversionRule:
    """As TRACKER_JOURNEY_CONVERSIONS: an event of ``types`` with a value above ``min_value``."""

    types: tuple[str, ...]
    min_value: float | None = None


DEFAULT_CONVERSIONS = (ConversionRule(("purchase", "order_completed"), 0.0),)


@dataclass(frozen=True, slots=True)
class Step:
    """A funnel step: an event type, and for ``type:name`` its name (a page view's path)."""

    type: str
    name: str | None = None

    def __str__(self) -> str:
        return self.type if self.name is None else f"{self.type}:{self.name}"


@dataclass(frozen=True, slots=True)
class ReportOptions:
    start: date
    """--from: the first UTC day included."""
    end: date
    """--to: the last UTC day included."""
    include_bots: bool = False
    by: str = ""
    window_days: float = 7.0
    conversion: bool = True
    """scorecard: compute the conversion columns (per customer, the slow part); false leaves
    them empty and answers from the rollups alone."""
    steps: tuple[Step, ...] = ()
    ending: str = ""
    """paths --outcome: conversion, no-conversion, or empty for both."""
    top: int = 20
    model: str = "all"
    lookback_days: float = 30.0
    half_life_days: float = 7.0
    seed: int | None = None
    bootstrap_rounds: int = 200
    conversions: tuple[ConversionRule, ...] = field(default=DEFAULT_CONVERSIONS)

    @property
    def start_ts(self) -> datetime:
        return datetime(self.start.year, self.start.month, self.start.day, tzinfo=UTC)

    @property
    def end_ts(self) -> datetime:
        """The first instant after the range."""
        return datetime(self.end.year, self.end.month, self.end.day, tzinfo=UTC) + timedelta(1)

    def with_conversions(self, rules: Sequence[Mapping[str, Any]]) -> ReportOptions:
        """The deployment's conversion rules (Settings.journey_conversions), if it has any."""
        if not rules:
            return self
        parsed = tuple(
            ConversionRule(
                tuple(str(t) for t in r.get("types", ())),
                float(r["min_value"]) if r.get("min_value") is not None else None,
            )
            for r in rules
        )
        return replace(self, conversions=parsed)


_BY = {
    "scorecard": ("touchpoint", "channel", "stage"),
    "paths": ("channel", "touchpoint"),
    "attribution": ("channel",),
}
_ALLOWED = {
    "scorecard": {"by", "window_days", "conversion"},
    "funnel": {"steps", "window_days"},
    "paths": {"ending", "outcome", "top", "by"},
    "stages": set(),
    "attribution": {"model", "by", "lookback_days", "half_life_days", "seed", "bootstrap_rounds"},
}
MODEL_CHOICES = (
    "first_touch",
    "last_touch",
    "last_non_direct",
    "linear",
    "position_based",
    "time_decay",
    "markov",
    "shapley",
    "all",
)


def _day(name: str, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ReportInvalid(f"{name} must be a date such as 2026-11-20, got {text!r}") from None


def _number(name: str, text: str, low: float, high: float) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ReportInvalid(f"{name} must be a number, got {text!r}") from None
    if not low < number <= high:
        raise ReportInvalid(f"{name} must be above {low:g} and at most {high:g}, got {text}")
    return number


def _integer(name: str, text: str, low: int, high: int) -> int:
    try:
        number = int(text)
    except ValueError:
        raise ReportInvalid(f"{name} must be a whole number, got {text!r}") from None
    if not low <= number <= high:
        raise ReportInvalid(f"{name} must be from {low} to {high}, got {text}")
    return number


def _flag(given: Mapping[str, str], name: str, default: bool) -> bool:
    text = given.get(name, "true" if default else "false").lower()
    if text not in ("true", "false", "1", "0"):
        raise ReportInvalid(f"{name} must be true or false, got {text!r}")
    return text in ("true", "1")


def _steps(text: str) -> tuple[Step, ...]:
    steps = []
    for word in text.split(","):
        word = word.strip()
        kind, _, name = word.partition(":")
        if not kind:
            raise ReportInvalid(f"each funnel step is type or type:name, got {word!r} in {text!r}")
        steps.append(Step(kind, name if name else None))
    if len(steps) < 2:
        raise ReportInvalid("a funnel needs at least two steps: steps=page_view,purchase")
    return tuple(steps)


def parse_options(name: str, query: Mapping[str, str], today: date | None = None) -> ReportOptions:
    """Options from a query string: from, to (UTC days; the last 30 days ending today by
    default), include_bots, and the report's own (by, window_days, steps, top, model...).

    ``to`` is the range's last day for every report; the paths report's --outcome (conversion or
    no-conversion) travels as ``outcome`` (or ``ending``, its first name)."""
    if name not in REPORTS:
        raise ReportInvalid(f"no report {name!r}; reports: {', '.join(REPORTS)}")
    given = dict(query)
    allowed = {"from", "to", "include_bots", *_ALLOWED[name]}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ReportInvalid(
            f"{name} takes no option {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}"
        )
    end = _day("to", given["to"]) if "to" in given else (today or datetime.now(UTC).date())
    start = _day("from", given["from"]) if "from" in given else end - timedelta(days=29)
    if start > end:
        raise ReportInvalid(f"from ({start}) must not be after to ({end})")
    options = ReportOptions(start, end, include_bots=_flag(given, "include_bots", False))
    changes: dict[str, Any] = {}
    if name == "scorecard":
        changes["conversion"] = _flag(given, "conversion", True)
    if name in _BY:
        by = given.get("by", _BY[name][0])
        if by not in _BY[name]:
            raise ReportInvalid(f"{name} by must be one of {', '.join(_BY[name])}, got {by!r}")
        changes["by"] = by
    if "window_days" in given:
        changes["window_days"] = _number("window_days", given["window_days"], 0, 3660)
    if name == "funnel":
        if "steps" not in given:
            raise ReportInvalid("funnel needs steps, e.g. steps=page_view:/pricing,purchase")
        changes["steps"] = _steps(given["steps"])
    if name == "paths":
        if "outcome" in given and "ending" in given and given["outcome"] != given["ending"]:
            raise ReportInvalid("give outcome or ending (the same option), not both")
        word = "outcome" if "outcome" in given else "ending"
        ending = given.get(word, "")
        if ending not in ("", "conversion", "no-conversion"):
            raise ReportInvalid(f"paths {word} must be conversion or no-conversion, got {ending!r}")
        changes["ending"] = ending
        if "top" in given:
            changes["top"] = _integer("top", given["top"], 1, 10_000)
    if name == "attribution":
        model = given.get("model", "all")
        if model not in MODEL_CHOICES:
            raise ReportInvalid(f"model must be one of {', '.join(MODEL_CHOICES)}, got {model!r}")
        changes["model"] = model
        if "lookback_days" in given:
            changes["lookback_days"] = _number("lookback_days", given["lookback_days"], 0, 3660)
        if "half_life_days" in given:
            changes["half_life_days"] = _number("half_life_days", given["half_life_days"], 0, 3660)
        if "seed" in given:
            changes["seed"] = _integer("seed", given["seed"], 0, 2**63 - 1)
        if "bootstrap_rounds" in given:
            changes["bootstrap_rounds"] = _integer(
                "bootstrap_rounds", given["bootstrap_rounds"], 10, 10_000
            )
    return replace(options, **changes)
