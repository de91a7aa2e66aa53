"""Graceful shutdown with ClickHouse down: a worker whose ClickHouse hangs (accepts connections,
never answers) or refuses connections mid-batch still ends within its grace period on SIGTERM,
and what it had not written is not committed: the next worker reads it again and writes it once.

Embedded chDB cannot be taken down, so the first worker talks to a stand-in ClickHouse server
in this process: it answers the handful of statements a worker's start needs (the migrations
are all applied, every query is empty), then stops answering."""

from __future__ import annotations

import http.server
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Pipeline, component_env, make_event
from tracker.cli.kafka_local import LocalKafka
from tracker.store import load_migrations

pytestmark = pytest.mark.integration

GRACE = 10


class StandInClickHouse:
    """An HTTP server that speaks just enough of ClickHouse's HTTP interface for a worker to
    start, then hangs on every request (``hang``) or refuses connections (``refuse``)."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.answering = True
        self.released = threading.Event()  # hung requests end, unanswered, once set
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                sql = self.rfile.read(length).decode(errors="replace") if length else self.path
                stand_in.queries.append(sql)
                if not stand_in.answering:
                    stand_in.released.wait()
                    self.close_connection = True
                    return
                answer = stand_in.answer(sql)
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST

            def log_message(self, *args: object) -> None:
                return None

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @staticmethod
    def answer(sql: str) -> bytes:
        if "version()" in sql:
            return b"24.8.1.1\tUTC\n"
        if "schema_migrations" in sql and sql.lstrip().startswith("SELECT"):
            # One Native block: every migration is applied, so the worker creates nothing.
            versions = [m.version for m in load_migrations()]
            column = b"\x07version\x06UInt32" + b"".join(struct.pack("<I", v) for v in versions)
            return bytes([1, len(versions)]) + column
        return b""  # an empty result, or a statement done

    def hang(self) -> None:
        self.answering = False

    def refuse(self) -> None:
        """Stop listening, and end the requests hanging now without an answer."""
        self._server.shutdown()
        self._server.socket.close()
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def stand_in() -> Iterator[StandInClickHouse]:
    server = StandInClickHouse()
    yield server
    server.close()


def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("outage", ["hangs", "refuses"])
def test_sigterm_with_clickhouse_down_ends_in_the_grace_period_and_commits_nothing_unwritten(
    kafka: LocalKafka, tmp_path: Path, stand_in: StandInClickHouse, outage: str
) -> None:
    env = component_env(kafka.bootstrap, tmp_path, TRACKER_SHUTDOWN_GRACE_SECONDS=str(GRACE))
    pipeline = Pipeline(env, tmp_path)
    down = pipeline.worker(TRACKER_CLICKHOUSE_URL=stand_in.url)
    pipeline.components = [down.start(), pipeline.beacon().start()]
    try:
        stand_in.hang()
        asked_before = len(stand_in.queries)
        events = [make_event() for _ in range(200)]
        assert pipeline.post(events)[0] == 200

        # The batch has reached its write: the sink looks for its rows, and gets no answer.
        deadline = time.monotonic() + 60
        while not any("touchpoints" in q for q in stand_in.queries[asked_before:]):
            assert time.monotonic() < deadline, "the worker never tried to write the batch"
            time.sleep(0.2)
        if outage == "refuses":
            stand_in.refuse()
            assert _refused(stand_in.url)

        assert down.process is not None
        down.process.send_signal(signal.SIGTERM)
        assert down.process.wait(timeout=GRACE + 10) == 0, (tmp_path / "worker.log").read_text()[
            -3000:
        ]
        down.process = None

        # The next worker, with ClickHouse up, reads the batch again and writes it once.
        pipeline.components[0] = pipeline.worker().start()
        ids = ",".join(f"'{e['event_id']}'" for e in events)
        landed = pipeline.wait_for(
            f"SELECT count(), uniqExact(event_id) FROM touchpoints WHERE event_id IN ({ids})",
            "200\t200",
            timeout=120,
        )
        assert landed == "200\t200"
        pipeline.wait_until_handled()
        assert pipeline.query("SELECT count() FROM touchpoints").strip() == "200"
    finally:
        pipeline.stop()
