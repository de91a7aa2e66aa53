"""Runs SQL in a fresh embedded ClickHouse (chDB) in a child process, for tests of shipped SQL.

chDB runs one engine per process, and the integration tests hold theirs, so the statements run in a
process of their own: ``probe(queries)`` hands them over as JSON and returns each one's rows or
the error ClickHouse gave. With ``parse_only`` each statement is only parsed (``formatQuery``),
for DDL that needs a cluster to run; otherwise the project's migrations are applied first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

_CHILD = """
import sys, orjson
from tracker.store import ClickHouseStore
job = orjson.loads(sys.stdin.buffer.read())
store = ClickHouseStore("chdb://" + job["path"], "tracker")
answers = []
try:
    if not job["parse_only"]:
        store.run_sync(store.migrate_sync)
    for sql in job["setup"]:
        store.run_sync(store.command_sync, sql)
    for sql in job["queries"]:
        try:
            if job["parse_only"]:
                store.run_sync(store.query_sync, "SELECT formatQuery({sql:String})", {"sql": sql})
                answers.append({"error": None, "rows": []})
            else:
                rows = store.run_sync(store.query_sync, sql).rows
                answers.append({"error": None, "rows": [[str(v) for v in r] for r in rows]})
        except Exception as exc:
            answers.append({"error": str(exc)[:600], "rows": []})
finally:
    store.close()
sys.stdout.buffer.write(orjson.dumps(answers))
"""


@dataclass(frozen=True)
class Answer:
    error: str | None
    rows: list[list[str]]


def probe(
    queries: list[str], *, setup: Sequence[str] = (), parse_only: bool = False
) -> list[Answer]:
    """Each query's answer, its rows as strings, after the migrations and the ``setup`` statements."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=orjson.dumps(
                {
                    "path": f"{folder}/ch",
                    "queries": queries,
                    "setup": list(setup),
                    "parse_only": parse_only,
                }
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
    return [Answer(a["error"], a["rows"]) for a in orjson.loads(done.stdout)]
