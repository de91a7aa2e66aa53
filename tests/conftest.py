"""Fixtures shared by every test layer: a real Kafka broker per session and running components."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tracker.cli.kafka_local import LocalKafka, free_port
from tracker.kafka.topology import Topology
from tracker.settings import Settings


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A real Apache Kafka broker (KRaft) for the whole session. It never skips: no broker, no pass."""
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"), free_port())
    broker.start()
    yield broker
    broker.stop()


def component_env(kafka_bootstrap: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    """Environment for one isolated pipeline: its own topics, consumer group, database and ports."""
    suffix = uuid.uuid4().hex[:10]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(
        {
            "TRACKER_DATA_DIR": str(data_dir),
            "TRACKER_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "TRACKER_TOPIC_PREFIX": f"t{suffix}.",
            "TRACKER_WORKER_ID": f"tracker-test-{suffix}",
            "TRACKER_CLICKHOUSE_URL": f"chdb://{data_dir / 'clickhouse'}",
            "TRACKER_CONSOLE_PORT": str(free_port()),
            "TRACKER_BEACON_PORT": str(free_port()),
            "TRACKER_LINKS_PORT": str(free_port()),
            "TRACKER_CALLS_PORT": str(free_port()),
            "TRACKER_EMAIL_PORT": str(free_port()),
            "TRACKER_HELPDESK_PORT": str(free_port()),
            "TRACKER_SINK_FLUSH_SECONDS": "0.2",
            "TRACKER_PRODUCE_TIMEOUT_SECONDS": "3",
            "TRACKER_RETRY_AFTER_SECONDS": "2",
            "TRACKER_HASH_SALT": "test-salt",
        }
    )
    env.update(overrides)
    return env


@dataclass
class Component:
    """A Tracker process started as a user would start it: ``python -m tracker ...``."""

    args: list[str]
    env: dict[str, str]
    ready_url: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Component:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tracker", *self.args], env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.args} exited early:\n{self.log_path.read_text()[-4000:]}"
                )
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(
            f"{self.args} not ready in {timeout}s:\n{self.log_path.read_text()[-4000:]}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        process, self.process = self.process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise


@dataclass
class Pipeline:
    """A beacon and a worker on their own topics and database, driven over HTTP."""

    env: dict[str, str]
    data_dir: Path
    components: list[Component] = field(default_factory=list)

    @property
    def beacon_url(self) -> str:
        return f"http://127.0.0.1:{self.env['TRACKER_BEACON_PORT']}"

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{self.env['TRACKER_CONSOLE_PORT']}"

    def worker(self, **overrides: str) -> Component:
        env = {**self.env, **overrides}
        return Component(
            ["worker"],
            env,
            f"http://127.0.0.1:{env['TRACKER_CONSOLE_PORT']}/readyz",
            self.data_dir / "worker.log",
        )

    def beacon(self) -> Component:
        return Component(
            ["serve", "beacon"], self.env, f"{self.beacon_url}/readyz", self.data_dir / "beacon.log"
        )

    def links(self, **overrides: str) -> Component:
        """A links service; pass another TRACKER_LINKS_PORT to run a second one on the same topics."""
        env = {**self.env, **overrides}
        port = env["TRACKER_LINKS_PORT"]
        return Component(
            ["serve", "links"],
            env,
            f"http://127.0.0.1:{port}/readyz",
            self.data_dir / f"links-{port}.log",
        )

    @property
    def calls_url(self) -> str:
        return f"http://127.0.0.1:{self.env['TRACKER_CALLS_PORT']}"

    def calls(self) -> Component:
        return Component(
            ["serve", "calls"], self.env, f"{self.calls_url}/readyz", self.data_dir / "calls.log"
        )

    @property
    def email_url(self) -> str:
        return f"http://127.0.0.1:{self.env['TRACKER_EMAIL_PORT']}"

    def email(self) -> Component:
        return Component(
            ["serve", "email"], self.env, f"{self.email_url}/readyz", self.data_dir / "email.log"
        )

    @property
    def helpdesk_url(self) -> str:
        return f"http://127.0.0.1:{self.env['TRACKER_HELPDESK_PORT']}"

    def helpdesk(self) -> Component:
        return Component(
            ["serve", "helpdesk"],
            self.env,
            f"{self.helpdesk_url}/readyz",
            self.data_dir / "helpdesk.log",
        )

    def start(self) -> Pipeline:
        self.components = [self.worker().start(), self.beacon().start()]
        return self

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()

    def post(self, body: Any, path: str = "/v1/events") -> tuple[int, Any, dict[str, str]]:
        return http("POST", self.beacon_url + path, orjson.dumps(body))

    def query(self, sql: str) -> str:
        status, body, _ = http(
            "POST", self.console_url + "/api/query", orjson.dumps({"sql": sql, "format": "tsv"})
        )
        assert status == 200, body
        text: str = body
        return text

    def wait_until_handled(self, timeout: float = 60.0) -> None:
        """Return once the worker has handled everything on its input topics so far: every
        consumer group of the worker has committed, on every partition, the topic's end offset.

        Stages commit only after their output is written (ClickHouse, or the next stage's topic,
        acknowledged), so this proves that what was sent before it has gone all the way, on any
        partition. Fails the test on timeout."""
        behind: dict[str, int] = {}

        async def caught_up() -> None:
            async with asyncio.timeout(timeout):
                await _worker_caught_up(self.env, behind)

        try:
            asyncio.run(caught_up())
        except TimeoutError:
            pytest.fail(f"the worker did not catch up in {timeout}s; behind: {behind}")

    def wait_for(self, sql: str, expected: str, timeout: float = 30.0) -> str:
        """Poll until ``sql`` answers ``expected``; return the last answer either way."""
        deadline = time.monotonic() + timeout
        answer = ""
        while time.monotonic() < deadline:
            answer = self.query(sql).strip()
            if answer == expected:
                return answer
            time.sleep(0.2)
        return answer


async def _worker_caught_up(env: dict[str, str], behind: dict[str, int]) -> None:
    """Poll until no consumer group of the worker is behind; ``behind`` holds the last reading."""
    settings = Settings.from_env(env)
    topology = Topology.from_settings(settings)
    worker = settings.worker_id
    inputs = {  # each consumer group of the worker, and the topics it reads
        f"{worker}.ingest": [topology.raw.name],
        f"{worker}.clicks": [topology.click_batches.name],
        f"{worker}.writer": [topology.outputs.name],  # the stitch workers' records (role write)
        worker: [
            topology.dead_letters.name,
            topology.links.name,
            topology.calls.name,
            topology.identity.name,
            topology.journey.name,
        ],
    }
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    ends = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)  # no group: reads only
    await admin.start()
    await ends.start()
    try:
        while True:
            # Groups of a stage added later are found by name; their committed partitions count.
            for group, *_ in await admin.list_consumer_groups():
                if group == worker or group.startswith(f"{worker}."):
                    inputs.setdefault(group, [])
            named = sorted({topic for topics in inputs.values() for topic in topics})
            found = {
                described["topic"]: [p["partition"] for p in described["partitions"]]
                for described in await admin.describe_topics(named)
            }
            missing = [topic for topic in named if not found.get(topic)]
            if missing:  # every input topic is made before the worker starts: ask again
                behind.clear()
                behind.update(dict.fromkeys((f"{t} has no partitions yet" for t in missing), 0))
                await asyncio.sleep(0.2)
                continue
            wanted = {
                group: {
                    TopicPartition(topic, partition)
                    for topic in topics
                    for partition in found[topic]
                }
                for group, topics in inputs.items()
            }
            for group in wanted:
                wanted[group] |= set(await admin.list_consumer_group_offsets(group))
            partitions = sorted({tp for tps in wanted.values() for tp in tps})
            # Committed offsets read between two equal readings of the end offsets: an output
            # a stage produced meanwhile shows as a change of the ends.
            before = await ends.end_offsets(partitions)
            committed = {group: await admin.list_consumer_group_offsets(group) for group in wanted}
            after = await ends.end_offsets(partitions)
            behind.clear()
            behind.update(
                {
                    f"{group} {tp.topic}/{tp.partition}": before[tp] - _offset(committed[group], tp)
                    for group, tps in wanted.items()
                    for tp in tps
                    if _offset(committed[group], tp) < before[tp]
                }
            )
            if before == after and not behind:
                return
            await asyncio.sleep(0.2)
    finally:
        await ends.stop()
        await admin.close()


