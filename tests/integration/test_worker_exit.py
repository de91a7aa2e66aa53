"""`tracker worker` ends with a non-zero exit code on a fatal error, so an orchestrator (or
`tracker up`) restarts it, instead of exiting 0 or hanging on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import component_env
from tracker.cli.kafka_local import LocalKafka
from tracker.kafka.topology import Topology
from tracker.settings import Settings

pytestmark = pytest.mark.integration

# The worker as `tracker worker` runs it, with the batch runner itself failing the way an
# unforeseen bug would. (A handler's failure is isolated by the runner and becomes a dead letter;
# only a failure outside that isolation crashes the agent.)
CRASHING_AGENT = """
import sys
import agents.batches

async def broken(self, records):
    raise RuntimeError("an unforeseen bug in the dead-letter agent")

agents.batches.BatchRunner.run = broken
from tracker.cli import main
sys.exit(main(["worker"]))
"""


def _log_entries(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.startswith(b"{")]


def test_a_worker_whose_clickhouse_cannot_open_exits_non_zero(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    broken = tmp_path / "clickhouse"
    broken.write_text("not a database directory")
    env = component_env(kafka.bootstrap, tmp_path, TRACKER_CLICKHOUSE_URL=f"chdb://{broken}")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.run(
            [sys.executable, "-m", "tracker", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    assert worker.returncode == 1, log.read_text()[-4000:]
    assert "tracker: ClickHouse command failed: Unable to open the chdb engine" in log.read_text()


def test_a_worker_whose_agent_crashes_exits_non_zero(kafka: LocalKafka, tmp_path: Path) -> None:
    env = component_env(kafka.bootstrap, tmp_path)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-c", CRASHING_AGENT], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        topic = Topology.from_settings(Settings.from_env(env)).dead_letters.name
        asyncio.run(_produce(kafka.bootstrap, topic, b'{"reason": "a dead letter"}'))
        code = worker.wait(120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert code == 1, log.read_text()[-4000:]
    crashed = [e for e in _log_entries(log) if e.get("level") in ("error", "critical")]
    assert any("an unforeseen bug in the dead-letter agent" in str(e) for e in crashed)


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()
