"""The provisioned Grafana dashboards: valid JSON on provisioned data sources; every Prometheus
query names only metrics Tracker exports and parses in promtool; every ClickHouse panel's SQL runs
on the project's own tables (the migrations, in chDB) and answers what its title says."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.chdb_probe import probe
from tests.conftest import debian_tool
from tracker import metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"

# The grafana-clickhouse-datasource macros, expanded as the plugin does, for a window of
# [now - 1 day, now + 1 hour].
_WINDOW = ("toDateTime(now() - INTERVAL 1 DAY)", "toDateTime(now() + INTERVAL 1 HOUR)")
_MACROS = [
    (r"\$__timeFilter\((\w+)\)", rf"\1 >= {_WINDOW[0]} AND \1 <= {_WINDOW[1]}"),
    (r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(toDateTime(\1), INTERVAL 60 second)"),
    (r"\$__fromTime\b", _WINDOW[0]),
    (r"\$__toTime\b", _WINDOW[1]),
]


def _panels(name: str) -> list[dict[str, Any]]:
    board = orjson.loads((DASHBOARDS / name).read_bytes())
    return [p for p in board["panels"] if p["type"] != "row"]


def _sql(panel: dict[str, Any]) -> str:
    sql: str = panel["targets"][0]["rawSql"]
    for pattern, replacement in _MACROS:
        sql = re.sub(pattern, replacement, sql)
    assert "$" not in sql, f"{panel['title']}: a macro the test does not expand: {sql}"
    return sql


def test_dashboards_are_json_on_the_provisioned_data_sources() -> None:
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "tracker.yaml").read_text()
    )
    uids = {d["uid"]: d["type"] for d in provisioned["datasources"]}
    assert uids == {"prometheus": "prometheus", "clickhouse": "grafana-clickhouse-datasource"}
    boards = sorted(p.name for p in DASHBOARDS.glob("*.json"))
    assert boards == ["tracker-operations.json", "tracker-touchpoints.json"]
    for name in boards:
        panels = _panels(name)
        assert panels, name
        ids = [p["id"] for p in orjson.loads((DASHBOARDS / name).read_bytes())["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: panel ids repeat"
        for panel in panels:
            for target in panel["targets"]:
                assert uids.get(target["datasource"]["uid"]) == target["datasource"]["type"]


def test_operations_queries_name_only_exported_metrics_and_parse_in_promtool(
    tmp_path: Path,
) -> None:
    exported = {
        m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")
    }
    rules = (DEPLOY / "prometheus" / "tracker-rules.yml").read_text()
    recorded = set(re.findall(r"record: (\S+)", rules))
    exprs = [t["expr"] for p in _panels("tracker-operations.json") for t in p["targets"]]
    for expr in exprs:
        for name in re.findall(r"\b(tracker_[a-z_]+)", expr):
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)
            assert base in exported or name in exported, f"{name} is not exported: {expr}"
        for name in re.findall(r"\b(tracker:[a-z0-9_:]+)", expr):
            assert name in recorded, f"{name} is no recording rule: {expr}"
    # promtool parses PromQL when it checks rules: each query becomes a recording rule
    as_rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": e.replace("$__rate_interval", "5m")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(as_rules))
    promtool = debian_tool("promtool", "prometheus")
    check = subprocess.run(
        [promtool, "check", "rules", "dashboard.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _touchpoint(
    n: int, channel: str, *, kind: str = "", score: str = "NULL", bot: bool = False, **more: str
) -> str:
    columns = {
        "event_id": f"'00000000-0000-4000-8000-{n:012d}'",
        "version": more.pop("version", "1"),
        "type": more.pop("type", "'survey_response'" if kind else "'page_view'"),
        "source": "'web_beacon'",
        "channel": f"'{channel}'",
        "ts": "now64(3) - INTERVAL 1 HOUR",
        "device_ts": "now64(3) - INTERVAL 1 HOUR",
        "received_ts": "now64(3) - INTERVAL 1 HOUR",
        "customer_id": more.pop("customer_id", f"'c{n}'"),
        "stage": "'consideration'",
        "survey_kind": f"'{kind}'",
        "survey_score": score,
        "is_bot": "true" if bot else "false",
        "value": more.pop("value", "NULL"),
    }
    return (
        f"INSERT INTO tracker.touchpoints ({', '.join(columns)}) "
        f"SELECT {', '.join(columns.values())}"
    )


SAMPLE = [
    _touchpoint(1, "web"),
    _touchpoint(1, "web", version="2"),  # a newer version of the same event: counted once
    _touchpoint(2, "web", type="'purchase'", value="120.5", customer_id="'c1'"),
    _touchpoint(3, "email"),
    _touchpoint(4, "web", bot=True),
    _touchpoint(5, "web", kind="nps", score="10"),
    _touchpoint(6, "web", kind="nps", score="9"),
    _touchpoint(7, "phone", kind="nps", score="3"),
    _touchpoint(8, "web", kind="csat", score="5"),
    _touchpoint(9, "web", kind="csat", score="2"),
    _touchpoint(10, "web", kind="ces", score="2"),
    _touchpoint(11, "web", kind="ces", score="4"),
    "INSERT INTO tracker.frictions (friction_id, version, customer_id, event_id, ts, reason, "
    "severity, retracted) VALUES ('f1', 1, 'c7', 'e7', now64(3) - INTERVAL 1 HOUR, 'low_nps', "
    "'high', false), ('f2', 1, 'c8', 'e8', now64(3) - INTERVAL 1 HOUR, 'bounce', 'low', true)",
]


@pytest.fixture(scope="module")
def answers() -> dict[str, tuple[str | None, list[list[str]]]]:
    panels = _panels("tracker-touchpoints.json")
    assert all(p["datasource"]["uid"] == "clickhouse" for p in panels)
    found = probe([_sql(p) for p in panels], setup=SAMPLE)
    return {p["title"]: (a.error, a.rows) for p, a in zip(panels, found, strict=True)}


def test_every_analytics_panel_runs_on_the_projects_tables(
    answers: dict[str, tuple[str | None, list[list[str]]]],
) -> None:
    failed = {title: error for title, (error, _) in answers.items() if error}
    assert not failed, failed
    assert len(answers) >= 10


def test_the_analytics_panels_answer_what_their_titles_say(
    answers: dict[str, tuple[str | None, list[list[str]]]],
) -> None:
    def single(title: str) -> float:
        [[value]] = answers[title][1]
        return float(value)

    assert single("NPS") == 33.3  # two promoters, one detractor of three
    assert single("CSAT") == 50.0  # one of two answers is 4 or 5
    assert single("CES") == 3.0
    volume = {row[0]: int(row[1]) for row in answers["Volume by channel"][1]}
    assert volume == {"web": 8, "email": 1, "phone": 1}  # the bot left out, version 2 once
    conversion = {row[0]: row[1:] for row in answers["Conversion by channel"][1]}
    assert conversion["web"][1] == "1" and float(conversion["web"][3]) == 120.5
    frictions = answers["Frictions by reason and severity"][1]
    assert frictions == [["low_nps", "high", "1", "1"]]  # the retracted one left out
