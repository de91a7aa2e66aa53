"""Answers for analysts: scorecard, funnel, paths, stages and attribution, as plain rows.

Each report reads the stitched tables through ``tracker.store`` and returns a list of dicts, the
same rows ``tracker report <name>`` prints and ``GET /api/reports/<name>`` serves::

    from datetime import date
    from tracker.reports import ReportOptions, run_report
    from tracker.store import ClickHouseStore, QueryLimits

    store = ClickHouseStore("chdb:///var/lib/tracker/clickhouse", "tracker")
    rows = run_report(store, "scorecard", {"from": "2026-11-01", "to": "2026-11-30", "by": "channel"})

Definitions: docs/reports.md. The maths lives in ``stats`` and ``attribution``, without I/O.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from tracker.errors import QueryRefused
from tracker.reports._reports import RUNNERS, Row, build_paths
from tracker.reports._sql import Query
from tracker.reports.options import (
    REPORTS,
    ReportInvalid,
    ReportOptions,
    Step,
    parse_options,
)
from tracker.store import ClickHouseStore, QueryLimits

__all__ = [
    "REPORTS",
    "Query",
    "ReportInvalid",
    "ReportOptions",
    "Row",
    "Step",
    "build_paths",
    "parse_options",
    "report",
    "run_report",
]


def _reader(source: ClickHouseStore | Query, limits: QueryLimits | None) -> Query:
    if not isinstance(source, ClickHouseStore):
        return source
    store = source
    if limits is None:

        def read(sql: str) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = store.run_sync(store.query_sync, sql).rows
            return rows

        return read
    # The whole report gets the console's time; each read the console's memory. A report's
    # reads return what its maths needs, so the SQL box's row limit is not theirs.
    deadline = time.monotonic() + limits.max_seconds
    too_long = (
        f"the report ran longer than the console allows ({limits.max_seconds:g} s, "
        "TRACKER_QUERY_MAX_SECONDS); narrow the range (from, to)"
    )

    def read_within(sql: str) -> list[tuple[Any, ...]]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise QueryRefused(too_long)
        within = replace(limits, max_seconds=left, max_rows=0)
        try:
            result = store.run_sync(store.query_sync, sql, None, True, within)
        except QueryRefused as exc:
            if "TRACKER_QUERY_MAX_SECONDS" in str(exc):
                raise QueryRefused(too_long) from exc
            raise
        rows: list[tuple[Any, ...]] = result.rows
        return rows

    return read_within


def report(
    source: ClickHouseStore | Query,
    name: str,
    options: ReportOptions,
    limits: QueryLimits | None = None,
) -> list[Row]:
    """Run report ``name`` with ``options`` on a store (its own thread) or a query function.

    With ``limits`` (the console's), the reads are read-only, the whole report gets
    ``limits.max_seconds`` and each read ``limits.max_memory_bytes``; passing one raises
    ``tracker.errors.QueryRefused`` with the reason."""
    if name not in RUNNERS:
        raise ReportInvalid(f"no report {name!r}; reports: {', '.join(REPORTS)}")
    read = _reader(source, limits)

    def utc_rows(sql: str) -> list[tuple[Any, ...]]:
        # The driver returns DateTime64(3, 'UTC') values without a zone; they are UTC.
        return [
            tuple(
                v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v
                for v in row
            )
            for row in read(sql)
        ]

    return RUNNERS[name](utc_rows, options)


def run_report(
    source: ClickHouseStore | Query,
    name: str,
    query: Mapping[str, str],
    conversion_rules: Sequence[Mapping[str, Any]] = (),
    limits: QueryLimits | None = None,
) -> list[Row]:
    """Run report ``name`` with options given as strings (the endpoint's query string, the
    CLI's flags); ``conversion_rules`` as TRACKER_JOURNEY_CONVERSIONS (the default without);
    ``limits`` as ``report`` takes them."""
    options = parse_options(name, query).with_conversions(conversion_rules)
    return report(source, name, options, limits)
