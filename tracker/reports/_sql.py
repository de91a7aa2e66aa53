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


ROLLUP_KEYS = {
    "touchpoint": ("channel", "type", "touchpoint_name"),
    "channel": ("channel",),
    "stage": ("stage",),
}
SURVEY_TYPE = "survey_response"
SURVEY_SUMS = (
    "nps_n",
    "nps_promoters",
    "nps_detractors",
    "nps_sum",
    "csat_n",
    "csat_satisfied",
    "csat_sum",
    "ces_n",
    "ces_sum",
    "ces_sum_squares",
)
UNRATED = "(unrated)"
"""The kind under which ``scorecard_surveys`` counts the answers it found no touchpoint for, and
the rollup's type for the answers stored without their touchpoint's place."""


def _aliased(keys: Sequence[str]) -> tuple[list[str], str]:
    aliases = [f"k{i}" for i in range(len(keys))]
    return aliases, ", ".join(f"{k} AS {a}" for k, a in zip(keys, aliases, strict=True))


def _days(o: ReportOptions) -> str:
    return (
        f"day >= toDate({quote(o.start.isoformat())}) AND day <= toDate({quote(o.end.isoformat())})"
    )


def scorecard_rollup(o: ReportOptions) -> str:
    """Per row key, from the daily rollup (0016): events, identity keys reached, frictions, and
    the survey sums of the answers that rate its touchpoints (n, promoters, detractors,
    satisfied, sum and sum of squares, for each of NPS, CSAT and CES)."""
    aliases, selected = _aliased(ROLLUP_KEYS[o.by])
    bots = "" if o.include_bots else " AND NOT is_bot"
    sums = ", ".join(f"sumMerge({c}) AS {c}" for c in SURVEY_SUMS)
    return f"""
SELECT {", ".join(aliases)}, sumMerge(events) + uniqMerge(versioned_events) AS events,
       toUInt64(uniqMerge(customers)) AS keys, sumMerge(frictions) AS frictions,
       {sums}
FROM (
    SELECT {selected}, events, versioned_events, customers, frictions, {", ".join(SURVEY_SUMS)}
    FROM touchpoint_daily
    WHERE {_days(o)}{bots} AND type NOT IN ({quote(SURVEY_TYPE)}, {quote(UNRATED)})
)
GROUP BY {", ".join(aliases)}
HAVING events > 0
"""


def scorecard_unplaced(o: ReportOptions) -> str:
    """How many answers in the range the rollup holds without the touchpoint they rate (stored
    before 0016, or rating one their journey did not hold): the scorecard looks for those at
    query time (``scorecard_surveys``)."""
    bots = "" if o.include_bots else " AND NOT is_bot"
    return f"""
SELECT sumMerge(nps_n) + sumMerge(csat_n) + sumMerge(ces_n)
FROM touchpoint_daily WHERE {_days(o)}{bots} AND type = {quote(UNRATED)}
"""


def _multi_key_identities() -> str:
    """Identifiers of the customers that more than one identifier resolves to now, in one read
    of ``identities``."""
    return """
    SELECT identifier, customer_id FROM (
        SELECT identifier, customer_id, count() OVER (PARTITION BY customer_id) AS keys
        FROM identities FINAL)
    WHERE keys > 1
"""


def _by_key(o: ReportOptions, since: datetime, until: datetime, where: str = "true") -> str:
    """touchpoints_by_customer (every version) in [since, until), without bots unless asked."""
    bots = "" if o.include_bots else " AND NOT is_bot"
    return (
        f"touchpoints_by_customer WHERE ts >= {moment(since)} AND ts < {moment(until)}"
        f"{bots} AND ({where})"
    )


def scorecard_merges(o: ReportOptions) -> str:
    """Per row key, how many more identity keys than customers the rollup counted: the
    customers reached through two identity keys or more, re-attributed as they stand now."""
    aliases, selected = _aliased(KEYS[o.by])
    # The join alone keeps the multi-key identities: filtering the scan with IN as well read
    # identities twice and cost more than it saved (bench/analytics.py).
    return f"""
SELECT {", ".join(f"t.{a}" for a in aliases)},
       uniqExact(t.identity_key) - uniqExact(m.customer_id) AS extra_keys
FROM (
    SELECT {selected}, identity_key
    FROM {_by_key(o, o.start_ts, o.end_ts, f"type != {quote(SURVEY_TYPE)}")}
) AS t
INNER JOIN ({_multi_key_identities()}) AS m ON m.identifier = t.identity_key
GROUP BY {", ".join(f"t.{a}" for a in aliases)}
HAVING extra_keys > 0
"""


def scorecard_conversions(o: ReportOptions) -> str:
    """Per row key, the customers exposed at τ who convert in (τ, τ + window]. Only the
    customers with a conversion in the range (or the window after it) are read."""
    aliases, selected = _aliased(KEYS[o.by])
    window_ms = round(o.window_days * 86_400_000)
    until = o.end_ts + timedelta(days=o.window_days)
    converting = (
        f"SELECT DISTINCT current_customer_id FROM "
        f"{touchpoints(o, o.start_ts, until, is_conversion(o.conversions))}"
    )
    return f"""
SELECT {", ".join(f"b.{a}" for a in aliases)}, uniqExact(b.customer) AS converted
FROM (
    SELECT {selected}, current_customer_id AS customer, ts
    FROM {touchpoints(o, o.start_ts, o.end_ts, f"type != {quote(SURVEY_TYPE)}")}
      AND current_customer_id IN ({converting})
) AS b
ASOF INNER JOIN (
    SELECT current_customer_id AS customer, ts AS cts
    FROM {touchpoints(o, o.start_ts, until, is_conversion(o.conversions))}
) AS c ON b.customer = c.customer AND c.cts > b.ts
WHERE c.cts <= b.ts + toIntervalMillisecond({window_ms})
GROUP BY {", ".join(f"b.{a}" for a in aliases)}
"""


