"""With the broker gone: every component says it is not ready and why, `tracker check` fails
naming it, the beacon refuses at once instead of waiting out the produce timeout, the log stays
small, and SIGTERM or Ctrl-C still ends each process within its grace period, losing nothing that
was acknowledged."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Pipeline, component_env, http, make_event
from tracker.cli.kafka_local import LocalKafka, free_port

pytestmark = pytest.mark.integration

GRACE = 10


def _until_not_ready(url: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body, _ = http("GET", url)
        if status == 503:
            answer: dict[str, Any] = body
            return answer
        time.sleep(0.2)
    raise AssertionError(f"{url} still ready {timeout}s after the broker stopped")


def _warning_kinds(log: Path) -> Counter[str]:
    """Warnings and errors by what they say: the whole line but its time."""
    kinds: Counter[str] = Counter()
    for line in log.read_bytes().splitlines():
        if line.startswith(b"{"):
            entry = orjson.loads(line)
            if entry.pop("level") in ("warning", "error", "critical"):
                entry.pop("ts")
                entry.pop("repeated", None)
                kinds[orjson.dumps(entry, option=orjson.OPT_SORT_KEYS).decode()] += 1
    return kinds


def test_a_broker_outage_is_reported_refused_fast_and_survives_a_stop(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "kafka", free_port())
    broker.start()
    env = component_env(
        broker.bootstrap,
        tmp_path,
        TRACKER_SHUTDOWN_GRACE_SECONDS=str(GRACE),
        # A request that waited out the produce timeout would outlast http()'s 30 s deadline.
        TRACKER_PRODUCE_TIMEOUT_SECONDS="600",
        TRACKER_KAFKA_PROBE_SECONDS="1",
        # One line per kind of warning for the whole test: a flood would show as more.
        TRACKER_LOG_REPEAT_SECONDS="3600",
    )
    pipeline = Pipeline(env, tmp_path)
    try:
        pipeline.start()
        acknowledged = [make_event() for _ in range(600)]
        for start in range(0, len(acknowledged), 200):
            assert pipeline.post(acknowledged[start : start + 200])[0] == 200

        broker.stop()
        beacon = _until_not_ready(pipeline.beacon_url + "/readyz")
        assert any(
            f"Kafka at {broker.bootstrap} is unreachable" in reason for reason in beacon["reasons"]
        ), beacon
        console = _until_not_ready(pipeline.console_url + "/readyz")
        assert any(f"Kafka at {broker.bootstrap}" in reason for reason in console["reasons"])

        check = subprocess.run(
            [sys.executable, "-m", "tracker", "check"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 1
        lines = dict(line.split("\t", 1) for line in check.stdout.splitlines())
        assert lines["beacon"].startswith("not ready: Kafka at"), check.stdout
        assert "unreachable" in lines["beacon"]
        assert lines["console"].startswith("not ready:"), check.stdout

        status, body, headers = pipeline.post([make_event()])
        assert status == 503, body
        assert int(headers["Retry-After"]) >= 1
        assert "Kafka is unavailable" in body["error"]

        # Ctrl-C to the worker, SIGTERM to the beacon, with the broker still down.
        worker, collector = pipeline.components
        assert worker.process is not None and collector.process is not None
        worker.process.send_signal(signal.SIGINT)
        collector.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=GRACE + 10) == 0, pipeline.data_dir / "worker.log"
        assert collector.process.wait(timeout=GRACE + 10) == 0
        worker.process = collector.process = None

        for log in ("worker.log", "beacon.log"):
            flooded = {k: n for k, n in _warning_kinds(tmp_path / log).items() if n > 1}
            assert not flooded, f"{log} repeats: {flooded}"

        broker.start()
        pipeline.start()
        ids = ",".join(f"'{e['event_id']}'" for e in acknowledged)
        landed = pipeline.wait_for(
            f"SELECT count(), uniqExact(event_id) FROM touchpoints WHERE event_id IN ({ids})",
            "600\t600",
            timeout=120,
        )
        assert landed == "600\t600"
    finally:
        pipeline.stop()
        broker.stop()
