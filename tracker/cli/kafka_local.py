"""A single-node Apache Kafka broker (KRaft) for ``tracker up`` and the integration tests.

The jars come from Maven Central through Maven, pinned in ``deploy/kafka/pom.xml``, and are
cached under ``~/.cache/tracker/kafka/<version>`` (or ``TRACKER_KAFKA_CACHE``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import tracker
from tracker.errors import TrackerError

__all__ = [
    "KAFKA_VERSION",
    "LocalKafka",
    "LocalKafkaError",
    "fetch_kafka",
    "free_port",
    "kafka_files",
]


class LocalKafkaError(TrackerError):
    """The local broker could not be fetched or started; the message says what to do."""


log = logging.getLogger(__name__)


def kafka_files() -> Path:
    """The folder holding the pinned pom and log config: shipped in the wheel, or in the checkout."""
    package = Path(tracker.__file__).parent
    for candidate in (package / "_kafka", package.parent / "deploy" / "kafka"):
        if (candidate / "pom.xml").exists():
            return candidate
    raise FileNotFoundError("deploy/kafka/pom.xml is missing from this installation")


def _pinned_version() -> str:
    match = re.search(
        r"<artifactId>kafka_2\.13</artifactId>\s*<version>([^<]+)</version>",
        (kafka_files() / "pom.xml").read_text(),
    )
    if not match:
        raise RuntimeError("deploy/kafka/pom.xml does not pin kafka_2.13")
    return match.group(1)


KAFKA_VERSION = _pinned_version()


def _cache_root() -> Path:
    if configured := os.environ.get("TRACKER_KAFKA_CACHE"):
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tracker" / "kafka"


def fetch_kafka() -> Path:
    """The folder of broker jars, fetched with Maven on first use."""
    libs = _cache_root() / KAFKA_VERSION / "libs"
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    java = shutil.which("java")
    if not mvn or not java:
        raise LocalKafkaError(
            "the local Kafka broker needs Java 17 and Maven (mvn) on PATH; "
            "or point TRACKER_KAFKA_BOOTSTRAP at a running Kafka"
        )
    staging = libs.with_name(f"libs.{uuid.uuid4().hex}")
    log.info("fetching Apache Kafka from Maven Central", extra={"version": KAFKA_VERSION})
    started = time.monotonic()
    fetched = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "--no-transfer-progress",
            "-Dstyle.color=never",
            "-f",
            str(kafka_files() / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if fetched.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise LocalKafkaError(
            f"Maven could not fetch Apache Kafka {KAFKA_VERSION}: {fetched.stdout.strip()[-2000:]}"
        )
    (staging / ".complete").write_text(KAFKA_VERSION)
    try:
        staging.rename(libs)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # a parallel fetch won the race
    log.info("fetched Apache Kafka", extra={"seconds": round(time.monotonic() - started, 1)})
    return libs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalKafka:
    """One broker-and-controller process with its data in ``folder``. Start and stop it at will."""

    def __init__(
        self,
        folder: Path,
        port: int,
        controller_port: int | None = None,
        heap: str = "512m",
        sasl_users: Mapping[str, str] | None = None,
    ) -> None:
        """``sasl_users`` (name to password): also listen for SASL/PLAIN clients on
        :attr:`sasl_port`, as a managed cluster asks them to."""
        self.folder = folder
        self.port = port
        self.controller_port = controller_port or free_port()
        self.heap = heap
        self.sasl_users = dict(sasl_users or {})
        self.sasl_port = free_port() if self.sasl_users else None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _listeners(self) -> list[str]:
        """The listeners' lines: plaintext for the broker and controller, and SASL/PLAIN on
        :attr:`sasl_port` when there are ``sasl_users``."""
        plain = f"PLAINTEXT://127.0.0.1:{self.port}"
        controller = f"CONTROLLER://127.0.0.1:{self.controller_port}"
        if self.sasl_port is None:
            return [
                f"listeners={plain},{controller}",
                f"advertised.listeners={plain}",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            ]
        sasl = f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
        users = " ".join(f'user_{name}="{password}"' for name, password in self.sasl_users.items())
        return [
            f"listeners={plain},{controller},{sasl}",
            f"advertised.listeners={plain},{sasl}",
            "listener.security.protocol.map="
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            "sasl.enabled.mechanisms=PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
        ]

    def _config(self) -> Path:
        path = self.folder / "server.properties"
        path.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    *self._listeners(),
                    "controller.listener.names=CONTROLLER",
                    f"log.dirs={self.folder / 'data'}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "num.partitions=4",
                    "",
                ]
            )
        )
        return path

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j.configuration=file:{kafka_files() / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.folder}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def exit_code(self) -> int | None:
        """The broker's exit code once it has exited; None while it runs (or was never started)."""
        return self._process.poll() if self._process is not None else None

    def start(self, timeout: float = 90.0) -> None:
        """Start the broker and wait until it listens."""
        self.launch()
        assert self._process is not None
        deadline = time.monotonic() + timeout
        relaunches = 2
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                if relaunches and not _port_free(self.controller_port):
                    relaunches -= 1  # taken while the JVM started: launch picks another
                    self.launch()
                    continue
                raise LocalKafkaError(
                    f"Kafka exited with {self._process.returncode}; see {self.folder / 'kafka.log'}"
                )
            if _port_open(self.port):
                log.info(
                    "kafka started", extra={"bootstrap": self.bootstrap, "version": KAFKA_VERSION}
                )
                return
            time.sleep(0.2)
        self.stop()
        raise LocalKafkaError(
            f"Kafka did not open port {self.port} within {timeout:.0f}s; see {self.folder / 'kafka.log'}"
        )

    def launch(self) -> None:
        """Start the broker's process and return at once; clients wait for it as for any broker."""
        if _port_open(self.port):
            raise LocalKafkaError(
                f"port {self.port} is already in use; stop what holds it, or set TRACKER_KAFKA_LOCAL_PORT"
            )
        if not _port_free(self.controller_port):
            # Only this broker talks to its controller, so any free port will do.
            taken, self.controller_port = self.controller_port, free_port()
            log.warning(
                "the Kafka controller's port is taken: using another",
                extra={"taken": taken, "port": self.controller_port},
            )
        libs = fetch_kafka()
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self._config()
        if not (self.folder / "data" / "meta.properties").exists():
            # "=": a random id may start with "-", which would read as an option.
            formatted = subprocess.run(
                self._java(
                    libs,
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={_cluster_id()}",
                    "--config",
                    str(config),
                ),
                capture_output=True,
                text=True,
            )
            if formatted.returncode != 0:
                raise LocalKafkaError(
                    f"could not format Kafka's storage: {formatted.stderr[-2000:]}"
                )
        self._process = subprocess.Popen(
            self._java(libs, "kafka.Kafka", str(config)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self, timeout: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("kafka stopped", extra={"bootstrap": self.bootstrap})


def _cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _port_free(port: int) -> bool:
    """Whether a listener could bind ``port`` now, as Kafka's does (address reuse on)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
