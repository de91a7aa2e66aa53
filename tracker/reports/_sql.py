"""The SQL that feeds the reports, from the stitched tables as customers stand now.

Every read goes through the view ``customer_touchpoints`` (current touchpoint versions, each
re-attributed to the customer its identity key resolves to now), skips events never stitched to
a customer, and skips bots unless asked. Sessions are the current, not retired versions, and a
session belongs to the current customer of its first event. Values are written into the SQL
only from parsed options (dates, numbers) or quoted with ``quote``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from tracker.reports.options import ConversionRule, ReportOptions

Rows = list[tuple[Any, ...]]
Query = Callable[[str], Rows]

TOUCHPOINT_NAME = "if(type = 'page_view', page_path, name)"
KEYS = {
    "touchpoint": ("channel", "type", TOUCHPOINT_NAME),
    "channel": ("channel",),
    "stage": ("stage",),
}
KEY_NAMES = {
    "touchpoint": ("channel", "type", "name"),
    "channel": ("channel",),
    "stage": ("stage",),
}


def quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def moment(ts: datetime) -> str:
    return f"toDateTime64({quote(ts.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3])}, 3, 'UTC')"


def is_conversion(rules: Sequence[ConversionRule]) -> str:
    """True for an event a conversion rule matches (as the journey agent decides)."""
    terms = []
    for rule in rules:
        types = ", ".join(quote(t) for t in rule.types) or "''"
        term = f"type IN ({types})"
        if rule.min_value is not None:
            term += f" AND ifNull(value, nan) > {float(rule.min_value)!r}"
        terms.append(f"({term})")
    return " OR ".join(terms) if terms else "false"


def touchpoints(o: ReportOptions, since: datetime, until: datetime, where: str = "true") -> str:
    """customer_touchpoints in [since, until), stitched, without bots unless asked."""
    bots = "" if o.include_bots else " AND NOT is_bot"
    return (
        f"customer_touchpoints WHERE ts >= {moment(since)} AND ts < {moment(until)}"
        f" AND current_customer_id != ''{bots} AND ({where})"
    )


def scorecard_reach(o: ReportOptions) -> str:
    keys = KEYS[o.by]
    aliases = [f"k{i}" for i in range(len(keys))]
    window_ms = round(o.window_days * 86_400_000)
    return f"""
SELECT {", ".join(aliases)}, count() AS events, uniqExact(customer) AS customers,
       uniqExactIf(customer, converted) AS converted, countIf(has_friction) AS friction_events
FROM (
    SELECT {", ".join(f"b.{a}" for a in aliases)}, b.customer AS customer,
           c.cts > b.ts AND c.cts <= b.ts + toIntervalMillisecond({window_ms}) AS converted,
           b.id IN (SELECT event_id FROM frictions FINAL WHERE NOT retracted) AS has_friction
    FROM (
        SELECT {", ".join(f"{k} AS {a}" for k, a in zip(keys, aliases, strict=True))},
               current_customer_id AS customer, toString(event_id) AS id, ts
        FROM {touchpoints(o, o.start_ts, o.end_ts, "survey_kind = ''")}
    ) AS b
    ASOF LEFT JOIN (
        SELECT current_customer_id AS customer, ts AS cts
        FROM {touchpoints(o, o.start_ts, o.end_ts + timedelta(days=o.window_days), is_conversion(o.conversions))}
    ) AS c ON b.customer = c.customer AND c.cts > b.ts
)
GROUP BY {", ".join(aliases)}
"""


def scorecard_surveys(o: ReportOptions) -> str:
    """Each survey answer with the touchpoint it rates: the customer's most recent non-survey
    touchpoint before it."""
    keys = KEYS[o.by]
    aliases = [f"k{i}" for i in range(len(keys))]
    return f"""
SELECT {", ".join(f"r.{a}" for a in aliases)}, s.kind, count(),
       countIf(s.score >= 9), countIf(s.score <= 6), countIf(s.score >= 4),
       sum(s.score), sum(s.score * s.score)
FROM (
    SELECT current_customer_id AS customer, ts, survey_kind AS kind,
           toFloat64(assumeNotNull(survey_score)) AS score
    FROM {touchpoints(o, o.start_ts, o.end_ts, "survey_kind != '' AND survey_score IS NOT NULL")}
) AS s
ASOF INNER JOIN (
    SELECT {", ".join(f"{k} AS {a}" for k, a in zip(keys, aliases, strict=True))},
           current_customer_id AS customer, ts
    FROM {touchpoints(o, o.start_ts, o.end_ts, "survey_kind = ''")}
) AS r ON s.customer = r.customer AND s.ts > r.ts
GROUP BY {", ".join(f"r.{a}" for a in aliases)}, s.kind
"""


def events(o: ReportOptions, where: str = "true") -> str:
    """Stitched events of the range in journey order: customer, ts, type, touchpoint name,
    channel, stage, is_conversion."""
    return f"""
SELECT current_customer_id, ts, type, {TOUCHPOINT_NAME}, channel, stage,
       {is_conversion(o.conversions)}, survey_kind != ''
FROM {touchpoints(o, o.start_ts, o.end_ts, where)}
ORDER BY current_customer_id, ts, seq
"""


def sessions(o: ReportOptions, since: datetime) -> str:
    """Current sessions starting in [since, end): customer, start, channel."""
    return f"""
SELECT c.customer, s.start, s.channel
FROM (
    SELECT session_id, start, channel, event_ids[1] AS first_event
    FROM sessions FINAL
    WHERE NOT retired AND start >= {moment(since)} AND start < {moment(o.end_ts)}
) AS s
INNER JOIN (
    SELECT toString(event_id) AS first_event, current_customer_id AS customer
    FROM {touchpoints(o, since, o.end_ts)}
) AS c ON s.first_event = c.first_event
ORDER BY c.customer, s.start
"""


def conversions(o: ReportOptions, since: datetime) -> str:
    """Conversions in [since, end): customer, ts, value."""
    return f"""
SELECT current_customer_id, ts, toFloat64(ifNull(value, 0))
FROM {touchpoints(o, since, o.end_ts, is_conversion(o.conversions))}
ORDER BY current_customer_id, ts, seq
"""
