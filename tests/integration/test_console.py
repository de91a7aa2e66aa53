"""The console is read-only in fact: each attack of the hardening issue, through a real worker.

One worker (real Kafka, embedded chDB) serves the whole module; every attack is its own case, and
each checks that nothing was written, on disk or in the tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import Pipeline, component_env, http
from tracker.cli.kafka_local import LocalKafka

pytestmark = pytest.mark.integration

VICTIM = "console-victim.txt"
ORIGINAL = b"kept as it was\n"


@pytest.fixture(scope="module")
def console(kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    data_dir = tmp_path_factory.mktemp("console")
    env = component_env(
        kafka.bootstrap,
        data_dir,
        TRACKER_QUERY_MAX_SECONDS="2",
        TRACKER_QUERY_MAX_ROWS="1000",
    )
    running = Pipeline(env, data_dir)
    running.components = [running.worker().start()]
    yield running
    running.stop()


@pytest.fixture
def victims(console: Pipeline) -> Iterator[list[Path]]:
    """A file in the worker's data directory and one in its working directory, each with known
    content; the test fails if either changed or if any file named like them appeared."""
    paths = [console.data_dir / VICTIM, Path.cwd() / VICTIM]
    for path in paths:
        path.write_bytes(ORIGINAL)
    before = _tables(console)
    yield paths
    try:
        for path in paths:
            assert path.read_bytes() == ORIGINAL, f"{path} was changed"
        for root in (console.data_dir, Path.cwd()):
            made = [p for p in root.iterdir() if "victim" in p.name and p.name != VICTIM]
            assert made == [], f"files written: {made}"
        assert _tables(console) == before
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def _tables(console: Pipeline) -> dict[str, str]:
    names = console.query("SHOW TABLES").split()
    return {name: console.query(f"SELECT count() FROM `{name}`").strip() for name in names}


def post_query(console: Pipeline, sql: str, fmt: str = "tsv") -> tuple[int, object]:
    status, body, _ = http(
        "POST", console.console_url + "/api/query", orjson.dumps({"sql": sql, "format": fmt})
    )
    return status, body


def refused(console: Pipeline, sql: str) -> str:
    status, body = post_query(console, sql)
    assert status == 400, body
    assert isinstance(body, dict) and body["error"], body
    reason: str = body["error"]
    return reason


@pytest.mark.parametrize(
    "target",
    [
        "TRUNCATE FORMAT TSVRaw",
        "APPEND",
        "COMPRESSION 'gzip' LEVEL 1",
        "AND STDOUT",
        "",
    ],
)
@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_into_outfile_is_refused_and_writes_no_file(
    console: Pipeline, victims: list[Path], target: str, where: str
) -> None:
    path = VICTIM if where == "relative" else str(victims[0])
    reason = refused(console, f"SELECT 'owned' INTO OUTFILE '{path}' {target}")
    assert "OUTFILE" in reason


def test_into_outfile_split_by_a_comment_is_refused(console: Pipeline, victims: list[Path]) -> None:
    assert "OUTFILE" in refused(console, f"SELECT 'owned' INTO/**/OUTFILE '{victims[0]}' APPEND")


def test_kill_query_is_refused(console: Pipeline, victims: list[Path]) -> None:
    assert "not KILL" in refused(console, "KILL QUERY WHERE 1")


def test_a_refused_multi_statement_leaves_nothing_for_the_next_answer(
    console: Pipeline, victims: list[Path]
) -> None:
    reason = refused(console, "SELECT 'hx-leak'; DROP TABLE links")
    assert "one statement per request" in reason
    assert post_query(console, "SELECT 'mine'") == (200, "mine\n")


def test_a_query_that_fails_midway_leaves_nothing_for_the_next_answer(
    console: Pipeline, victims: list[Path]
) -> None:
    status, _ = post_query(
        console,
        "SELECT 'hx-leak' FROM numbers(100000) WHERE number % 1000 = 0 AND throwIf(number = 99000) = 0",
    )
    assert status == 400
    assert post_query(console, "SELECT 'mine'") == (200, "mine\n")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        f"SELECT * FROM file('{VICTIM}', 'LineAsString')",
        "SELECT file('/etc/hostname')",
        "SELECT * FROM url('http://127.0.0.1:9/', 'TSV', 'a String')",
        "SELECT * FROM remote('127.0.0.1', system.one)",
        "SELECT * FROM executable('id', 'TSV', 'a String')",
    ],
)
def test_table_functions_that_read_files_or_the_network_are_refused(
    console: Pipeline, victims: list[Path], sql: str
) -> None:
    assert "reads files or reaches the network" in refused(console, sql)


@pytest.mark.parametrize("setting", ["readonly = 0", "max_execution_time = 3600"])
def test_settings_that_lift_readonly_or_limits_are_refused(
    console: Pipeline, victims: list[Path], setting: str
) -> None:
    assert "SETTINGS clauses are not allowed" in refused(console, f"SELECT 1 SETTINGS {setting}")


def test_a_query_past_the_time_limit_gets_a_400_naming_the_limit(console: Pipeline) -> None:
    reason = refused(console, "SELECT count() FROM numbers(1000000000000)")
    assert "TRACKER_QUERY_MAX_SECONDS" in reason


def test_a_result_past_the_row_limit_gets_a_400_naming_the_limit(console: Pipeline) -> None:
    assert "TRACKER_QUERY_MAX_ROWS" in refused(console, "SELECT number FROM numbers(1001)")
    assert post_query(console, "SELECT count() FROM numbers(1001)") == (200, "1001\n")


def test_reading_queries_still_answer(console: Pipeline) -> None:
    assert post_query(console, "SELECT 1 /* ; */") == (200, "1\n")
    assert post_query(console, "SELECT ';' -- INTO OUTFILE") == (200, ";\n")
    assert post_query(console, "SELECT 1 AS n FORMAT JSONEachRow;") == (200, '{"n":1}\n')
    status, tables = post_query(console, "SHOW TABLES")
    assert status == 200 and "touchpoints" in str(tables)


def tracker_query(console: Pipeline, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker", "query", sql],
        env={**console.env, "PYTHONPATH": os.getcwd()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        (f"SELECT 'owned' INTO OUTFILE '{VICTIM}' TRUNCATE FORMAT TSVRaw", "OUTFILE"),
        ("KILL QUERY WHERE 1", "not KILL"),
        ("SELECT 'hx-leak'; DROP TABLE links", "one statement per request"),
        ("SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
        ("SELECT number FROM numbers(1001)", "TRACKER_QUERY_MAX_ROWS"),
    ],
)
def test_tracker_query_refuses_the_same_with_the_reason(
    console: Pipeline, victims: list[Path], sql: str, reason: str
) -> None:
    done = tracker_query(console, sql)
    assert done.returncode == 1
    assert reason in done.stderr
    assert done.stdout == ""
    mine = tracker_query(console, "SELECT 'mine'")
    assert (mine.returncode, mine.stdout) == (0, "mine\n")
