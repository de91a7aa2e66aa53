"""Health that tells the truth: readiness says why, lag stays right after retention, repeated
errors cannot fill a disk, and the settings for it are read and checked."""

from __future__ import annotations

import asyncio
import io
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from agents.services import partition_lag
from collectors.beacon import create_app
from tracker.cli.kafka_local import free_port
from tracker.errors import BackpressureError, ConfigError
from tracker.kafka.producer import KafkaPublisher, MemoryPublisher
from tracker.logs import JsonFormatter, RepeatFilter
from tracker.metrics import STAGE_LAG, observe_stage_lag
from tracker.settings import Settings


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _logger(interval: float, clock: _Clock) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter(interval, clock))
    logger = logging.getLogger(f"test-repeats-{id(out)}")
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    return logger, out


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_an_error_repeated_through_an_outage_is_one_line_per_interval_with_a_count() -> None:
    clock = _Clock()
    logger, out = _logger(60.0, clock)
    for second in range(180):  # three minutes of an outage, a hundred errors a second
        clock.now = 1000.0 + second
        for _ in range(100):
            logger.error("Unable connect to node with id %s", 1)
            logger.warning("kafka not reachable yet", extra={"retry_in": 10.0})
    lines = _lines(out)
    assert len(lines) == 6
    assert [line.get("repeated") for line in lines] == [None, None, 5999, 5999, 5999, 5999]
    assert {line["msg"] for line in lines} == {
        "Unable connect to node with id 1",
        "kafka not reachable yet",
    }


def test_other_kinds_and_info_lines_are_not_held_back() -> None:
    clock = _Clock()
    logger, out = _logger(60.0, clock)
    logger.warning("kafka not reachable yet")
    logger.error("ClickHouse refused a batch")
    logger.warning("kafka not reachable yet")
    # The same message about two subjects says two things: both are written.
    logger.warning("component exited; restarting", extra={"component": "worker"})
    logger.warning("component exited; restarting", extra={"component": "kafka"})
    for _ in range(3):
        logger.info("worker started")
    assert [(line["msg"], line.get("component")) for line in _lines(out)] == [
        ("kafka not reachable yet", None),
        ("ClickHouse refused a batch", None),
        ("component exited; restarting", "worker"),
        ("component exited; restarting", "kafka"),
        ("worker started", None),
        ("worker started", None),
        ("worker started", None),
    ]


def test_lag_after_retention_deleted_uncommitted_segments_counts_only_what_is_left() -> None:
    # 1,000 records were written; retention deleted the first 900 before anything committed.
    assert partition_lag(end=1000, committed=None, start=900) == 100
    assert partition_lag(end=1000, committed=400, start=900) == 100
    assert partition_lag(end=1000, committed=950, start=900) == 50
    assert partition_lag(end=1000, committed=1000, start=900) == 0
    assert partition_lag(end=0, committed=None, start=0) == 0


def test_stage_lag_is_observed_from_receipt_for_datetimes_and_wire_text() -> None:
    before = _count("write")
    received = datetime.now(UTC) - timedelta(seconds=2)
    observe_stage_lag("write", [received, received.isoformat(), None])
    assert _count("write") == before + 2


def _count(stage: str) -> int:
    for family in STAGE_LAG.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels == {"stage": stage}:
                return int(sample.value)
    return 0


async def test_readyz_names_the_reason_a_collector_is_not_ready(tmp_path: Path) -> None:
    publisher = MemoryPublisher()
    settings = Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_HASH_SALT": "s"})
    async with TestClient(TestServer(create_app(settings, publisher))) as client:
        assert (await client.get("/readyz")).status == 200
        publisher.unavailable = True
        response = await client.get("/readyz")
        assert response.status == 503
        assert await response.json() == {
            "status": "not ready",
            "reasons": ["memory publisher marked unavailable"],
        }


async def test_a_publisher_without_kafka_says_so_and_refuses_without_waiting(
    tmp_path: Path,
) -> None:
    closed = free_port()  # nothing listens here
    settings = Settings.from_env(
        {
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed}",
            # Were a request to wait out the produce timeout, the deadline below would fail it.
            "TRACKER_PRODUCE_TIMEOUT_SECONDS": "3600",
        }
    )
    publisher = KafkaPublisher(settings)
    await publisher.start()
    try:
        assert not publisher.ready
        assert f"127.0.0.1:{closed}" in publisher.unready
        async with asyncio.timeout(30):
            with pytest.raises(BackpressureError, match="Kafka is unavailable") as refused:
                await publisher.publish([])
        assert refused.value.retry_after == settings.retry_after_seconds
    finally:
        async with asyncio.timeout(30):
            await publisher.stop()


def test_health_settings_are_read_and_checked() -> None:
    defaults = Settings.from_env({})
    assert (
        defaults.kafka_probe_seconds,
        defaults.shutdown_grace_seconds,
        defaults.log_repeat_seconds,
    ) == (2.0, 30.0, 60.0)
    grace = Settings.from_env({"TRACKER_SHUTDOWN_GRACE_SECONDS": "12.5"})
    assert grace.shutdown_grace_seconds == 12.5
    with pytest.raises(ConfigError, match="TRACKER_SHUTDOWN_GRACE_SECONDS must be positive"):
        Settings.from_env({"TRACKER_SHUTDOWN_GRACE_SECONDS": "0"})


HANGING_STOP = """
import time
from tracker.shutdown import ShutdownDeadline

deadline = ShutdownDeadline(1.0)
deadline.arm()
deadline.arm()  # a second signal does not restart the clock
time.sleep(3600)  # a last flush to a Kafka or ClickHouse that never answers
"""


def test_a_stop_that_hangs_still_ends_the_process_within_the_grace_period() -> None:
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-c", HANGING_STOP], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    try:
        assert process.wait(timeout=1.0 + 10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