def _offset(committed: dict[TopicPartition, Any], partition: TopicPartition) -> int:
    found = committed.get(partition)
    return max(0, found.offset) if found is not None else 0


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
    """A plain HTTP call returning (status, parsed JSON or text, headers)."""
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, headers = exc.code, exc.read(), dict(exc.headers)
    if headers.get("Content-Type", "").startswith("application/json"):
        return status, orjson.loads(raw), headers
    if headers.get("Content-Type", "").startswith("image/"):
        return status, raw, headers
    return status, raw.decode(), headers


def make_event(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": "page_view",
        "ts": "2026-11-20T09:30:00Z",
        "anonymous_id": "anon-" + uuid.uuid4().hex[:8],
        "page": {"url": "https://shop.example.com/?utm_source=news&utm_medium=email"},
    }
    event.update(fields)
    return event


@pytest.fixture
def pipeline(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    running = Pipeline(component_env(kafka.bootstrap, tmp_path), tmp_path).start()
    yield running
    running.stop()


def metric_value(base_url: str, sample: str) -> float:
    """One sample from a component's /metrics, e.g. ``tracker_worker_events_total{outcome="written"}``."""
    _, text, _ = http("GET", base_url + "/metrics")
    return sample_in(str(text), sample)


async def scraped(client: Any, sample: str) -> float:
    """One sample from the /metrics of an app under an aiohttp ``TestClient``. Counters live in
    the process-wide registry, so compare values before and after an action: another test may
    have moved them already."""
    return sample_in(await (await client.get("/metrics")).text(), sample)


def sample_in(exposition: str, sample: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for_metric(base_url: str, sample: str, expected: float, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric_value(base_url, sample) >= expected:
            return True
        time.sleep(0.2)
    return False


def debian_tool(binary: str, package: str) -> str:
    """The path of a tool from a Debian package, installed with apt-get (as root) when missing.

    Tests that need it fail, never skip, when it cannot be had.
    """
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail(f"{binary} is missing; install it with `apt-get install -y {package}` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=900, check=False
        )
        if done.returncode != 0:
            pytest.fail(f"`{' '.join(command)}` failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    found = shutil.which(binary)
    if not found:
        pytest.fail(f"`apt-get install -y {package}` gave no {binary}")
    return found
