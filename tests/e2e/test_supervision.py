"""`tracker up` as a supervisor: a killed worker or broker comes back by itself, the collectors
stay up meanwhile, and nothing the beacon acknowledged is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import http, make_event
from tracker.cli.kafka_local import free_port

pytestmark = pytest.mark.e2e

TRACKER = str(Path(sys.executable).with_name("tracker"))
BACKOFF_SECONDS = 6  # long enough to see the broker's absence from outside


@dataclass
class Up:
    """A running `tracker up` with its own data directory and ports."""

    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log_path: Path

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.env[f'TRACKER_{name.upper()}_PORT']}"

    def log(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_bytes().splitlines():
            if line.startswith(b"{"):
                entries.append(orjson.loads(line))
        return entries

    def entries(self, msg: str, component: str) -> list[dict[str, Any]]:
        return [e for e in self.log() if e["msg"] == msg and e.get("component") == component]

    def pids(self, component: str) -> list[int]:
        """Every process the supervisor has run as ``component``, in order."""
        return [
            e["pid"]
            for e in self.log()
            if e["msg"] in ("component started", "component restarted")
            and e.get("component") == component
        ]

    def wait_log(self, msg: str, component: str, count: int = 1, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.entries(msg, component)) < count:
            assert self.process.poll() is None, self.log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, f"no {msg!r} for {component} in {timeout}s"
            time.sleep(0.3)

    def post(self, events: list[dict[str, Any]]) -> tuple[int, Any, dict[str, str]]:
        return http("POST", self.url("beacon") + "/v1/events", orjson.dumps(events))

    def landed(self, events: list[dict[str, Any]], timeout: float = 120) -> str:
        """How many of ``events`` are in ClickHouse, waiting (through worker restarts) for all."""
        ids = ",".join(f"'{e['event_id']}'" for e in events)
        sql = orjson.dumps(
            {"sql": f"SELECT count() FROM touchpoints WHERE event_id IN ({ids})", "format": "tsv"}
        )
        expected, answer = str(len(events)), ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and answer != expected:
            try:
                status, body, _ = http("POST", self.url("console") + "/api/query", sql)
                answer = str(body).strip() if status == 200 else answer
            except urllib.error.URLError:  # the worker, with the console, may be restarting
                pass
            time.sleep(0.3)
        return answer


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    folder = tmp_path_factory.mktemp("supervised")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(
        TRACKER_DATA_DIR=str(folder / "data"),
        TRACKER_KAFKA_LOCAL_PORT=str(free_port()),
        TRACKER_CONSOLE_PORT=str(free_port()),
        TRACKER_BEACON_PORT=str(free_port()),
        TRACKER_LINKS_PORT=str(free_port()),
        TRACKER_CALLS_PORT=str(free_port()),
        TRACKER_EMAIL_PORT=str(free_port()),
        TRACKER_HELPDESK_PORT=str(free_port()),
        TRACKER_SINK_FLUSH_SECONDS="0.2",
        TRACKER_PRODUCE_TIMEOUT_SECONDS="2",
        TRACKER_RETRY_AFTER_SECONDS="1",
        TRACKER_SUPERVISOR_BACKOFF_SECONDS=str(BACKOFF_SECONDS),
        TRACKER_SUPERVISOR_MAX_BACKOFF_SECONDS="60",
        # Every failure in this module counts: the third test sees the worker's second one.
        TRACKER_SUPERVISOR_WINDOW_SECONDS="3600",
        TRACKER_SUPERVISOR_STABLE_SECONDS="3600",
    )
    log_path = folder / "up.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([TRACKER, "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    running = Up(process, env, log_path)
    try:
        deadline = time.monotonic() + 180
        while b'"msg":"tracker is ready"' not in log_path.read_bytes():
            assert process.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "tracker up was not ready in 180 s"
            time.sleep(0.5)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_killed_worker_is_restarted_while_the_beacon_keeps_acknowledging(up: Up) -> None:
    [beacon] = up.pids("beacon")
    [worker] = up.pids("worker")
    before = [make_event() for _ in range(40)]
    assert up.post(before)[0] == 200

    os.kill(worker, signal.SIGKILL)
    up.wait_log("component exited; restarting", "worker")
    [exited] = up.entries("component exited; restarting", "worker")
    assert exited["signal"] == "SIGKILL" and exited["delay_seconds"] == BACKOFF_SECONDS
    # The worker is down, waiting out its backoff: the beacon still takes events into Kafka.
    during = [make_event() for _ in range(40)]
    assert up.post(during)[0] == 200

    up.wait_log("component restarted", "worker")
    after = [make_event() for _ in range(40)]
    assert up.post(after)[0] == 200
    assert up.landed(before + during + after) == "120"
    assert up.pids("worker")[-1] != worker and _alive(up.pids("worker")[-1])
    assert up.pids("beacon") == [beacon] and _alive(beacon)


def test_a_killed_broker_is_restarted_and_the_collectors_answer_503_meanwhile(up: Up) -> None:
    collectors = {name: up.pids(name) for name in ("beacon", "links", "calls", "email", "helpdesk")}
    [kafka] = up.pids("kafka")
    before = [make_event() for _ in range(40)]
    assert up.post(before)[0] == 200

    os.kill(kafka, signal.SIGKILL)
    up.wait_log("component exited; restarting", "kafka")
    refused = [make_event() for _ in range(40)]
    status, body, headers = up.post(refused)
    assert status == 503, body
    assert int(headers["Retry-After"]) >= 1 and "Kafka" in body["error"]

    up.wait_log("component restarted", "kafka")
    # A client retries the refused batch, event ids and all, as Retry-After tells it.
    deadline = time.monotonic() + 120
    while (status := up.post(refused)[0]) != 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert status == 200
    after = [make_event() for _ in range(40)]
    assert up.post(after)[0] == 200

    assert up.landed(before + refused + after) == "120"
    assert {name: up.pids(name) for name in collectors} == collectors
    assert all(_alive(pid) for pids in collectors.values() for pid in pids)
    assert all(_ready(up.url(name)) for name in ("beacon", "links", "calls", "email", "helpdesk"))


def test_ctrl_c_during_a_backoff_stops_everything_without_waiting_it_out(up: Up) -> None:
    worker = up.pids("worker")[-1]
    collectors = [
        pid for name in ("beacon", "links", "calls", "email", "helpdesk") for pid in up.pids(name)
    ]
    failures_before = len(up.entries("component exited; restarting", "worker"))
    os.kill(worker, signal.SIGKILL)
    up.wait_log("component exited; restarting", "worker", count=failures_before + 1)
    delay = up.entries("component exited; restarting", "worker")[-1]["delay_seconds"]
    assert delay > BACKOFF_SECONDS  # a second failure waits longer than the first

    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(60) == 0
    log = up.log()
    stopping = next(i for i, e in enumerate(log) if e["msg"] == "shutting down")
    assert not [e for e in log[stopping:] if e["msg"] == "component restarted"]
    assert log[-1]["msg"] == "tracker stopped" and log[-1]["failed"] is False
    assert not any(_alive(pid) for pid in collectors)
