"""A real Prometheus server scrapes a running pipeline with the shipped rules loaded: the lag and
throughput series exist and move under load, and stopping the broker fires its alert.

The rule file is a copy of deploy/prometheus/tracker-rules.yml with one change, so that the test
need not wait five minutes: TrackerKafkaUnavailable's ``for:`` is 5 s instead of 5 m. Scrapes and
evaluations run every second.
"""

from __future__ import annotations

import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Pipeline, component_env, debian_tool, http, make_event
from tracker.cli.kafka_local import LocalKafka, free_port

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "tracker-rules.yml"
STAGES = ("ingest", "identity", "journey", "write")


def linking_event() -> dict[str, object]:
    """An event that links a new visitor to a new email: it takes every stage, the ordered
    identity log included (an event with one identifier goes straight to its customer)."""
    return make_event(email=f"visitor-{uuid.uuid4().hex[:12]}@example.com")


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        status, body, _ = http("GET", f"{self.url}/api/v1/query?query={urllib.parse.quote(expr)}")
        assert status == 200, body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def until(self, what: str, check: Callable[[], bool], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise AssertionError(f"Prometheus never saw {what} within {timeout}s")

    def at_least(self, expr: str, minimum: float) -> Callable[[], bool]:
        def check() -> bool:
            value = self.value(expr)
            return value is not None and value >= minimum

        return check

    def firing(self, alert: str) -> list[dict[str, Any]]:
        status, body, _ = http("GET", f"{self.url}/api/v1/alerts")
        assert status == 200, body
        return [
            a
            for a in body["data"]["alerts"]
            if a["labels"]["alertname"] == alert and a["state"] == "firing"
        ]


def _short_rules(target: Path) -> None:
    """The shipped rules, with TrackerKafkaUnavailable's ``for:`` shortened; nothing else."""
    rules = yaml.safe_load(RULES.read_text())
    shortened = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "TrackerKafkaUnavailable":
                rule["for"] = "5s"
                shortened += 1
    assert shortened == 1
    target.write_text(yaml.safe_dump(rules))


@pytest.fixture
def outage_pipeline(tmp_path: Path) -> Iterator[tuple[Pipeline, LocalKafka]]:
    broker = LocalKafka(tmp_path / "kafka", free_port())
    broker.start()
    env = component_env(
        broker.bootstrap,
        tmp_path,
        TRACKER_KAFKA_PROBE_SECONDS="1",
        # The pipeline stops with the broker down: well within the fixture's 30 s to stop.
        TRACKER_SHUTDOWN_GRACE_SECONDS="10",
    )
    pipeline = Pipeline(env, tmp_path)
    try:
        yield pipeline.start(), broker
    finally:
        pipeline.stop()
        broker.stop()


@pytest.fixture
def prometheus(
    outage_pipeline: tuple[Pipeline, LocalKafka], tmp_path: Path
) -> Iterator[Prometheus]:
    binary = debian_tool("prometheus", "prometheus")
    pipeline, _ = outage_pipeline
    folder = tmp_path / "prometheus"
    folder.mkdir()
    _short_rules(folder / "rules.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                "job_name": "tracker",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{pipeline.env['TRACKER_BEACON_PORT']}"],
                        "labels": {"instance": "beacon"},
                    },
                    {
                        "targets": [f"127.0.0.1:{pipeline.env['TRACKER_CONSOLE_PORT']}"],
                        "labels": {"instance": "worker"},
                    },
                ],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        server.until("itself ready", lambda: _answers(server.url + "/-/ready"), timeout=60)
        yield server
    finally:
        process.terminate()
        process.wait(30)


def _answers(url: str) -> bool:
    try:
        return http("GET", url)[0] == 200
    except OSError:
        return False


def test_prometheus_sees_lag_and_throughput_move_and_the_stopped_broker_alert_fire(
    outage_pipeline: tuple[Pipeline, LocalKafka], prometheus: Prometheus
) -> None:
    pipeline, broker = outage_pipeline
    prometheus.until("both targets up", prometheus.at_least('sum(up{job="tracker"})', 2))
    assert prometheus.value('tracker_kafka_reachable{instance="beacon"}') == 1

    for _ in range(3):
        assert pipeline.post([linking_event() for _ in range(100)])[0] == 200
    accepted = 'sum(tracker_collector_events_total{outcome="accepted"})'
    written = 'sum(tracker_stage_lag_seconds_count{stage="write"})'
    prometheus.until("the first load accepted", prometheus.at_least(accepted, 300))
    for stage in STAGES:
        prometheus.until(
            f"stage {stage}",
            prometheus.at_least(f'sum(tracker_stage_lag_seconds_count{{stage="{stage}"}})', 300),
        )
    first = prometheus.value(written)
    assert first is not None

    for _ in range(3):
        assert pipeline.post([linking_event() for _ in range(100)])[0] == 200
    prometheus.until("the second load accepted", prometheus.at_least(accepted, 600))
    prometheus.until("the write lag count move", prometheus.at_least(written, first + 300))
    p99 = prometheus.value(
        'histogram_quantile(0.99, sum by (le) (rate(tracker_stage_lag_seconds_bucket{stage="write"}[1m])))'
    )
    assert p99 is not None and p99 > 0

    # Per-partition consumer lag: one series per raw partition the worker owns, back to 0 once
    # the load is stored.
    raw = f"{pipeline.env['TRACKER_TOPIC_PREFIX']}touchpoints.raw"
    lag = f'tracker_worker_partition_lag_events{{instance="worker",topic="{raw}"}}'
    prometheus.until(
        "a lag series for every raw partition",
        lambda: len(prometheus.query(lag)) == 4,
    )
    prometheus.until("the raw lag back at 0", lambda: prometheus.value(f"max({lag})") == 0)
    assert not prometheus.firing("TrackerKafkaUnavailable")

    broker.stop()
    prometheus.until(
        "TrackerKafkaUnavailable firing for the beacon and the worker",
        lambda: (
            {a["labels"]["instance"] for a in prometheus.firing("TrackerKafkaUnavailable")}
            == {"beacon", "worker"}
        ),
    )
