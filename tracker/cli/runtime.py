"""``tracker up``: the whole pipeline on one machine, with embedded defaults.

It starts a local Kafka broker (unless ``TRACKER_KAFKA_BOOTSTRAP`` names one), creates the
topics, then runs the worker (which holds ClickHouse and the console) and the collectors as child
processes. A component that dies is started again after a backoff (tracker/cli/supervision.py), the
others running on meanwhile; one that keeps dying stops everything. On Ctrl-C or SIGTERM it stops
them in order: collectors first, so nothing new arrives, then the worker, which flushes and
commits, then the broker.
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
from dataclasses import dataclass, field

from tracker.cli.kafka_local import LocalKafka
from tracker.cli.supervision import RestartPolicy, Supervisor
from tracker.kafka.topology import ensure_topics
from tracker.settings import Settings

__all__ = ["run_up"]

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 120.0


@dataclass
class Child:
    """A ``python -m tracker ...`` process, in its own process group so that Ctrl-C reaches only
    the supervisor, which stops the children in order."""

    name: str
    args: list[str]
    env: dict[str, str]
    ready_url: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        self.process = subprocess.Popen(self.args, env=self.env, start_new_session=True)

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.ready_url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("component did not stop in time; killing", extra={"component": self.name})
            process.kill()
            process.wait()


@dataclass
class Broker:
    """The local Kafka broker as a supervised component."""

    kafka: LocalKafka
    name: str = "kafka"

    @property
    def pid(self) -> int | None:
        return self.kafka.pid

    def start(self) -> None:
        self.kafka.launch()

    def exit_code(self) -> int | None:
        return self.kafka.exit_code()


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
    supervisor = Supervisor(RestartPolicy.from_settings(settings))
    kafka: LocalKafka | None = None
    if settings.uses_local_kafka:
        kafka = LocalKafka(
            settings.data_dir / "kafka",
            settings.kafka_local_port,
            controller_port=settings.kafka_local_port + 1,
        )
        kafka.start()
        supervisor.watch(Broker(kafka), time.monotonic())
        log.info("component started", extra={"component": "kafka", "pid": kafka.pid})
    env = {
        **os.environ,
        "TRACKER_KAFKA_BOOTSTRAP": settings.bootstrap_servers,
        "TRACKER_DATA_DIR": str(settings.data_dir),
    }
    python = [sys.executable, "-m", "tracker"]

    def child(name: str, args: list[str], port: int) -> Child:
        return Child(name, [*python, *args], env, f"http://127.0.0.1:{port}/readyz")

    children = [
        child("worker", ["worker"], settings.console_port),
        child("beacon", ["serve", "beacon"], settings.beacon_port),
        child("links", ["serve", "links"], settings.links_port),
        child("calls", ["serve", "calls"], settings.calls_port),
        child("email", ["serve", "email"], settings.email_port),
        child("helpdesk", ["serve", "helpdesk"], settings.helpdesk_port),
    ]
    try:
        asyncio.run(ensure_topics(settings))
        for component in children:
            component.start()
            supervisor.watch(component, time.monotonic())
            log.info("component started", extra={"component": component.name, "pid": component.pid})
        pending = list(children)
        ready_by = time.monotonic() + READY_TIMEOUT_SECONDS
        while not stopping:
            if not supervisor.tick(time.monotonic()):
                failed = True
                break
            if pending:
                pending = [c for c in pending if c.exit_code() is not None or not c.ready()]
                if not pending:
                    _log_ready(settings)
                elif time.monotonic() > ready_by:
                    log.error(
                        "components not ready in time",
                        extra={"components": [c.name for c in pending]},
                    )
                    failed = True
                    break
            time.sleep(0.2)
    finally:
        for component in reversed(children):  # collectors first, then the worker
            # Each ends itself within its grace period; killed only if that somehow fails.
            component.stop(settings.shutdown_grace_seconds + 10)
        if kafka is not None:
            kafka.stop()
    log.info("tracker stopped", extra={"failed": failed})
    return 1 if failed else 0


def _log_ready(settings: Settings) -> None:
    log.info(
        "tracker is ready",
        extra={
            "console": f"http://127.0.0.1:{settings.console_port}/",
            "beacon": f"http://{settings.host}:{settings.beacon_port}/v1/events",
            "links": settings.links_base_url,
            "calls": f"http://{settings.host}:{settings.calls_port}/v1/calls/{{provider}}",
            "email": f"http://{settings.host}:{settings.email_port}/v1/email/{{provider}}",
            "helpdesk": f"http://{settings.host}:{settings.helpdesk_port}/v1/helpdesk/{{provider}}",
            "kafka": settings.bootstrap_servers,
            "clickhouse": "embedded chDB" if settings.uses_embedded_clickhouse else "server",
            "data_dir": str(settings.data_dir),
        },
    )
