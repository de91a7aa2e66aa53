"""Report options as the CLI and the endpoint give them, and how rows are printed."""

from __future__ import annotations

from datetime import date

import orjson
import pytest

from tracker.cli import _parser
from tracker.cli.report import _options, render
from tracker.errors import TrackerError
from tracker.reports import ReportInvalid, Step, parse_options


def test_a_range_defaults_to_the_last_thirty_days_and_dates_are_checked() -> None:
    options = parse_options("stages", {}, today=date(2026, 11, 30))
    assert (options.start, options.end, options.include_bots) == (
        date(2026, 11, 1),
        date(2026, 11, 30),
        False,
    )
    with pytest.raises(ReportInvalid, match="from must be a date such as 2026-11-20"):
        parse_options("stages", {"from": "yesterday"})
    with pytest.raises(ReportInvalid, match="must not be after"):
        parse_options("stages", {"from": "2026-11-30", "to": "2026-11-01"})


def test_options_a_report_does_not_take_are_refused_with_the_ones_it_takes() -> None:
    with pytest.raises(ReportInvalid, match="stages takes no option steps; it takes"):
        parse_options("stages", {"steps": "a,b"})
    with pytest.raises(ReportInvalid, match="no report 'revenue'"):
        parse_options("revenue", {})
    with pytest.raises(ReportInvalid, match="scorecard by must be one of touchpoint, channel"):
        parse_options("scorecard", {"by": "campaign"})
    with pytest.raises(ReportInvalid, match="a funnel needs at least two steps"):
        parse_options("funnel", {"steps": "purchase"})
    with pytest.raises(ReportInvalid, match="model must be one of"):
        parse_options("attribution", {"model": "u_shaped"})


def test_funnel_steps_are_types_or_type_and_name() -> None:
    options = parse_options("funnel", {"steps": "page_view:/pricing, form_submit,purchase"})
    assert options.steps == (Step("page_view", "/pricing"), Step("form_submit"), Step("purchase"))
    assert [str(s) for s in options.steps] == ["page_view:/pricing", "form_submit", "purchase"]


def test_the_cli_sends_its_flags_as_the_endpoints_query_string() -> None:
    args = _parser().parse_args(
        [
            "report",
            "paths",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-30",
            "--outcome",
            "conversion",
            "--top",
            "5",
            "--include-bots",
        ]
    )
    assert _options(args) == {
        "from": "2026-11-01",
        "to": "2026-11-30",
        "ending": "conversion",
        "include_bots": "true",
        "top": "5",
    }
    parsed_paths = parse_options("paths", _options(args))
    assert (parsed_paths.end.isoformat(), parsed_paths.ending) == ("2026-11-30", "conversion")
    args = _parser().parse_args(
        ["report", "attribution", "--model", "markov", "--lookback-days", "14", "--seed", "3"]
    )
    assert _options(args) == {"model": "markov", "lookback_days": "14.0", "seed": "3"}
    parsed = parse_options("attribution", _options(args))
    assert (parsed.model, parsed.lookback_days, parsed.seed) == ("markov", 14.0, 3)


def test_rows_print_as_a_table_csv_or_json_lines() -> None:
    rows = [
        {"channel": "email", "customers": 12, "conversion_rate": 0.25, "nps": None},
        {"channel": "paid_search", "customers": 3, "conversion_rate": 1 / 3, "nps": 40.0},
    ]
    assert render(rows, "table").splitlines() == [
        "channel      customers  conversion_rate  nps",
        "email        12         0.25             -",
        "paid_search  3          0.3333           40",
    ]
    assert render(rows, "csv").splitlines() == [
        "channel,customers,conversion_rate,nps",
        "email,12,0.25,",
        "paid_search,3,0.3333333333333333,40.0",
    ]
    assert [orjson.loads(line) for line in render(rows, "json").splitlines()] == rows
    assert render([], "table") == "(no rows)\n"


def test_paths_take_dates_with_to_and_the_outcome_with_outcome() -> None:
    """--to is the range's last day for every report; the old ``paths --to conversion`` is
    refused with the option to use instead."""
    args = _parser().parse_args(["report", "paths", "--to", "conversion"])
    with pytest.raises(TrackerError, match="use --outcome conversion"):
        _options(args)
    args = _parser().parse_args(["report", "paths", "--outcome", "no-conversion"])
    assert parse_options("paths", _options(args)).ending == "no-conversion"
    assert parse_options("paths", {"outcome": "conversion"}).ending == "conversion"
    with pytest.raises(ReportInvalid, match="paths outcome must be conversion or no-conversion"):
        parse_options("paths", {"outcome": "2026-11-30"})


def test_the_scorecard_can_leave_conversions_out() -> None:
    assert parse_options("scorecard", {}).conversion is True
    args = _parser().parse_args(["report", "scorecard", "--no-conversion"])
    assert _options(args) == {"conversion": "false"}
    assert parse_options("scorecard", {"conversion": "false"}).conversion is False
    with pytest.raises(ReportInvalid, match="conversion must be true or false"):
        parse_options("scorecard", {"conversion": "maybe"})
