"""Answers for analysts at scale: 10 million touchpoints, the reports timed against a full scan.

    python bench/analytics.py [--rows 10000000] [--bootstrap-rounds 10]
    python bench/analytics.py --data DIR --only journey,scorecard   # load once, time again

bench/README.md ("Reports on 10 million touchpoints") explains it. In short:

- **Load.** A fresh embedded ClickHouse (chDB) in a temporary folder, migrated by the store
  (``ClickHouseStore.migrate_sync``). The touchpoints go in with ``INSERT ... SELECT`` from
  ``numbers()``, a million rows a statement, so the materialized views (the table ordered by
  identity key, the daily rollups) fill as they do when the worker writes. Ten events a customer
  in three sessions over 30 days; every tenth customer signs in half-way (a second identity key,
  stitched to a customer of its own first, then merged: re-attribution at query time); one in
  five buys, one in twenty answers a survey naming the touchpoint it rates, one event in a hundred
  is a bot's and one page view in fifty has a friction. Identities, sessions, frictions and
  journeys rows match them.
- **Baseline.** A plain full scan of ``touchpoints``: every column of every row
  (``SELECT count() FROM touchpoints WHERE NOT ignore(*)``).
- **Timed, through the product's own code:** a journey lookup (``tracker journey``'s
  ``find_journey``, on the console's read path), the scorecard (``tracker.reports``), a 5-step
  funnel, paths, and attribution for each model. Each is the best of ``--repeats`` runs.
- **Bars:** the journey lookup at most 1/100 of the scan; the scorecard at most 1/20. The others
  are printed for information.

Figures go to stdout and to bench/results/analytics.json. The exit code is non-zero when
something could not be measured, never for a missed bar.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tracker.cli.journey import find_journey  # noqa: E402
from tracker.reports import _sql, parse_options, run_report  # noqa: E402
from tracker.reports.attribution import MODELS  # noqa: E402
from tracker.settings import Settings  # noqa: E402
from tracker.store import ClickHouseStore, QueryLimits  # noqa: E402

log = logging.getLogger("bench.analytics")

RESULTS = BENCH_DIR / "results" / "analytics.json"
ROWS = 10_000_000
CHUNK = 1_000_000
EVENTS_PER_CUSTOMER = 10
DAYS = 30
START = date(2026, 10, 1)
FUNNEL = "page_view:/landing,page_view:/pricing,page_view:/signup,page_view:/checkout,purchase"

# Ten events a customer (c = n / 10, k = n % 10) in three sessions (k / 4), days apart.
_CUSTOMER = "intDiv(number, 10)"
_K = "number % 10"
_SESSION = f"intDiv({_K}, 4)"
_SIGNED_IN = f"({_CUSTOMER} % 10 = 0 AND {_K} >= 5)"
_BUYS = f"({_CUSTOMER} % 5 = 0 AND {_K} = 9)"
_SURVEY = f"({_CUSTOMER} % 20 = 1 AND {_K} = 8)"


def _uuid(prefix: str, number: str) -> str:
    return f"toUUID(concat('{prefix}', leftPad(toString({number}), 12, '0')))"


def _event_id(number: str) -> str:
    return _uuid("00000000-0000-4000-8000-", number)


def _customer(number: str) -> str:
    return f"toString({_uuid('00000000-0000-5000-8000-', number)})"


def _signed_in_customer(number: str) -> str:
    """The customer a signed-in visitor's user id was on its own, before the merge."""
    return f"toString({_uuid('00000000-0000-5000-9000-', number)})"


def _ts(customer: str, session: str, k: str) -> str:
    start = f"toDateTime64('{START.isoformat()} 00:00:00', 3, 'UTC')"
    offset = (
        f"(cityHash64({customer}) % {(DAYS - 6) * 86400})"
        f" + {session} * 2 * 86400 + ({k} % 4) * 180 + cityHash64({customer}, {session}) % 3600"
    )
    return f"{start} + toIntervalSecond({offset})"


_CHANNELS = "['direct', 'organic', 'paid', 'email', 'social', 'referral']"
_PAGES = "['/landing', '/pricing', '/features', '/signup', '/docs', '/checkout', '/blog', '/']"


