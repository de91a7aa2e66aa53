"""The five reports: SQL from ``_sql`` in, plain rows (dicts) out. Definitions: docs/reports.md."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from tracker.reports import _sql
from tracker.reports.attribution import (
    BOOTSTRAPPED,
    MODELS,
    Path,
    Touch,
    attribute,
    bootstrap,
)
from tracker.reports.options import ReportOptions, Step
from tracker.reports.stats import ces, csat, nps, percentile, wilson

Row = dict[str, Any]


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


# -- scorecard ------------------------------------------------------------------------------------


def scorecard(query: _sql.Query, o: ReportOptions) -> list[Row]:
    """Events, reach, frictions and the survey answers on the touchpoints they rate from the
    daily rollup, less the identity keys that belong to one customer now; the answers stored
    without their touchpoint's place found at query time; conversions per customer."""
    names = _sql.KEY_NAMES[o.by]
    width = len(names)
    surveys: dict[tuple[Any, ...], dict[str, tuple[Any, ...]]] = defaultdict(dict)
    rolled = query(_sql.scorecard_rollup(o))
    for row in rolled:
        # as scorecard_surveys counts: n, promoters, detractors, satisfied, sum, sum of squares
        n = dict(zip(_sql.SURVEY_SUMS, row[width + 3 :], strict=True))
        surveys[tuple(row[:width])] = {
            "nps": (n["nps_n"], n["nps_promoters"], n["nps_detractors"], 0, n["nps_sum"], 0.0),
            "csat": (n["csat_n"], 0, 0, n["csat_satisfied"], n["csat_sum"], 0.0),
            "ces": (n["ces_n"], 0, 0, 0, n["ces_sum"], n["ces_sum_squares"]),
        }
    unplaced = query(_sql.scorecard_unplaced(o))
    if unplaced and unplaced[0][0]:
        rated = query(_sql.scorecard_surveys(o))
        if any(row[width] == _sql.UNRATED for row in rated):
            rated = [row for row in rated if row[width] != _sql.UNRATED]
            rated += query(_sql.scorecard_unrated(o))
        for row in rated:
            key, kind, figures = tuple(row[:width]), row[width], row[width + 1 :]
            if kind in surveys[key]:  # the same touchpoint, rated both ways
                figures = tuple(a + b for a, b in zip(surveys[key][kind], figures, strict=True))
            surveys[key][kind] = figures
    extra = {tuple(row[:width]): row[width] for row in query(_sql.scorecard_merges(o))}
    converted_by: dict[tuple[Any, ...], int] = {}
    if o.conversion:
        converted_by = {
            tuple(row[:width]): row[width] for row in query(_sql.scorecard_conversions(o))
        }
    rows = []
    for row in rolled:
        key = tuple(row[:width])
        events, keys, frictions = row[width : width + 3]
        customers = keys - extra.get(key, 0)
        out: Row = dict(zip(names, key, strict=True))
        out.update(events=events, customers=customers)
        if o.conversion:
            converted = converted_by.get(key, 0)
            interval = wilson(converted, customers)
            out.update(
                converted_customers=converted,
                conversion_rate=_ratio(converted, customers),
                conversion_ci_low=interval[0] if interval else None,
                conversion_ci_high=interval[1] if interval else None,
            )
        else:
            out.update(
                converted_customers=None,
                conversion_rate=None,
                conversion_ci_low=None,
                conversion_ci_high=None,
            )
        out["friction_rate"] = _ratio(frictions, events)
        answers = surveys.get(key, {})
        n, promoters, detractors, _, _, _ = answers.get("nps", (0, 0, 0, 0, 0.0, 0.0))
        score = nps(promoters, detractors, n)
        out.update(
            nps=score.value, nps_n=score.n, nps_ci_low=score.ci_low, nps_ci_high=score.ci_high
        )
        n, _, _, satisfied, _, _ = answers.get("csat", (0, 0, 0, 0, 0.0, 0.0))
        score = csat(satisfied, n)
        out.update(
            csat=score.value, csat_n=score.n, csat_ci_low=score.ci_low, csat_ci_high=score.ci_high
        )
        n, _, _, _, total, squares = answers.get("ces", (0, 0, 0, 0, 0.0, 0.0))
        score = ces(total, squares, n)
        out.update(
            ces=score.value, ces_n=score.n, ces_ci_low=score.ci_low, ces_ci_high=score.ci_high
        )
        rows.append(out)
    rows.sort(key=lambda r: (-r["customers"], -r["events"], *(str(r[k]) for k in names)))
    return rows


# -- funnel ---------------------------------------------------------------------------------------


