"""Faults of the real broker and the real ClickHouse engine while events arrive: each ends with
every acknowledged event in ClickHouse exactly once. The times they take are figures of
bench/faults.py, not assertions here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from tests.conftest import Pipeline, _worker_caught_up, component_env, http, make_event
from tracker.cli.kafka_local import LocalKafka, free_port
from tracker.kafka.topology import Topology
from tracker.settings import Settings

pytestmark = pytest.mark.integration


def table_folder(pipeline: Pipeline, table: str) -> Path:
    """Where the embedded engine keeps ``table``'s parts, as the engine itself says."""
    [path] = pipeline.query(
        f"SELECT arrayJoin(data_paths) FROM system.tables "
        f"WHERE database = 'tracker' AND name = '{table}'"
    ).split()
    return Path(path)


@contextmanager
def immutable(folder: Path) -> Iterator[None]:
    """The folder made immutable (``chattr +i``): no file can be made in it, even by root, so
    every insert into its table fails while reads go on. Skips where chattr is not permitted."""
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr (e2fsprogs) is not installed: cannot make ClickHouse refuse writes")
    made = subprocess.run([chattr, "+i", str(folder)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(
            f"chattr +i is not permitted here (needs CAP_LINUX_IMMUTABLE and a file system "
            f"with attributes): {made.stderr.strip()}"
        )
    try:
        probe = folder / "probe"
        try:
            probe.mkdir()
        except PermissionError:
            pass
        else:
            probe.rmdir()
            pytest.skip(f"{folder} stays writable after chattr +i on this file system")
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def worker_unready(pipeline: Pipeline) -> list[str]:
    status, body, _ = http("GET", pipeline.console_url + "/readyz")
    return list(body.get("reasons", [])) if status == 503 else []


def test_clickhouse_refusing_writes_delays_the_backlog_and_loses_nothing(
    pipeline: Pipeline,
) -> None:
    before = [make_event() for _ in range(100)]
    assert pipeline.post(before)[0] == 200
    assert pipeline.wait_for("SELECT count() FROM touchpoints", "100") == "100"
    folder = table_folder(pipeline, "touchpoints")

    during = [make_event() for _ in range(200)]
    with immutable(folder):
        for start in range(0, len(during), 50):
            assert pipeline.post(during[start : start + 50])[0] == 200  # Kafka holds them
        deadline = time.monotonic() + 60
        while not any("refuses writes to touchpoints" in r for r in worker_unready(pipeline)):
            assert time.monotonic() < deadline, "the worker's /readyz never named the fault"
            time.sleep(0.3)
        assert pipeline.query("SELECT count() FROM touchpoints").strip() == "100"

    # Writable again: the backlog drains, once each, and nothing healthy became a dead letter.
    assert (
        pipeline.wait_for(
            "SELECT count(), uniqExact(event_id) FROM touchpoints", "300\t300", timeout=90
        )
        == "300\t300"
    )
    ids = ",".join(f"'{e['event_id']}'" for e in before + during)
    assert pipeline.query(f"SELECT count() FROM touchpoints WHERE event_id IN ({ids})") == "300\n"
    assert pipeline.query("SELECT count() FROM dead_letters").strip() == "0"
    deadline = time.monotonic() + 30
    while reasons := worker_unready(pipeline):
        assert time.monotonic() < deadline, reasons
        time.sleep(0.3)


class Load(threading.Thread):
    """Posts batches of fresh events until stopped. A refused batch is sent again, ids and all,
    after its Retry-After, as a client does, so every event it made ends acknowledged."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(daemon=True)
        self.pipeline = pipeline
        self.stopping = threading.Event()
        self.acknowledged: list[str] = []
        self.refusals: dict[int, int] = {}

    def run(self) -> None:
        while not self.stopping.is_set():
            batch = [make_event() for _ in range(10)]
            while True:
                try:
                    status, _, headers = self.pipeline.post(batch)
                except OSError:
                    status, headers = 0, {}
                if status == 200:
                    self.acknowledged += [e["event_id"] for e in batch]
                    break
                self.refusals[status] = self.refusals.get(status, 0) + 1
                time.sleep(float(headers.get("Retry-After", 1)))
            time.sleep(0.02)


def where_missing(pipeline: Pipeline, acknowledged: list[str]) -> str:
    """For a failure: the acknowledged events not stored, whether the raw topic holds them, and
    which of the worker's consumers are behind."""
    ids = ",".join(f"'{i}'" for i in acknowledged)
    stored = set(
        pipeline.query(
            f"SELECT toString(event_id) FROM touchpoints WHERE event_id IN ({ids})"
        ).split()
    )
    missing = [i for i in acknowledged if i not in stored]
    topology = Topology.from_settings(Settings.from_env(pipeline.env))

    async def on(topic: str) -> set[str]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=pipeline.env["TRACKER_KAFKA_BOOTSTRAP"],
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        found: set[str] = set()
        try:
            while batches := await consumer.getmany(timeout_ms=3000):
                for records in batches.values():
                    found.update(
                        i for i in missing if any(i.encode() in (r.value or b"") for r in records)
                    )
        finally:
            await consumer.stop()
        return found

    where = {
        name: len(asyncio.run(on(spec.name)))
        for name, spec in (
            ("raw", topology.raw),
            ("identity", topology.identity),
            ("journey", topology.journey),
        )
    }
    letters = pipeline.query(
        "SELECT count() FROM dead_letters WHERE "
        + " OR ".join(f"positionUTF8(payload, '{i}') > 0" for i in missing[:50])
    ).strip()
    behind: dict[str, int] = {}

    async def lag() -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await _worker_caught_up(pipeline.env, behind)

    asyncio.run(lag())
    return (
        f"{len(missing)} acknowledged events not stored: {missing[:5]}; how many of them each "
        f"topic holds: {where}; dead letters naming them: {letters}; the worker's consumers "
        f"behind: {behind}"
    )


def test_broker_killed_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "kafka", free_port())
    broker.start()
    pipeline = Pipeline(component_env(broker.bootstrap, tmp_path), tmp_path)
    load = Load(pipeline)
    try:
        pipeline.start()
        load.start()
        deadline = time.monotonic() + 60
        while len(load.acknowledged) < 300:
            assert time.monotonic() < deadline and load.is_alive()
            time.sleep(0.1)

        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGKILL)  # no clean shutdown: in-flight requests are cut
        broker.stop()  # reaps the killed process
        acknowledged_at_kill = len(load.acknowledged)
        time.sleep(3)  # the load keeps coming while the broker is away
        broker.start()
        deadline = time.monotonic() + 120
        while len(load.acknowledged) < acknowledged_at_kill + 300:
            assert time.monotonic() < deadline, f"refusals after the restart: {load.refusals}"
            time.sleep(0.2)
        load.stopping.set()
        load.join(60)

        assert load.refusals.get(503, 0) > 0  # the beacon said so while the broker was away
        total = len(load.acknowledged)
        ids = ",".join(f"'{i}'" for i in load.acknowledged)
        expected = f"{total}\t{total}"
        stored = pipeline.wait_for(
            f"SELECT count(), uniqExact(event_id) FROM touchpoints WHERE event_id IN ({ids})",
            expected,
            timeout=120,
        )
        assert stored == expected, where_missing(pipeline, load.acknowledged)
        assert pipeline.query("SELECT count() - uniqExact(event_id) FROM touchpoints") == "0\n"
    finally:
        load.stopping.set()
        pipeline.stop()
        broker.stop()