def touchpoints_insert(first: int, count: int) -> str:
    kind = f"multiIf({_BUYS}, 'purchase', {_SURVEY}, 'survey_response', 'page_view')"
    page = f"{_PAGES}[({_K} + cityHash64({_CUSTOMER}) % 3) % 8 + 1]"
    stage = (
        f"multiIf({_BUYS}, 'purchase', {_K} < 3, 'awareness', {_K} < 7, 'consideration',"
        " 'purchase')"
    )
    # An answer rates the page view before it (k - 1), whose place the journey agent writes on it.
    rated_k = f"({_K} - 1)"
    rated_channel = f"{_CHANNELS}[cityHash64({_CUSTOMER}, intDiv({rated_k}, 4)) % 6 + 1]"
    rated_page = f"{_PAGES}[({rated_k} + cityHash64({_CUSTOMER}) % 3) % 8 + 1]"
    rated_stage = f"multiIf({rated_k} < 3, 'awareness', {rated_k} < 7, 'consideration', 'purchase')"
    score = f"multiIf({_CUSTOMER} % 3 = 0, {_CUSTOMER} % 11, {_CUSTOMER} % 3 = 1, {_CUSTOMER} % 5 + 1, {_CUSTOMER} % 7 + 1)"
    return f"""
INSERT INTO touchpoints (event_id, version, schema, type, name, source, channel, ts, device_ts,
    received_ts, customer_id, anonymous_id, user_id, session_id, stage, seq, conversion,
    page_url, page_host, page_path, value, currency, survey_kind, survey_score,
    survey_touchpoint_id, rated_channel, rated_type, rated_name, rated_stage, user_agent, device_type, is_bot, bot_reason)
SELECT
    {_event_id("number")},
    0,
    'v1',
    {kind} AS kind,
    if(kind = 'page_view', '', kind),
    'web',
    {_CHANNELS}[cityHash64({_CUSTOMER}, {_SESSION}) % 6 + 1],
    {_ts(_CUSTOMER, _SESSION, _K)} AS at,
    at,
    at,
    if({_SIGNED_IN}, {_signed_in_customer(_CUSTOMER)}, {_customer(_CUSTOMER)}),
    concat('a', toString({_CUSTOMER})),
    if({_SIGNED_IN}, concat('u', toString({_CUSTOMER})), ''),
    concat('s', toString({_CUSTOMER}), '-', toString({_SESSION})),
    {stage},
    toUInt32({_K} + 1),
    if(kind = 'purchase', 'purchase', ''),
    concat('https://shop.example.com', {page}),
    'shop.example.com',
    if(kind = 'page_view', {page}, '/thanks'),
    if(kind = 'purchase', toNullable(toFloat64(20 + {_CUSTOMER} % 180)), NULL),
    if(kind = 'purchase', 'EUR', ''),
    if(kind = 'survey_response', ['nps', 'csat', 'ces'][{_CUSTOMER} % 3 + 1], ''),
    if(kind = 'survey_response', toNullable(toFloat32({score})), NULL),
    if(kind = 'survey_response', toString({_event_id("number - 1")}), ''),
    if(kind = 'survey_response', {rated_channel}, ''),
    if(kind = 'survey_response', 'page_view', ''),
    if(kind = 'survey_response', {rated_page}, ''),
    if(kind = 'survey_response', {rated_stage}, ''),
    if(number % 100 = 99, 'Googlebot/2.1', 'Mozilla/5.0 Firefox/132.0'),
    'desktop',
    number % 100 = 99,
    if(number % 100 = 99, 'crawler', '')
FROM numbers({first}, {count})
"""


def identities_insert(customers: int) -> str:
    """Every visitor's anonymous id; a signed-in visitor's user id too, merged into it."""
    return f"""
INSERT INTO identities (identifier, kind, customer_id, own_customer_id, version, ts)
SELECT concat('anon:a', toString(number)), 'anon', {_customer("number")},
       {_customer("number")}, 1, toDateTime64('{START.isoformat()} 00:00:00', 3, 'UTC')
FROM numbers({customers})
UNION ALL
SELECT concat('user:u', toString(number)), 'user', {_customer("number")},
       {_signed_in_customer("number")}, 2, toDateTime64('{START.isoformat()} 00:00:00', 3, 'UTC')
FROM numbers({customers}) WHERE number % 10 = 0
"""


