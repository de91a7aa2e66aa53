"""The container image and the compose stack, checked without a container engine: hadolint on
the Dockerfile, the things that matter in it, and `docker-compose config` (Debian's, which needs
no daemon) on the compose file, whose every file, role, port and setting must exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import debian_tool
from tracker.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose"
KAFKA_VERSION = re.search(
    r"<version>([\d.]+)</version>", (ROOT / "deploy/kafka/pom.xml").read_text()
)


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_is_multi_stage_on_a_pinned_base_and_runs_tracker_as_a_user() -> None:
    steps = _instructions()
    bases = [args for op, args in steps if op == "FROM"]
    assert len(bases) >= 2, "a build stage and a runtime stage"
    for base in bases:
        image = base.split()[0]
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image
    assert "from=build" in " ".join(a for op, a in steps if op == "RUN" and "pip install" in a)
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    user = [a for op, a in final if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert ("ENTRYPOINT", '["tracker"]') in final
    data_dir = re.search(r"TRACKER_DATA_DIR=(\S+)", " ".join(a for op, a in final if op == "ENV"))
    assert data_dir and data_dir.group(1) in " ".join(a for op, a in final if op == "VOLUME")
    assert any(op == "HEALTHCHECK" and "HEALTHCHECK_URL" in a for op, a in final)
    probe = re.search(r"HEALTHCHECK_URL=(\S+)", " ".join(a for op, a in final if op == "ENV"))
    assert probe and probe.group(1).endswith("/healthz")


def test_everything_the_image_copies_exists_and_is_in_the_build_context() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    for op, args in _instructions():
        if op == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is left out by .dockerignore"
    # what the wheel build needs: the packages, the schemas and the pinned Kafka it bundles
    for needed in (
        "pyproject.toml",
        "README.md",
        "tracker",
        "agents",
        "collectors",
        "schemas",
        "deploy/kafka",
    ):
        assert needed in allowed, needed


def _config(*extra: str) -> dict[str, Any]:
    compose = debian_tool("docker-compose", "docker-compose")
    done = subprocess.run(
        [compose, "-f", str(COMPOSE / "compose.yaml"), *extra, "config"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    return _config()


def test_compose_parses_and_runs_the_whole_stack(single: dict[str, Any]) -> None:
    services = single["services"]
    assert set(services) == {
        "kafka-1", "kafka-2", "kafka-3", "clickhouse", "migrate", "beacon", "links", "calls",
        "helpdesk", "worker-1", "worker-2", "prometheus", "grafana",
    }  # fmt: skip
    assert services["kafka-2"]["profiles"] == services["kafka-3"]["profiles"] == ["cluster"]
    assert "profiles" not in services["kafka-1"]
    assert KAFKA_VERSION is not None
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        assert services[name]["image"] == f"apache/kafka:{KAFKA_VERSION.group(1)}"
        assert services[name]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name, service in services.items():
        if service["image"] != "tracker:local":  # every other image pinned to a version
            assert re.fullmatch(r"[\w./-]+:v?\d+(\.\d+)+", service["image"]), name
    assert (
        services["worker-1"]["depends_on"]["migrate"]["condition"]
        == "service_completed_successfully"
    )
    assert services["worker-1"]["environment"]["TRACKER_CLICKHOUSE_URL"].startswith("http://")


def test_every_tracker_service_runs_a_real_role_with_documented_settings(
    single: dict[str, Any],
) -> None:
    documented = set(re.findall(r"`(TRACKER_[A-Z0-9_]+)`", (ROOT / "docs/settings.md").read_text()))
    roles = {}
    for name, service in single["services"].items():
        if service["image"] != "tracker:local":
            continue
        args = _parser().parse_args(service["command"])  # exits if the role is unknown
        roles[name] = args.command if args.command != "serve" else f"serve {args.collector}"
        unknown = {k for k in service["environment"] if k.startswith("TRACKER_")} - documented
        assert not unknown, f"{name}: undocumented settings {unknown}"
        assert (Path(service["build"]["context"]) / service["build"]["dockerfile"]) == DOCKERFILE
    assert sorted(roles.values()) == sorted(
        [
            "migrate",
            "serve beacon",
            "serve links",
            "serve calls",
            "serve helpdesk",
            "worker",
            "worker",
        ]
    )


def test_compose_mounts_only_files_that_exist_and_prometheus_scrapes_every_tracker_process(
    single: dict[str, Any],
) -> None:
    for name, service in single["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name} mounts {source}, which does not exist"
    prometheus = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    targets = {
        t
        for job in prometheus["scrape_configs"]
        for c in job["static_configs"]
        for t in c["targets"]
    }
    expected = set()
    for name, service in single["services"].items():
        if service["image"] == "tracker:local" and service["command"] != ["migrate"]:
            port = {"beacon": 8001, "links": 8002, "calls": 8003, "helpdesk": 8005}.get(
                service["command"][-1], 8000
            )
            expected.add(f"{name}:{port}")
    assert targets == expected
    mounted = " ".join(single["services"]["prometheus"]["volumes"])
    for rule_file in prometheus["rule_files"]:
        assert f"deploy/prometheus/{Path(rule_file).name}:{rule_file}" in mounted


def test_the_cluster_env_file_brings_three_brokers_and_replicated_topics() -> None:
    cluster = _config("--env-file", str(COMPOSE / "cluster.env"))
    env_file = dict(
        ln.split("=", 1)
        for ln in (COMPOSE / "cluster.env").read_text().splitlines()
        if "=" in ln and not ln.startswith("#")
    )
    assert env_file["COMPOSE_PROFILES"] == "cluster"
    voters = cluster["services"]["kafka-1"]["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voters == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
    assert {
        cluster["services"][f"kafka-{i}"]["environment"]["KAFKA_NODE_ID"] for i in (1, 2, 3)
    } == {1, 2, 3}
    worker = cluster["services"]["worker-1"]["environment"]
    assert worker["TRACKER_KAFKA_BOOTSTRAP"] == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    assert worker["TRACKER_TOPIC_REPLICATION"] == "3"