def _matches(step: Step, kind: str, name: str) -> bool:
    return kind == step.type and (step.name is None or name == step.name)


def _deepest(
    events: Sequence[tuple[datetime, str, str]], steps: Sequence[Step], window: timedelta
) -> list[datetime]:
    """The times of the steps reached, trying each occurrence of the first step as the start
    and keeping the deepest run (the earliest start among equals); each step is a later event."""
    best: list[datetime] = []
    for i, (ts, kind, name) in enumerate(events):
        if not _matches(steps[0], kind, name):
            continue
        reached, at = [ts], i
        for step in steps[1:]:
            found = next(
                (
                    j
                    for j in range(at + 1, len(events))
                    if events[j][0] <= ts + window and _matches(step, events[j][1], events[j][2])
                ),
                None,
            )
            if found is None:
                break
            reached.append(events[found][0])
            at = found
        if len(reached) > len(best):
            best = reached
        if len(best) == len(steps):
            break
    return best


def funnel(query: _sql.Query, o: ReportOptions) -> list[Row]:
    # Only the events some step matches are read; _matches decides in order.
    matching = " OR ".join(
        sorted(
            {
                f"type = {_sql.quote(step.type)}"
                if step.name is None
                else f"(type = {_sql.quote(step.type)}"
                f" AND {_sql.TOUCHPOINT_NAME} = {_sql.quote(step.name)})"
                for step in o.steps
            }
        )
    )
    by_customer: dict[str, list[tuple[datetime, str, str]]] = defaultdict(list)
    for customer, ts, kind, name, *_ in query(_sql.events(o, matching)):
        by_customer[customer].append((ts, kind, name))
    window = timedelta(days=o.window_days)
    reached = [0] * len(o.steps)
    gaps: list[list[float]] = [[] for _ in o.steps]
    for events in by_customer.values():
        times = _deepest(events, o.steps, window)
        for k, ts in enumerate(times):
            reached[k] += 1
            if k:
                gaps[k].append((ts - times[k - 1]).total_seconds())
    return [
        {
            "step": str(step),
            "customers": reached[k],
            "rate_from_previous": _ratio(reached[k], reached[k - 1]) if k else None,
            "rate_from_first": _ratio(reached[k], reached[0]),
            "median_seconds_from_previous": statistics.median(gaps[k]) if gaps[k] else None,
        }
        for k, step in enumerate(o.steps)
    ]


# -- paths (shared by attribution) ---------------------------------------------------------------


def build_paths(
    touches: Iterable[tuple[str, datetime, str]],
    conversions: Iterable[tuple[str, datetime, float]],
    start: datetime,
    end: datetime,
    lookback: timedelta | None,
) -> list[Path]:
    """Converting paths for the conversions in [start, end), and one non-converting path for
    each customer without one there who has touches in the lookback window before ``end``.

    A conversion's path: the customer's touches at or before it, within the lookback, after the
    customer's previous conversion (earlier conversions, also before ``start``, only delimit).
    A conversion with no touch in its path is not counted: there is nothing to credit."""
    touches_of: dict[str, list[Touch]] = defaultdict(list)
    for customer, ts, label in touches:
        touches_of[customer].append(Touch(label, ts))
    conversions_of: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for customer, ts, value in conversions:
        conversions_of[customer].append((ts, value))
    paths = []
    for customer in sorted(touches_of.keys() | conversions_of.keys()):
        own = sorted(touches_of.get(customer, []), key=lambda t: t.ts)
        previous: datetime | None = None
        converted = False
        for ts, value in sorted(conversions_of.get(customer, [])):
            if start <= ts < end:
                converted = True
                path = tuple(
                    t
                    for t in own
                    if t.ts <= ts
                    and (lookback is None or t.ts >= ts - lookback)
                    and (previous is None or t.ts > previous)
                )
                if path:
                    paths.append(Path(customer, path, True, ts, value))
            previous = ts
        if not converted:
            since = start if lookback is None else max(start, end - lookback)
            path = tuple(
                t for t in own if since <= t.ts < end and (previous is None or t.ts > previous)
            )
            if path:
                paths.append(Path(customer, path, False))
    return paths


def _channel_paths(query: _sql.Query, o: ReportOptions, lookback: timedelta | None) -> list[Path]:
    since = o.start_ts - lookback if lookback is not None else o.start_ts
    sessions = ((c, ts, channel) for c, ts, channel in query(_sql.sessions(o, since)))
    conversions = ((c, ts, value) for c, ts, value in query(_sql.conversions(o, since)))
    return build_paths(sessions, conversions, o.start_ts, o.end_ts, lookback)


