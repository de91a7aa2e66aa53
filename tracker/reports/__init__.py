"""Answers for analysts: scorecard, funnel, paths, stages and attribution, as plain rows.

Each report reads the stitched tables through ``tracker.store`` and returns a list of dicts, the
same rows ``tracker report <name>`` prints and ``GET /api/reports/<name>`` serves::

    from datetime import date
    from tracker.reports import ReportOptions, run_report
    from tracker.store import ClickHouseStore

    store = ClickHouseStore("chdb:///var/lib/tracker/clickhouse", "tracker")
    rows = run_report(store, "scorecard", {"from": "2026-11-01", "to": "2026-11-30", "by": "channel"})

Definitions: docs/reports.md. The maths lives in ``stats`` and ``attribution``, without I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from tracker.reports._reports import RUNNERS, Row, build_paths
from tracker.reports._sql import Query
from tracker.reports.options import (
    REPORTS,
    ReportInvalid,
    ReportOptions,
    Step,
    parse_options,
)
from tracker.store import ClickHouseStore

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


def _reader(source: ClickHouseStore | Query) -> Query:
    if isinstance(source, ClickHouseStore):
        store = source

        def read(sql: str) -> list[tuple[Any, ...]]:
            result = store.run_sync(store.query_sync, sql)
            rows: list[tuple[Any, ...]] = result.rows
            return rows

        return read
    return source


def report(source: ClickHouseStore | Query, name: str, options: ReportOptions) -> list[Row]:
    """Run report ``name`` with ``options`` on a store (its own thread) or a query function."""
    if name not in RUNNERS:
        raise ReportInvalid(f"no report {name!r}; reports: {', '.join(REPORTS)}")
    read = _reader(source)

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
) -> list[Row]:
    """Run report ``name`` with options given as strings (the endpoint's query string, the
    CLI's flags); ``conversion_rules`` as TRACKER_JOURNEY_CONVERSIONS (the default without)."""
    options = parse_options(name, query).with_conversions(conversion_rules)
    return report(source, name, options)
