"""The fuzz harness's fixed-seed slice: 3,000 hostile cases across every endpoint of the real
product (worker and console, beacon, links, calls, email, helpdesk) on the test broker, checked as the
full 100,000-case run is (bench/fuzz.py explains every check)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tracker.cli.kafka_local import LocalKafka

pytestmark = pytest.mark.integration

HARNESS = Path(__file__).resolve().parents[2] / "bench" / "fuzz.py"
sys.path.insert(0, str(HARNESS.parent))
from fuzz import WEIGHTS  # noqa: E402


def test_a_fixed_seed_slice_of_hostile_input_breaks_no_promise(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    results = tmp_path / "fuzz.json"
    run = subprocess.run(
        [sys.executable, str(HARNESS), "--cases", "3000", "--seed", "7", "--bootstrap",
         kafka.bootstrap, "--results", str(results)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    figures = orjson.loads(results.read_bytes())
    assert figures["failures"] == [] and figures["failed_requests"] == 0
    assert set(figures["endpoints"]) == set(WEIGHTS)  # every endpoint was tried
    assert all(counts["requests"] >= 10 for counts in figures["endpoints"].values())
    assert sum(figures["invalid_rows"].values()) == 0
    assert figures["touchpoints"] > 0  # valid cases went all the way to ClickHouse
