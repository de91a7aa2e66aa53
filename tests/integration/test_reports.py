"""The reports through the real pipeline: events with explicit timestamps posted to a real
beacon, stitched by a real worker on Kafka into the ClickHouse engine, then reported by the
console endpoint, by ``tracker report`` and by the Python API. Every expected figure below is
worked by hand from the dataset in the docstring of ``load``."""

from __future__ import annotations

import math
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Pipeline, component_env, http
from tracker.cli.kafka_local import LocalKafka

pytestmark = pytest.mark.integration

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"
BOT = "Python-urllib/3.12"
DAY0 = (datetime.now(UTC) - timedelta(days=6)).replace(hour=0, minute=0, second=0, microsecond=0)


def at(day: int, hour: int, minute: int) -> datetime:
    return DAY0 + timedelta(days=day, hours=hour, minutes=minute)


def event(
    when: datetime, kind: str, anon: str, path: str, medium: str, **fields: Any
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": kind,
        "ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "anonymous_id": anon,
        "page": {"url": f"https://shop.example.com{path}?utm_medium={medium}"},
        **fields,
    }


def post(p: Pipeline, body: dict[str, Any], agent: str = FIREFOX) -> None:
    request = urllib.request.Request(
        p.beacon_url + "/v1/events",
        data=orjson.dumps([body]),
        headers={"Content-Type": "application/json", "User-Agent": agent},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def survey(
    when: datetime, anon: str, path: str, medium: str, kind: str, score: int, rates: str = ""
) -> dict[str, Any]:
    answer: dict[str, Any] = {"kind": kind, "score": score}
    if rates:
        answer["touchpoint_id"] = rates
    return event(when, "survey_response", anon, path, medium, survey=answer)


@pytest.fixture(scope="module")
def loaded(kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    data_dir = tmp_path_factory.mktemp("reports")
    p = Pipeline(component_env(kafka.bootstrap, data_dir), data_dir).start()
    try:
        load(p)
        yield p
    finally:
        p.stop()


def load(p: Pipeline) -> None:
    """Three customers and a bot, days 0-3 (times UTC), each event tagged with a campaign medium:

    A  d0 09:00 page /landing (email)    d0 09:05 page /pricing (email)
       d1 10:00 page /shop (paid)        d1 10:02 purchase 100 (paid)   d1 10:04 NPS 10
       d1 10:05 CSAT 5 naming the touchpoint it rates: A's /landing on d0
    bot d0 11:00 page /landing (email)   d0 11:01 purchase 999 (email)  [a crawler's user agent]
    B  d0 12:00 page /landing (paid)     d0 12:03 page /pricing, HTTP 500 (paid)  d0 12:05 CSAT 2
    C  d2 08:00 page /landing (email)    d2 08:01 identify with an email (email)
    C' d3 09:00 page /pricing (social)   then C' is C: d3 09:01 identify with the same email,
       d3 09:03 purchase 50, d3 09:05 CES 2, d3 09:06 CES 4 (all social)
    """
    a, b, c, c2, bot = (f"{n}-{uuid.uuid4().hex[:8]}" for n in ("a", "b", "c", "c2", "bot"))
    email = f"c-{uuid.uuid4().hex[:6]}@example.com"
    a_landing = event(at(0, 9, 0), "page_view", a, "/landing", "email")
    post(p, a_landing)
    post(p, event(at(0, 9, 5), "page_view", a, "/pricing", "email"))
    post(p, event(at(0, 11, 0), "page_view", bot, "/landing", "email"), BOT)
    post(p, event(at(0, 11, 1), "purchase", bot, "/thanks", "email", value=999.0), BOT)
    post(p, event(at(0, 12, 0), "page_view", b, "/landing", "cpc"))
    post(
        p,
        event(at(0, 12, 3), "page_view", b, "/pricing", "cpc", properties={"status_code": "500"}),
    )
    post(p, survey(at(0, 12, 5), b, "/pricing", "cpc", "csat", 2))
    post(p, event(at(1, 10, 0), "page_view", a, "/shop", "cpc"))
    post(p, event(at(1, 10, 2), "purchase", a, "/thanks", "cpc", value=100.0, currency="EUR"))
    post(p, survey(at(1, 10, 4), a, "/thanks", "cpc", "nps", 10))
    post(p, survey(at(1, 10, 5), a, "/thanks", "cpc", "csat", 5, rates=a_landing["event_id"]))
    post(p, event(at(2, 8, 0), "page_view", c, "/landing", "email"))
    post(p, event(at(2, 8, 1), "identify", c, "/landing", "email", email=email))
    post(p, event(at(3, 9, 0), "page_view", c2, "/pricing", "social"))
    # C' is stitched as a customer of its own before the identify links it to C.
    assert p.wait_for("SELECT count() FROM touchpoints FINAL", "14", 60) == "14"
    post(p, event(at(3, 9, 1), "identify", c2, "/pricing", "social", email=email))
    post(p, event(at(3, 9, 3), "purchase", c2, "/thanks", "social", value=50.0, currency="EUR"))
    post(p, survey(at(3, 9, 5), c2, "/thanks", "social", "ces", 2))
    post(p, survey(at(3, 9, 6), c2, "/thanks", "social", "ces", 4))
    settled = (
        "SELECT (SELECT count() FROM touchpoints FINAL), "
        "(SELECT uniqExact(current_customer_id) FROM customer_touchpoints), "
        "(SELECT count() FROM sessions FINAL WHERE NOT retired), "
        "(SELECT count() FROM frictions FINAL WHERE reason = 'error_page')"
    )
    assert p.wait_for(settled, "18\t4\t6\t1", 90) == "18\t4\t6\t1"
    # Those counts hold while C' is still being merged into C (its touchpoints restitched, their
    # stages and sessions rewritten): the reports are read once the worker has handled it all.
    p.wait_until_handled(90)


RANGE = {"from": DAY0.date().isoformat(), "to": (DAY0 + timedelta(days=3)).date().isoformat()}


def report(p: Pipeline, name: str, **options: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({**RANGE, **options})
    status, body, headers = http("GET", f"{p.console_url}/api/reports/{name}?{query}")
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in str(body).splitlines()]


def by(rows: list[dict[str, Any]], *keys: str) -> dict[Any, dict[str, Any]]:
    return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in rows}


def test_scorecard_by_channel(loaded: Pipeline) -> None:
    rows = by(report(loaded, "scorecard", by="channel"), "channel")
    assert set(rows) == {"email", "paid", "social"}  # surveys rate touchpoints; bots left out
    email, paid, social = rows["email"], rows["paid"], rows["social"]
    # email: A's two pages, C's page and identify; both customers buy within 7 days after.
    assert (email["events"], email["customers"], email["converted_customers"]) == (4, 2, 2)
    assert (email["conversion_rate"], email["friction_rate"]) == (1.0, 0.0)
    # Wilson 2/2: centre (1 + z²/4)/(1 + z²/2), half z·√(z²/16)/(1 + z²/2)
    z = 1.959963984540054
    centre, half = (1 + z * z / 4) / (1 + z * z / 2), z * (z / 4) / (1 + z * z / 2)
    assert email["conversion_ci_low"] == pytest.approx(centre - half)
    assert email["conversion_ci_high"] == pytest.approx(1.0)
    # A's CSAT 5 names A's /landing (email): it rates that, not the purchase just before it.
    assert email["nps_n"] == email["ces_n"] == 0
    assert email["nps"] is None
    assert (email["csat"], email["csat_n"], email["csat_ci_high"]) == (100.0, 1, 100.0)
    assert email["csat_ci_low"] == pytest.approx(100 * 1 / (1 + z * z))  # Wilson 1/1
    # paid: A's /shop and purchase, B's two pages; A buys 2 minutes after /shop, B never.
    assert (paid["events"], paid["customers"], paid["converted_customers"]) == (4, 2, 1)
    assert paid["conversion_rate"] == 0.5
    assert (paid["conversion_ci_low"], paid["conversion_ci_high"]) == pytest.approx(
        (0.0945, 0.9055), abs=1e-4
    )
    assert paid["friction_rate"] == 0.25  # B's /pricing answered HTTP 500
    # A's NPS 10 rates the purchase before it; B's CSAT 2 rates /pricing.
    assert (paid["nps"], paid["nps_n"], paid["nps_ci_low"], paid["nps_ci_high"]) == (
        100.0,
        1,
        100.0,
        100.0,
    )
    assert (paid["csat"], paid["csat_n"], paid["csat_ci_low"]) == (0.0, 1, 0.0)
    assert paid["csat_ci_high"] == pytest.approx(100 * (z * z) / (1 + z * z))  # Wilson 0/1
    # social: C's page (stitched before the merge, counted as C's), identify and purchase.
    assert (social["events"], social["customers"], social["converted_customers"]) == (3, 1, 1)
    # CES 2 and 4: mean 3, s = √2, t(0.975, 1) = 12.7062 → 3 ± 12.7062
    assert (social["ces"], social["ces_n"]) == (3.0, 2)
    assert (social["ces_ci_low"], social["ces_ci_high"]) == pytest.approx(
        (3 - 12.7062, 3 + 12.7062), abs=1e-4
    )


def test_scorecard_by_touchpoint_and_with_bots(loaded: Pipeline) -> None:
    rows = by(report(loaded, "scorecard", by="touchpoint"), "channel", "type", "name")
    pricing = rows[("paid", "page_view", "/pricing")]
    assert (pricing["events"], pricing["customers"], pricing["conversion_rate"]) == (1, 1, 0.0)
    assert (pricing["friction_rate"], pricing["csat"], pricing["csat_n"]) == (1.0, 0.0, 1)
    landing = rows[("email", "page_view", "/landing")]
    assert (landing["events"], landing["customers"], landing["converted_customers"]) == (2, 2, 2)
    assert (landing["csat"], landing["csat_n"]) == (100.0, 1)  # A's CSAT names it
    (paid_purchase,) = (r for key, r in rows.items() if key[:2] == ("paid", "purchase"))
    assert (paid_purchase["nps_n"], paid_purchase["csat_n"]) == (1, 0)
    (purchase,) = (r for key, r in rows.items() if key[:2] == ("social", "purchase"))
    assert (purchase["ces_n"], purchase["ces"]) == (2, 3.0), purchase["name"]
    stages = {
        stage: (
            r["events"],
            r["customers"],
            r["converted_customers"],
            r["nps_n"],
            r["csat_n"],
            r["ces_n"],
        )
        for stage, r in by(report(loaded, "scorecard", by="stage"), "stage").items()
    }
    # awareness: the three /landing views; consideration: A's /pricing and /shop, B's /pricing,
    # C's identifies and /pricing; purchase: the two purchases (nobody buys again after them).
    assert stages == {
        "awareness": (3, 3, 2, 0, 1, 0),
        "consideration": (6, 3, 2, 0, 1, 0),
        "purchase": (2, 2, 0, 1, 0, 2),
    }
    with_bots = by(report(loaded, "scorecard", by="channel", include_bots="true"), "channel")
    assert (with_bots["email"]["events"], with_bots["email"]["customers"]) == (6, 3)
    assert with_bots["email"]["converted_customers"] == 3
    # A conversion counts in the window after the exposure only: none within 0.001 days.
    tight = by(report(loaded, "scorecard", by="channel", window_days="0.001"), "channel")
    assert tight["email"]["converted_customers"] == 0
    assert tight["paid"]["converted_customers"] == 0  # 2 minutes > 86.4 s


def test_scorecard_from_the_rollups_alone(loaded: Pipeline) -> None:
    """Without conversions the scorecard reads no customer's events: the same reach, frictions
    and scores, the conversion columns empty."""
    full = report(loaded, "scorecard", by="channel")
    fast = report(loaded, "scorecard", by="channel", conversion="false")
    conversion = (
        "converted_customers",
        "conversion_rate",
        "conversion_ci_low",
        "conversion_ci_high",
    )
    assert [{k: v for k, v in r.items() if k not in conversion} for r in fast] == [
        {k: v for k, v in r.items() if k not in conversion} for r in full
    ]
    assert all(r[k] is None for r in fast for k in conversion)
    assert [list(r) for r in fast] == [list(r) for r in full]  # the same columns, in order


def test_answers_carry_the_place_of_the_touchpoint_they_rate_into_the_rollup(
    loaded: Pipeline,
) -> None:
    """The journey agent writes on each answer the channel, type, name and stage of the
    touchpoint it rates, as that touchpoint is stored, so the rollup sums every score there
    and the scorecard looks none up at query time."""
    answers = loaded.query(
        "SELECT count(), countIf(a.place = (t.channel, t.type, t.name, t.stage)) FROM ("
        " SELECT survey_touchpoint_id AS rated, (rated_channel, rated_type, rated_name,"
        " rated_stage) AS place FROM touchpoints FINAL WHERE survey_kind != '') AS a"
        " INNER JOIN (SELECT toString(event_id) AS id, channel, type,"
        " if(type = 'page_view', page_path, name) AS name, stage FROM touchpoints FINAL) AS t"
        " ON t.id = a.rated"
    )
    assert answers.split() == ["5", "5"]
    unrated = loaded.query(
        "SELECT sumMerge(nps_n) + sumMerge(csat_n) + sumMerge(ces_n) FROM touchpoint_daily"
        " WHERE type = '(unrated)'"
    )
    assert unrated.strip() == "0"


def test_funnel(loaded: Pipeline) -> None:
    steps = "page_view:/landing,page_view:/pricing,purchase"
    rows = report(loaded, "funnel", steps=steps)
    # A: 09:00 → 09:05 (300 s) → d1 10:02 (89 820 s); B: 12:00 → 12:03 (180 s);
    # C: d2 08:00 → d3 09:00 on the other device (90 000 s) → 09:03 (180 s)
    assert rows == [
        {
            "step": "page_view:/landing",
            "customers": 3,
            "rate_from_previous": None,
            "rate_from_first": 1.0,
            "median_seconds_from_previous": None,
        },
        {
            "step": "page_view:/pricing",
            "customers": 3,
            "rate_from_previous": 1.0,
            "rate_from_first": 1.0,
            "median_seconds_from_previous": 300.0,
        },
        {
            "step": "purchase",
            "customers": 2,
            "rate_from_previous": pytest.approx(2 / 3),
            "rate_from_first": pytest.approx(2 / 3),
            "median_seconds_from_previous": 45_000.0,
        },
    ]
    one_day = report(loaded, "funnel", steps=steps, window_days="1")
    assert [r["customers"] for r in one_day] == [3, 2, 0]  # C's /pricing and A's purchase: > 1 day


def test_paths_and_stages(loaded: Pipeline) -> None:
    rows = report(loaded, "paths")
    assert [(r["path"], r["paths"], r["conversions"]) for r in rows] == [
        ("email > paid", 1, 1),
        ("email > social", 1, 1),
        ("paid", 1, 0),
    ]
    assert [r["share"] for r in rows] == pytest.approx([1 / 3] * 3)
    assert [r["touches"] for r in rows] == [2, 2, 1]
    converting = report(loaded, "paths", ending="conversion")
    assert [(r["path"], r["share"], r["conversion_share"]) for r in converting] == [
        ("email > paid", 0.5, 1.0),
        ("email > social", 0.5, 1.0),
    ]
    stages = report(loaded, "stages")
    summary = {
        r["stage"]: (r["customers"], r["visits"], r["median_dwell_seconds"], r["p90_dwell_seconds"])
        for r in stages
        if r["row"] == "stage"
    }
    # awareness dwell: C 60 s, B 180 s, A 300 s; consideration: A 89 820 s, C 90 120 s
    assert summary == {
        "awareness": (3, 3, 180.0, pytest.approx(276.0)),
        "consideration": (3, 3, 89_970.0, pytest.approx(90_090.0)),
        "purchase": (2, 2, 120.0, 120.0),
        "post_purchase": (2, 2, None, None),
    }
    dwell_n = {r["stage"]: r["dwell_n"] for r in stages if r["row"] == "stage"}
    assert dwell_n == {"awareness": 3, "consideration": 2, "purchase": 2, "post_purchase": 0}
    transitions = {
        (r["stage"], r["to_stage"]): r["transitions"] for r in stages if r["row"] == "transition"
    }
    assert transitions == {
        ("awareness", "consideration"): 3,
        ("consideration", "purchase"): 2,
        ("purchase", "post_purchase"): 2,
    }


def test_attribution_every_model(loaded: Pipeline) -> None:
    rows = report(loaded, "attribution", model="all", seed="7")
    credit = {(r["model"], r["channel"]): (r["conversions"], r["value"]) for r in rows}
    # Paths: A email → paid, buys 100; C email → social, buys 50; B paid, no conversion.
    assert credit[("first_touch", "email")] == (2.0, 150.0)
    assert credit[("last_touch", "paid")] == (1.0, 100.0)
    assert credit[("last_touch", "social")] == (1.0, 50.0)
    assert credit[("last_non_direct", "paid")] == (1.0, 100.0)
    for model in ("linear", "position_based", "shapley"):
        assert credit[(model, "email")] == pytest.approx((1.0, 75.0))
        assert credit[(model, "paid")] == pytest.approx((0.5, 50.0))
        assert credit[(model, "social")] == pytest.approx((0.5, 25.0))
    # Time decay, half-life 7 days: Δt in days from each session start to its conversion.
    a_email, a_paid = 2 ** (-(25 + 2 / 60) / 24 / 7), 2 ** (-(2 / 60) / 24 / 7)
    c_email, c_social = 2 ** (-(25 + 3 / 60) / 24 / 7), 2 ** (-(3 / 60) / 24 / 7)
    email_share = a_email / (a_email + a_paid) + c_email / (c_email + c_social)
    assert credit[("time_decay", "email")][0] == pytest.approx(email_share)
    assert credit[("time_decay", "paid")][0] == pytest.approx(a_paid / (a_email + a_paid))
    email_value = 100 * a_email / (a_email + a_paid) + 50 * c_email / (c_email + c_social)
    assert credit[("time_decay", "email")][1] == pytest.approx(email_value)
    # Markov: P(conversion) 2/3; without email 1/6, paid 1/3, social 1/3; removal effects
    # 3/4, 1/2, 1/2 over 7/4: of 2 conversions and 150 of value.
    assert credit[("markov", "email")] == pytest.approx((6 / 7, 150 * 3 / 7))
    assert credit[("markov", "paid")] == pytest.approx((4 / 7, 150 * 2 / 7))
    assert credit[("markov", "social")] == pytest.approx((4 / 7, 150 * 2 / 7))
    for model in ("first_touch", "last_touch", "linear", "time_decay", "markov", "shapley"):
        assert math.fsum(r["conversions"] for r in rows if r["model"] == model) == pytest.approx(2)
    for r in rows:
        bootstrapped = r["model"] in ("markov", "shapley")
        assert (r["conversions_ci_low"] is not None) == bootstrapped
        if bootstrapped:
            assert 0 <= r["conversions_ci_low"] <= r["conversions_ci_high"] <= 2
    assert report(loaded, "attribution", model="markov", seed="7") == [
        r for r in rows if r["model"] == "markov"
    ]
    with_bots = report(loaded, "attribution", model="first_touch", include_bots="true")
    assert by(with_bots, "channel")["email"]["conversions"] == 3.0
    # A lookback of one day leaves A's and C's email sessions (25 hours before) out.
    short = report(loaded, "attribution", model="first_touch", lookback_days="1")
    assert {r["channel"]: r["conversions"] for r in short} == {"paid": 1.0, "social": 1.0}


def test_bad_options_get_a_reason(loaded: Pipeline) -> None:
    status, body, _ = http(
        "GET", f"{loaded.console_url}/api/reports/funnel?steps=purchase&from=2026-11-01"
    )
    assert status == 400
    assert "a funnel needs at least two steps" in body["error"]
    status, body, _ = http("GET", f"{loaded.console_url}/api/reports/revenue")
    assert status == 400
    assert "no report 'revenue'; reports: scorecard, funnel, paths, stages" in body["error"]


def test_cli_and_python_api_give_the_endpoints_rows(loaded: Pipeline, tmp_path: Path) -> None:
    endpoint = report(loaded, "attribution", model="shapley", seed="3")
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracker",
            "report",
            "attribution",
            "--model",
            "shapley",
            "--seed",
            "3",
            "--from",
            RANGE["from"],
            "--to",
            RANGE["to"],
            "--format",
            "json",
        ],
        env=loaded.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert [orjson.loads(line) for line in cli.stdout.splitlines()] == endpoint
    table = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracker",
            "report",
            "paths",
            "--from",
            RANGE["from"],
            "--to",
            RANGE["to"],
            "--outcome",
            "conversion",
        ],
        env=loaded.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[1].split()[:4] == ["email", ">", "paid", "2"]
    scorecard = report(loaded, "scorecard", by="channel")

    # The Python API, on the same database once the worker has let go of it.
    loaded.stop()
    from tracker.reports import run_report
    from tracker.store import ClickHouseStore

    store = ClickHouseStore(loaded.env["TRACKER_CLICKHOUSE_URL"], "tracker")
    try:
        assert (
            run_report(store, "attribution", {**RANGE, "model": "shapley", "seed": "3"}) == endpoint
        )
        assert run_report(store, "scorecard", {**RANGE, "by": "channel"}) == scorecard
    finally:
        store.close()


