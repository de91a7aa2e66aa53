"""Runs SQL in a fresh embedded ClickHouse (chDB) in a child process, for tests of shipped SQL.

chDB runs one engine per process, and the integration tests hold theirs, so the statements run in a
process of their own: ``probe(queries)`` hands them over as JSON and returns, for each, the error
ClickHouse gave (or None). With ``parse_only`` each statement is only parsed (``formatQuery``),
for DDL that needs a cluster to run; otherwise the project's migrations are applied first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

_CHILD = """
import sys, orjson
from tracker.store import ClickHouseStore
job = orjson.loads(sys.stdin.buffer.read())
store = ClickHouseStore("chdb://" + job["path"], "tracker")
errors = []
try:
    if not job["parse_only"]:
        store.run_sync(store.migrate_sync)
    for sql in job["queries"]:
        try:
            if job["parse_only"]:
                store.run_sync(store.query_sync, "SELECT formatQuery({sql:String})", {"sql": sql})
            else:
                store.run_sync(store.query_sync, sql)
            errors.append(None)
        except Exception as exc:
            errors.append(str(exc)[:600])
finally:
    store.close()
sys.stdout.buffer.write(orjson.dumps(errors))
"""


def probe(queries: list[str], *, parse_only: bool = False) -> list[str | None]:
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=orjson.dumps(
                {"path": f"{folder}/ch", "queries": queries, "parse_only": parse_only}
            ),
            capture_output=True,
            cwd=root,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")},
                "PYTHONPATH": str(root),
            },
            timeout=300,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    errors: list[str | None] = orjson.loads(done.stdout)
    return errors
