"""A new user's first minutes: `tracker up`, `tracker demo`, `tracker query`, `tracker check`, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracker.cli.kafka_local import free_port

pytestmark = pytest.mark.e2e

TRACKER = str(Path(sys.executable).with_name("tracker"))


def test_up_demo_query_and_shutdown(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(
        TRACKER_DATA_DIR=str(tmp_path / "data"),
        TRACKER_KAFKA_LOCAL_PORT=str(free_port()),
        TRACKER_CONSOLE_PORT=str(free_port()),
        TRACKER_BEACON_PORT=str(free_port()),
        TRACKER_LINKS_PORT=str(free_port()),
        TRACKER_CALLS_PORT=str(free_port()),
        TRACKER_EMAIL_PORT=str(free_port()),
        TRACKER_HELPDESK_PORT=str(free_port()),
    )
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([TRACKER, "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while b'"msg":"tracker is ready"' not in (tmp_path / "up.log").read_bytes():
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "tracker up was not ready in 180 s"
            time.sleep(0.5)

        check = subprocess.run(
            [TRACKER, "check"], env=env, capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.splitlines() == [
            "console\tready",
            "beacon\tready",
            "links\tready",
            "calls\tready",
            "email\tready",
            "helpdesk\tready",
        ]

        demo = subprocess.run(
            [TRACKER, "demo", "--customers", "40"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert demo.returncode == 0, demo.stderr
        first_line, landed_line = demo.stdout.splitlines()[:2]
        accepted = int(first_line.split(": ")[1].split(" accepted")[0])
        assert first_line.endswith("3 rejected") and accepted > 40
        assert landed_line == f"landed in touchpoints: {accepted}"
        assert "event_id: is required" in demo.stdout  # the dead-letter table shows the reasons

        query = subprocess.run(
            [TRACKER, "query", "SELECT count(), countIf(is_bot) FROM touchpoints"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert query.returncode == 0, query.stderr
        assert query.stdout == f"{accepted}\t1\n"

        someone = subprocess.run(
            [
                TRACKER,
                "query",
                "SELECT anonymous_id FROM touchpoints WHERE anonymous_id != '' LIMIT 1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        forget = subprocess.run(
            [TRACKER, "forget", f"anon:{someone}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert forget.returncode == 0, forget.stderr
        assert forget.stdout.startswith("forgotten: the person")
        deleted = dict(line.split("\t") for line in forget.stdout.splitlines()[1:])
        assert deleted["touchpoints"] != "0 rows deleted"  # the demo's events of that visitor
        left = subprocess.run(
            [TRACKER, "query", f"SELECT count() FROM touchpoints WHERE anonymous_id = '{someone}'"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert left.stdout == "0\n"

        refused = subprocess.run(
            [TRACKER, "query", "DROP TABLE touchpoints"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (
            refused.returncode == 1
            and "only reads" in refused.stderr
            and "drop" in refused.stderr.lower()
        )
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(90)
        log.close()
    assert code == 0
    assert b'"msg":"tracker stopped"' in (tmp_path / "up.log").read_bytes()
