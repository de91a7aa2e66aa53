"""``tracker up``: the whole pipeline on one machine, with embedded defaults.

It starts a local Kafka broker (unless ``TRACKER_KAFKA_BOOTSTRAP`` names one), creates the
topics, then runs the worker (which holds ClickHouse and the console) and the collectors as child
processes. On Ctrl-C or SIGTERM it stops them in order: collectors first, so nothing new arrives,
then the worker, which flushes and commits, then the broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

from tracker.cli.kafka_local import LocalKafka
from tracker.kafka.topology import ensure_topics
from tracker.settings import Settings

__all__ = ["run_up"]

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    args: list[str]
    ready_url: str
    process: subprocess.Popen[bytes] | None = None


def run_up(settings: Settings) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    failed = False
    kafka: LocalKafka | None = None
    if settings.uses_local_kafka:
        kafka = LocalKafka(
            settings.data_dir / "kafka",
            settings.kafka_local_port,
            controller_port=settings.kafka_local_port + 1,
        )
        kafka.start()
    env = {
        **os.environ,
        "TRACKER_KAFKA_BOOTSTRAP": settings.bootstrap_servers,
        "TRACKER_DATA_DIR": str(settings.data_dir),
    }
    python = [sys.executable, "-m", "tracker"]
    worker = Child(
        "worker", [*python, "worker"], f"http://127.0.0.1:{settings.console_port}/readyz"
    )
    beacon = Child(
        "beacon", [*python, "serve", "beacon"], f"http://127.0.0.1:{settings.beacon_port}/readyz"
    )
    links = Child(
        "links", [*python, "serve", "links"], f"http://127.0.0.1:{settings.links_port}/readyz"
    )
    calls = Child(
        "calls", [*python, "serve", "calls"], f"http://127.0.0.1:{settings.calls_port}/readyz"
    )
    children = [worker, beacon, links, calls]
    try:
        asyncio.run(ensure_topics(settings))
        for child in children:
            # Own process groups: Ctrl-C reaches only this supervisor, which stops them in order.
            child.process = subprocess.Popen(child.args, env=env, start_new_session=True)
        if not _wait_ready(children, lambda: stopping):
            failed = not stopping
            stopping = True
        else:
            log.info(
                "tracker is ready",
                extra={
                    "console": f"http://127.0.0.1:{settings.console_port}/",
                    "beacon": f"http://{settings.host}:{settings.beacon_port}/v1/events",
                    "links": settings.links_base_url,
                    "calls": f"http://{settings.host}:{settings.calls_port}/v1/calls/{{provider}}",
                    "kafka": settings.bootstrap_servers,
                    "clickhouse": "embedded chDB"
                    if settings.uses_embedded_clickhouse
                    else "server",
                    "data_dir": str(settings.data_dir),
                },
            )
        while not stopping:
            for child in children:
                assert child.process is not None
                if child.process.poll() is not None:
                    log.error(
                        "a component exited; stopping",
                        extra={"component": child.name, "code": child.process.returncode},
                    )
                    stopping = failed = True
            time.sleep(0.2)
    finally:
        for child in reversed(children):  # collectors first, then the worker
            _stop(child)
        if kafka is not None:
            kafka.stop()
    log.info("tracker stopped", extra={"failed": failed})
    return 1 if failed else 0


def _wait_ready(children: list[Child], stopping: object, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    pending = list(children)
    while pending and time.monotonic() < deadline:
        if callable(stopping) and stopping():
            return False
        for child in list(pending):
            assert child.process is not None
            if child.process.poll() is not None:
                log.error(
                    "a component exited while starting",
                    extra={"component": child.name, "code": child.process.returncode},
                )
                return False
            try:
                with urllib.request.urlopen(child.ready_url, timeout=1) as response:
                    if response.status == 200:
                        pending.remove(child)
            except OSError:
                pass
        time.sleep(0.3)
    if pending:
        log.error("components not ready in time", extra={"components": [c.name for c in pending]})
    return not pending


def _stop(child: Child, timeout: float = 30.0) -> None:
    process = child.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("component did not stop in time; killing", extra={"component": child.name})
        process.kill()
        process.wait()