_SCORES = """count(), countIf(score >= 9), countIf(score <= 6), countIf(score >= 4),
       sum(score), sum(score * score)"""


def _answers(o: ReportOptions) -> str:
    return (
        "SELECT toString(event_id) AS answer, survey_touchpoint_id AS rated, identity_key,"
        " customer_id, ts, survey_kind AS kind, toFloat64(assumeNotNull(survey_score)) AS score"
        " FROM "
        + _by_key(
            o,
            o.start_ts,
            o.end_ts,
            "survey_kind != '' AND survey_score IS NOT NULL AND customer_id != ''",
        )
        + f" AND event_id NOT IN ({_placed(o)}) LIMIT 1 BY answer"
    )


def _placed(o: ReportOptions) -> str:
    """The answers in the range stored with the place of the touchpoint they rate: the rollup
    holds their scores there."""
    return (
        f"SELECT event_id FROM touchpoints WHERE ts >= {moment(o.start_ts)}"
        f" AND ts < {moment(o.end_ts)} AND survey_kind != '' AND rated_type != ''"
    )


def scorecard_surveys(o: ReportOptions) -> str:
    """The survey answers in the range stored without their touchpoint's place (so not in the
    rollup's sums, see ``scorecard_unplaced``) on the touchpoints they rate, as stored with
    them (survey_touchpoint_id: named by the client, else the customer's most recent
    non-survey touchpoint before it, as the journey agent found it); the answers stored without
    one, or naming a touchpoint not stored, are counted under the kind ``UNRATED``."""
    aliases, selected = _aliased(KEYS[o.by])
    return f"""
SELECT {", ".join(aliases)}, if(found, kind, {quote(UNRATED)}) AS rated_kind, {_SCORES}
FROM (
    SELECT {", ".join(f"r.{a}" for a in aliases)}, r.rated != '' AS found, s.kind AS kind,
           s.score AS score
    FROM ({_answers(o)}) AS s
    LEFT JOIN (
        SELECT toString(event_id) AS rated, {selected} FROM touchpoints
        WHERE event_id IN (SELECT toUUIDOrZero(rated) FROM ({_answers(o)}) WHERE rated != '')
        LIMIT 1 BY rated
    ) AS r ON r.rated = s.rated
)
GROUP BY {", ".join(aliases)}, rated_kind
"""


def scorecard_unrated(o: ReportOptions) -> str:
    """Answers stored without the touchpoint they rate (before migration 0007): on the
    customer's latest non-survey touchpoint before the answer, read by the identity keys of
    those customers only."""
    aliases, selected = _aliased(KEYS[o.by])
    unrated = f"""SELECT * FROM ({_answers(o)}) AS a
        WHERE a.rated = '' OR toUUIDOrZero(a.rated) NOT IN (
            SELECT event_id FROM touchpoints
            WHERE event_id IN (SELECT toUUIDOrZero(rated) FROM ({_answers(o)})))"""
    keys_of = (
        "SELECT identifier FROM identities FINAL WHERE customer_id IN ("
        f"SELECT customer_id FROM identities FINAL WHERE identifier IN "
        f"(SELECT identity_key FROM ({unrated})))"
    )
    current = (
        "SELECT identifier, customer_id FROM identities FINAL "
        f"WHERE identifier IN ({keys_of}) OR identifier IN (SELECT identity_key FROM ({unrated}))"
    )
    return f"""
SELECT {", ".join(aliases)}, kind, {_SCORES}
FROM (
    SELECT {", ".join(f"r.{a}" for a in aliases)}, s.kind AS kind, s.score AS score
    FROM (
        SELECT a.kind AS kind, a.score AS score, a.ts AS ts,
               if(i.customer_id != '', i.customer_id, a.customer_id) AS customer
        FROM ({unrated}) AS a
        LEFT JOIN ({current}) AS i ON i.identifier = a.identity_key
    ) AS s
    ASOF INNER JOIN (
        SELECT {", ".join(f"t.{a}" for a in aliases)}, t.ts AS ts,
               if(i.customer_id != '', i.customer_id, t.customer_id) AS customer
        FROM (
            SELECT {selected}, ts, identity_key, customer_id
            FROM {_by_key(o, o.start_ts, o.end_ts, f"survey_kind = '' AND type != {quote(SURVEY_TYPE)}")}
              AND (identity_key IN ({keys_of})
                   OR identity_key IN (SELECT identity_key FROM ({unrated})))
        ) AS t
        LEFT JOIN ({current}) AS i ON i.identifier = t.identity_key
    ) AS r ON s.customer = r.customer AND s.ts > r.ts
)
GROUP BY {", ".join(aliases)}, kind
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