def _touchpoint_paths(query: _sql.Query, o: ReportOptions) -> list[Path]:
    touches, conversions = [], []
    for customer, ts, kind, name, channel, _, converts, survey in query(_sql.events(o)):
        if converts:
            conversions.append((customer, ts, 0.0))
        elif not survey:
            touches.append((customer, ts, f"{channel}/{kind}/{name}"))
    return build_paths(touches, conversions, o.start_ts, o.end_ts, None)


def paths(query: _sql.Query, o: ReportOptions) -> list[Row]:
    found = _channel_paths(query, o, None) if o.by == "channel" else _touchpoint_paths(query, o)
    if o.ending == "conversion":
        found = [p for p in found if p.converted]
    elif o.ending == "no-conversion":
        found = [p for p in found if not p.converted]
    counts: Counter[tuple[str, ...]] = Counter()
    converted: Counter[tuple[str, ...]] = Counter()
    for path in found:
        sequence = tuple(t.channel for t in path.touches)
        counts[sequence] += 1
        converted[sequence] += path.converted
    total = len(found)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: o.top]
    return [
        {
            "path": " > ".join(sequence),
            "touches": len(sequence),
            "paths": count,
            "share": count / total,
            "conversions": converted[sequence],
            "conversion_share": converted[sequence] / count,
        }
        for sequence, count in ranked
    ]


# -- stages ---------------------------------------------------------------------------------------

_STAGE_ORDER = ("awareness", "consideration", "purchase", "post_purchase", "support")


def _stage_rank(stage: str) -> tuple[int, str]:
    return (_STAGE_ORDER.index(stage) if stage in _STAGE_ORDER else len(_STAGE_ORDER), stage)


def stages(query: _sql.Query, o: ReportOptions) -> list[Row]:
    reached: dict[str, set[str]] = defaultdict(set)
    visits: Counter[str] = Counter()
    dwell: dict[str, list[float]] = defaultdict(list)
    transitions: Counter[tuple[str, str]] = Counter()
    current: tuple[str, str, datetime] | None = None  # customer, stage, entered
    for customer, ts, _, _, _, stage, _, _ in query(_sql.events(o, "stage != ''")):
        reached[stage].add(customer)
        if current is not None and current[0] == customer:
            if current[1] == stage:
                continue
            dwell[current[1]].append((ts - current[2]).total_seconds())
            transitions[(current[1], stage)] += 1
        visits[stage] += 1
        current = (customer, stage, ts)
    rows: list[Row] = []
    for stage in sorted(reached, key=_stage_rank):
        spent = sorted(dwell[stage])
        rows.append(
            {
                "row": "stage",
                "stage": stage,
                "to_stage": None,
                "customers": len(reached[stage]),
                "visits": visits[stage],
                "median_dwell_seconds": percentile(spent, 0.5),
                "p90_dwell_seconds": percentile(spent, 0.9),
                "dwell_n": len(spent),
                "transitions": None,
            }
        )
    for (here, there), count in sorted(
        transitions.items(), key=lambda i: (_stage_rank(i[0][0]), -i[1], _stage_rank(i[0][1]))
    ):
        rows.append(
            {
                "row": "transition",
                "stage": here,
                "to_stage": there,
                "customers": None,
                "visits": None,
                "median_dwell_seconds": None,
                "p90_dwell_seconds": None,
                "dwell_n": None,
                "transitions": count,
            }
        )
    return rows


# -- attribution ----------------------------------------------------------------------------------


def attribution(query: _sql.Query, o: ReportOptions) -> list[Row]:
    found = _channel_paths(query, o, timedelta(days=o.lookback_days))
    models = MODELS if o.model == "all" else (o.model,)
    rows: list[Row] = []
    for model in models:
        credits = attribute(model, found, o.half_life_days)
        intervals: dict[str, tuple[float, float]] = {}
        if model in BOOTSTRAPPED:
            intervals = bootstrap(
                partial(attribute, model, half_life_days=o.half_life_days),
                found,
                o.bootstrap_rounds,
                o.seed,
            )
        for channel, credit in sorted(credits.items(), key=lambda i: (-i[1].conversions, i[0])):
            low, high = intervals.get(channel, (None, None))
            rows.append(
                {
                    "model": model,
                    "channel": channel,
                    "conversions": credit.conversions,
                    "value": credit.value,
                    "conversions_ci_low": low,
                    "conversions_ci_high": high,
                }
            )
    return rows


RUNNERS: dict[str, Callable[[_sql.Query, ReportOptions], list[Row]]] = {
    "scorecard": scorecard,
    "funnel": funnel,
    "paths": paths,
    "stages": stages,
    "attribution": attribution,
}