def sessions_insert(customers: int) -> str:
    first = "(c * 10 + s * 4)"
    return f"""
INSERT INTO sessions (session_id, version, customer_id, start, end, events, page_views, channel,
    campaign, is_bounce, event_ids, retired)
SELECT concat('s', toString(c), '-', toString(s)), 1, {_customer("c")},
       {_ts("c", "s", "0")}, {_ts("c", "s", "0")} + toIntervalSecond(540),
       if(s = 2, 2, 4), if(s = 2, 2, 4),
       {_CHANNELS}[cityHash64(c, s) % 6 + 1], '', false,
       arrayMap(i -> toString({_event_id(f"{first} + i")}), range(toUInt64(if(s = 2, 2, 4)))),
       false
FROM (SELECT intDiv(number, 3) AS c, number % 3 AS s FROM numbers({customers} * 3))
"""


def frictions_insert(rows: int) -> str:
    """One page view in fifty answered with an error page."""
    c, k = "intDiv(number, 10)", "number % 10"
    return f"""
INSERT INTO frictions (friction_id, version, customer_id, event_id, ts, reason, severity, detail,
    retracted, channel, type, name, stage, is_bot)
SELECT concat('f', toString(number)), 1, {_customer(c)}, toString({_event_id("number")}),
       {_ts(c, f"intDiv({k}, 4)", k)}, 'error_page', 'high', 'HTTP 500', false,
       {_CHANNELS}[cityHash64({c}, intDiv({k}, 4)) % 6 + 1], 'page_view',
       {_PAGES}[({k} + cityHash64({c}) % 3) % 8 + 1],
       multiIf({k} < 3, 'awareness', {k} < 7, 'consideration', 'purchase'), number % 100 = 99
FROM numbers({rows})
WHERE number % 50 = 7
"""


def journeys_insert(customers: int) -> str:
    return f"""
INSERT INTO journeys (customer_id, version, as_of, events, sessions, stage, conversions, value,
    frictions, late_events, merged_into)
SELECT {_customer("number")}, 1, toDateTime64('{START.isoformat()} 00:00:00', 3, 'UTC'), 10, 3,
       if(number % 5 = 0, 'purchase', 'consideration'), toUInt64(number % 5 = 0), 0, 0, 0, ''
FROM numbers({customers})
"""


def _as_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# -- timing ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Timing:
    name: str
    seconds: float
    bar: float | None = None
    """The most the ratio to the scan may be; None: for information."""
    details: dict[str, Any] = field(default_factory=dict)


