"""``tracker report <name>``: the reports of tracker.reports as a table, CSV or JSON lines.

The rows come from the running instance's console (GET /api/reports/<name>) for embedded chDB,
as ``tracker query`` reads; the same rows the Python API returns.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from tracker.cli.client import fetch_report
from tracker.errors import TrackerError
from tracker.settings import Settings

__all__ = ["add_report_commands", "render"]

_OUTCOMES = ("conversion", "no-conversion")


def add_report_commands(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="answers for analysts: scorecard, funnel, paths, stages, attribution",
        description="Reports on the stitched journeys (docs/reports.md).",
    )
    names = report.add_subparsers(dest="report", required=True, metavar="REPORT")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = names.add_parser(name, help=help_text)
        parser.add_argument("--from", dest="start", metavar="DATE", help="first UTC day")
        parser.add_argument("--to", dest="end", metavar="DATE", help="last UTC day, included")
        parser.add_argument("--include-bots", action="store_true", help="count bot traffic too")
        parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
        parser.set_defaults(run=_report)
        return parser

    scorecard = add("scorecard", "per touchpoint, channel or stage: reach, conversion, scores")
    scorecard.add_argument("--by", choices=["touchpoint", "channel", "stage"])
    scorecard.add_argument("--window-days", type=float)
    scorecard.add_argument(
        "--no-conversion",
        dest="conversion",
        action="store_false",
        help="leave the conversion columns out and answer from the rollups alone (faster)",
    )

    funnel = add("funnel", "customers reaching each step in order")
    funnel.add_argument("--steps", required=True, help="type or type:name, comma-separated")
    funnel.add_argument("--window-days", type=float)

    paths = add("paths", "the most common touch sequences")
    paths.add_argument(
        "--outcome",
        choices=_OUTCOMES,
        help="only the paths that end in a conversion, or only those that do not",
    )
    paths.add_argument("--top", type=int)
    paths.add_argument("--by", choices=["channel", "touchpoint"])

    add("stages", "customers per stage, dwell times and transitions")

    attribution = add("attribution", "credit for conversions per channel, by model")
    attribution.add_argument(
        "--model",
        choices=[
            "first_touch",
            "last_touch",
            "last_non_direct",
            "linear",
            "position_based",
            "time_decay",
            "markov",
            "shapley",
            "all",
        ],
    )
    attribution.add_argument("--by", choices=["channel"])
    attribution.add_argument("--lookback-days", type=float)
    attribution.add_argument("--half-life-days", type=float)
    attribution.add_argument("--seed", type=int)


def _options(args: argparse.Namespace) -> dict[str, str]:
    """The flags as the endpoint's query string."""
    options: dict[str, str] = {}
    if args.end in _OUTCOMES:
        raise TrackerError(
            f"--to is the range's last day; for the paths that end so, use --outcome {args.end}"
        )
    if getattr(args, "outcome", None):
        options["ending"] = args.outcome
    if args.start:
        options["from"] = args.start
    if args.end:
        options["to"] = args.end
    if args.include_bots:
        options["include_bots"] = "true"
    for flag in ("by", "window_days", "steps", "top", "model", "lookback_days", "half_life_days"):
        value = getattr(args, flag, None)
        if value is not None:
            options[flag] = str(value)
    if getattr(args, "conversion", True) is False:
        options["conversion"] = "false"
    if getattr(args, "seed", None) is not None:
        options["seed"] = str(args.seed)
    return options


def _report(settings: Settings, args: argparse.Namespace) -> int:
    rows = fetch_report(settings, args.report, _options(args))
    sys.stdout.write(render(rows, args.format))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def render(rows: Sequence[dict[str, Any]], format_name: str) -> str:
    """Rows as an aligned table, CSV with a header, or one JSON object per line."""
    if format_name == "json":
        return "".join(orjson.dumps(row).decode() + "\n" for row in rows)
    if not rows:
        return "" if format_name == "csv" else "(no rows)\n"
    columns = list(rows[0])
    if format_name == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[c] is None else row[c] for c in columns])
        return out.getvalue()
    cells = [columns] + [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        + "\n"
        for line in cells
    )