def test_every_report_answers_an_empty_database(tmp_path: Path) -> None:
    from tracker.reports import REPORTS, run_report
    from tracker.store import ClickHouseStore

    store = ClickHouseStore(f"chdb://{tmp_path / 'clickhouse'}", "tracker")
    try:
        store.run_sync(store.migrate_sync)
        for name in REPORTS:
            options = {"steps": "page_view,purchase"} if name == "funnel" else {}
            rows = run_report(store, name, options)
            if name == "funnel":
                assert [(r["step"], r["customers"]) for r in rows] == [
                    ("page_view", 0),
                    ("purchase", 0),
                ]
                assert rows[1]["rate_from_first"] is None
            else:
                assert rows == [], name
    finally:
        store.close()


def test_answers_stored_without_the_touchpoint_they_rate_rate_the_latest_before(
    tmp_path: Path,
) -> None:
    """Rows written before survey_touchpoint_id existed (an empty column), and an answer naming
    a touchpoint never stored: each rates the customer's latest non-survey touchpoint before
    it, found when the report runs."""
    from tracker.reports import run_report
    from tracker.store import ClickHouseStore

    store = ClickHouseStore(f"chdb://{tmp_path / 'clickhouse'}", "tracker")
    day = datetime(2026, 11, 2, tzinfo=UTC)
    rows = [  # type, channel, page, minutes after day, survey kind, score, rated
        ("page_view", "email", "/landing", 0, "", None, ""),
        ("page_view", "paid", "/pricing", 5, "", None, ""),
        ("survey_response", "paid", "/pricing", 6, "csat", 5, ""),
        ("page_view", "email", "/docs", 10, "", None, ""),
        ("survey_response", "email", "/docs", 11, "csat", 1, str(uuid.uuid4())),
    ]
    values = ", ".join(
        f"(generateUUIDv4(), 1, '{kind}', '{channel}', "
        f"toDateTime64('{(day + timedelta(minutes=minutes)).strftime('%Y-%m-%d %H:%M:%S')}', 3, 'UTC'), "
        f"'customer-1', 'anon-1', '{page}', '{survey}', "
        f"{'NULL' if score is None else score}, '{rated}')"
        for kind, channel, page, minutes, survey, score, rated in rows
    )
    try:
        store.run_sync(store.migrate_sync)
        store.run_sync(
            store.command_sync,
            "INSERT INTO touchpoints (event_id, version, type, channel, ts, customer_id, "
            f"anonymous_id, page_path, survey_kind, survey_score, survey_touchpoint_id) VALUES {values}",
        )
        found = run_report(
            store, "scorecard", {"from": "2026-11-02", "to": "2026-11-02", "by": "touchpoint"}
        )
        scores = {(r["channel"], r["name"]): (r["csat"], r["csat_n"]) for r in found}
        assert scores == {
            ("paid", "/pricing"): (100.0, 1),  # the CSAT 5 at 00:06 rates /pricing at 00:05
            ("email", "/docs"): (0.0, 1),  # the CSAT 1 names an unknown touchpoint: /docs
            ("email", "/landing"): (None, 0),
        }
    finally:
        store.close()
