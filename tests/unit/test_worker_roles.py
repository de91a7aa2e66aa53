"""What each worker role runs (agents/worker.py), built without Kafka: the stitch role holds no
ClickHouse and serves only its health; the write role stores what stitch workers hand over."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.services import ConsoleService, HealthService, RawIngestService, WriterService
from agents.worker import build_worker
from tracker.errors import ConfigError
from tracker.settings import Settings


def settings(tmp_path: Path, role: str) -> Settings:
    return Settings.from_env(
        {"TRACKER_DATA_DIR": str(tmp_path), "TRACKER_WORKER_ROLE": role, "TRACKER_HASH_SALT": "s"}
    )


def test_a_stitch_worker_stitches_without_clickhouse_and_serves_its_health(
    tmp_path: Path,
) -> None:
    app, services, store = build_worker(settings(tmp_path, "stitch"))
    assert store is None
    assert sorted(app.agents) == ["identity", "journey"]
    kinds = {type(s) for s in services}
    assert RawIngestService in kinds and HealthService in kinds and ConsoleService not in kinds


def test_the_writer_stores_the_outputs_and_serves_the_console(tmp_path: Path) -> None:
    app, services, store = build_worker(settings(tmp_path, "write"))
    assert store is not None
    assert sorted(app.agents) == ["calls", "dead_letters", "links", "tickets"]
    kinds = {type(s) for s in services}
    assert WriterService in kinds and ConsoleService in kinds and RawIngestService not in kinds
    store.close()


def test_the_default_role_runs_everything_in_one_process(tmp_path: Path) -> None:
    app, services, store = build_worker(Settings.from_env({"TRACKER_DATA_DIR": str(tmp_path)}))
    assert store is not None
    assert sorted(app.agents) == [
        "calls",
        "dead_letters",
        "identity",
        "journey",
        "links",
        "tickets",
    ]
    assert WriterService not in {type(s) for s in services}
    store.close()


def test_an_unknown_role_is_refused_with_the_roles_there_are(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="all, stitch, write"):
        settings(tmp_path, "reader")