def best_of(repeats: int, run: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def load(store: ClickHouseStore, rows: int) -> dict[str, float]:
    customers = rows // EVENTS_PER_CUSTOMER
    spent: dict[str, float] = {}
    started = time.perf_counter()
    for first in range(0, rows, CHUNK):
        store.run_sync(store.command_sync, touchpoints_insert(first, min(CHUNK, rows - first)))
        log.info("loaded touchpoints", extra={"rows": min(first + CHUNK, rows)})
    spent["touchpoints"] = time.perf_counter() - started
    for name, sql in (
        ("identities", identities_insert(customers)),
        ("sessions", sessions_insert(customers)),
        ("frictions", frictions_insert(rows)),
        ("journeys", journeys_insert(customers)),
    ):
        started = time.perf_counter()
        store.run_sync(store.command_sync, sql)
        spent[name] = time.perf_counter() - started
        log.info("loaded", extra={"table": name, "seconds": round(spent[name], 1)})
    # A bulk load leaves the rollup and the journey lookup table in many small parts, one per
    # inserted block, that ClickHouse merges in the background over the next minutes; merge
    # them now.
    started = time.perf_counter()
    store.run_sync(store.command_sync, "OPTIMIZE TABLE touchpoint_daily FINAL")
    spent["rollup merge"] = time.perf_counter() - started
    spent["lookup merge"] = merge_lookup(store)
    return spent


def merge_lookup(store: ClickHouseStore) -> float:
    """Merge the parts of ``journey_lookup`` a load or a migration's backfill left, as the
    background merges do within minutes; the seconds it took."""
    started = time.perf_counter()
    store.run_sync(store.command_sync, "OPTIMIZE TABLE journey_lookup FINAL")
    return time.perf_counter() - started


FIGURES = ("journey", "scorecard", "funnel", "paths", "attribution")


def measure(
    store: ClickHouseStore,
    rows: int,
    repeats: int,
    bootstrap_rounds: int,
    settings: Settings,
    only: frozenset[str] = frozenset(FIGURES),
) -> list[Timing]:
    def scalar(sql: str) -> Any:
        return store.run_sync(store.query_sync, sql).rows[0][0]

    def read_json(sql: str) -> list[dict[str, Any]]:
        """A read as the console serves it: read-only, on a client of its own."""
        data: bytes = store.run_sync(store.raw_query_sync, sql, "JSONEachRow", QueryLimits())
        return [orjson.loads(line) for line in data.splitlines() if line.strip()]

    def read_shared(sql: str) -> list[dict[str, Any]]:
        """The same read on the store's open connection, as JSON would give it."""
        result = store.run_sync(store.query_sync, sql)
        return [
            {c: _as_json(v) for c, v in zip(result.columns, row, strict=True)}
            for row in result.rows
        ]

    stored = scalar("SELECT count() FROM touchpoints")
    if stored != rows:
        raise RuntimeError(f"expected {rows} touchpoints, found {stored}")
    span = {"from": START.isoformat(), "to": (START + timedelta(days=DAYS)).isoformat()}
    timings: list[Timing] = []
    scan, scanned = best_of(
        repeats, lambda: scalar("SELECT count() FROM touchpoints WHERE NOT ignore(*)")
    )
    timings.append(Timing("full scan of touchpoints (baseline)", scan, details={"rows": scanned}))

    if "journey" in only:
        timings += _journey(store, rows, repeats, settings, read_shared, read_json)
    if "scorecard" in only:
        timings += _scorecard(store, repeats, span)
    if only & {"funnel", "paths", "attribution"}:
        timings += _others(store, bootstrap_rounds, span, only)
    return timings


def _journey(
    store: ClickHouseStore,
    rows: int,
    repeats: int,
    settings: Settings,
    read_shared: Callable[[str], list[dict[str, Any]]],
    read_json: Callable[[str], list[dict[str, Any]]],
) -> list[Timing]:
    timings: list[Timing] = []
    # What any read costs through clickhouse-connect over chDB, whatever it reads.
    seconds, _ = best_of(repeats, lambda: read_shared("SELECT 1 AS x"))
    timings.append(Timing("empty query (SELECT 1), for scale", seconds))
    # A signed-in customer: two identity keys, touchpoints stitched to two customer ids.
    someone = f"anon:a{(rows // EVENTS_PER_CUSTOMER // 2) // 10 * 10}"
    seconds, journey = best_of(repeats, lambda: find_journey(settings, someone, read_shared))
    if journey is None or len(journey.events) != EVENTS_PER_CUSTOMER:
        raise RuntimeError(f"the journey of {someone} has not its {EVENTS_PER_CUSTOMER} events")
    timings.append(Timing("journey lookup", seconds, 1 / 100, {"events": len(journey.events)}))
    # The console opens a client for each read (isolation); with chDB that costs a fixed
    # ~15 ms a read whatever the data, so this figure is for information.
    seconds, journey = best_of(repeats, lambda: find_journey(settings, someone, read_json))
    timings.append(Timing("journey lookup, a client per read", seconds))
    return timings


def _report(
    store: ClickHouseStore, span: dict[str, str], name: str, **options: str
) -> Callable[[], list[dict[str, Any]]]:
    return lambda: run_report(store, name, {**span, **options})


def _scorecard(store: ClickHouseStore, repeats: int, span: dict[str, str]) -> list[Timing]:
    timings: list[Timing] = []

    def report(name: str, **options: str) -> Callable[[], list[dict[str, Any]]]:
        return _report(store, span, name, **options)

    # The scorecard from the rollups (events, reach, frictions, scores), then with the
    # conversion columns, which read each converting customer's events (docs/reports.md).
    for by in ("touchpoint", "channel"):
        seconds, found = best_of(repeats, report("scorecard", by=by, conversion="false"))
        timings.append(
            Timing(f"scorecard by {by}, from rollups", seconds, 1 / 20, {"rows": len(found)})
        )
    # Where the scorecard's time goes: each of its reads on its own.
    asked = parse_options("scorecard", {**span, "by": "touchpoint"})
    for part in ("rollup", "unplaced", "merges", "conversions"):
        sql: str = getattr(_sql, f"scorecard_{part}")(asked)

        def read(sql: str = sql) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = store.run_sync(store.query_sync, sql).rows
            return rows

        seconds, found = best_of(repeats, read)
        timings.append(Timing(f"  scorecard read: {part}", seconds, details={"rows": len(found)}))
    for by in ("touchpoint", "channel"):
        seconds, found = best_of(1, report("scorecard", by=by))
        timings.append(
            Timing(f"scorecard by {by}, with conversions", seconds, details={"rows": len(found)})
        )
    return timings


def _others(
    store: ClickHouseStore, bootstrap_rounds: int, span: dict[str, str], only: frozenset[str]
) -> list[Timing]:
    timings: list[Timing] = []

    def report(name: str, **options: str) -> Callable[[], list[dict[str, Any]]]:
        return _report(store, span, name, **options)

    if "funnel" in only:
        seconds, found = best_of(1, report("funnel", steps=FUNNEL))
        customers = [r["customers"] for r in found]
        timings.append(Timing("funnel, 5 steps", seconds, details={"customers": customers}))
    if "paths" in only:
        seconds, found = best_of(1, report("paths"))
        timings.append(Timing("paths by channel", seconds, details={"rows": len(found)}))
    for model in MODELS if "attribution" in only else ():
        options = {"model": model, "seed": "1"}
        if model in ("markov", "shapley"):
            options["bootstrap_rounds"] = str(bootstrap_rounds)
        seconds, found = best_of(1, report("attribution", **options))
        conversions = round(sum(r["conversions"] for r in found), 3)
        timings.append(
            Timing(f"attribution {model}", seconds, details={"conversions": conversions})
        )
    return timings


def render(timings: Sequence[Timing]) -> str:
    scan = timings[0].seconds
    header = ("figure", "seconds", "ratio to scan", "bar", "result")
    lines = [header]
    for t in timings:
        ratio = t.seconds / scan
        bar = f"<= 1/{round(1 / t.bar)}" if t.bar else "-"
        verdict = "info" if t.bar is None else ("PASS" if ratio <= t.bar else "FAIL")
        lines.append((t.name, f"{t.seconds:.3f}", f"{ratio:.4f} (1/{1 / ratio:.0f})", bar, verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append(
            "  ".join(
                [line[0].ljust(widths[0])]
                + [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
            ).rstrip()
        )
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=ROWS, help="touchpoints to load (10 a customer)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each fast query; best counts"
    )
    parser.add_argument(
        "--bootstrap-rounds", type=int, default=10, help="for markov and shapley's intervals"
    )
    parser.add_argument("--keep", action="store_true", help="keep the ClickHouse folder")
    parser.add_argument(
        "--data",
        type=Path,
        help="a folder to keep the loaded data in; a later run with the same folder and --rows "
        "migrates it and skips the load",
    )
    parser.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"comma-separated figures to time besides the scan: {', '.join(FIGURES)}",
    )
    args = parser.parse_args(argv)
    only = frozenset(part.strip() for part in args.only.split(",") if part.strip())
    if unknown := only - set(FIGURES):
        parser.error(f"--only: unknown figures {', '.join(sorted(unknown))}")
    if args.rows < 1000 or args.rows % EVENTS_PER_CUSTOMER:
        parser.error(f"--rows must be a multiple of {EVENTS_PER_CUSTOMER}, at least 1000")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    work = args.data or Path(tempfile.mkdtemp(prefix="tracker-bench-analytics-"))
    work.mkdir(parents=True, exist_ok=True)
    store = ClickHouseStore(f"chdb://{work / 'clickhouse'}", "tracker")
    settings = Settings.from_env({"TRACKER_DATA_DIR": str(work)})
    try:
        applied = store.run_sync(store.migrate_sync)
        stored = store.run_sync(store.query_sync, "SELECT count() FROM touchpoints").rows[0][0]
        loading = load(store, args.rows) if stored == 0 else {}
        if stored and applied:  # a reused folder, just migrated: its backfills are unmerged
            log.info("merged", extra={"table": "journey_lookup", "seconds": merge_lookup(store)})
        timings = measure(store, args.rows, args.repeats, args.bootstrap_rounds, settings, only)
    finally:
        store.close()
        if not args.keep and args.data is None:
            shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write(
        f"\n{args.rows:,} touchpoints, reused from {args.data}\n\n"
        if not loading
        else f"\n{args.rows:,} touchpoints loaded in {sum(loading.values()):.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in loading.items())})\n\n"
    )
    sys.stdout.write(render(timings))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(
        orjson.dumps(
            {
                "when": datetime.now(UTC).isoformat(),
                "rows": args.rows,
                "load_seconds": loading,
                "timings": [asdict(t) for t in timings],
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
