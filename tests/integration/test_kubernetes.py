"""The Kubernetes manifests: both kustomize overlays build, every object passes the Kubernetes
schema (kubernetes-validate, strict), and they say what the operator's guide promises: probes,
autoscalers, workers sized by partitions, a disruption budget, the migrations Job, the secrets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tracker.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"
KUSTOMIZE = "sigs.k8s.io/kustomize/kustomize/v5@v5.7.1"
KUBERNETES_VERSION = "1.31.0"
COLLECTORS = {"beacon": 8001, "links": 8002, "calls": 8003, "helpdesk": 8005}


def _kustomize() -> str:
    """kustomize, built once from the Go module proxy into the user's cache (Go is on the machine)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tracker" / "tools"
    binary = cache / KUSTOMIZE.rsplit("@", 1)[1] / "kustomize"
    if not binary.exists():
        go = shutil.which("go") or "/usr/local/go/bin/go"
        built = subprocess.run(
            [go, "install", KUSTOMIZE],
            env={**os.environ, "GOBIN": str(binary.parent)},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert built.returncode == 0, f"go install {KUSTOMIZE} failed: {built.stderr[-3000:]}"
    return str(binary)


@pytest.fixture(scope="module", params=["single", "cluster"])
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    done = subprocess.run(
        [_kustomize(), "build", str(OVERLAYS / request.param)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return request.param, [d for d in yaml.safe_load_all(done.stdout) if d]


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _settings(objects: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = _one(objects, "ConfigMap", "tracker-settings")["data"]
    return data


def test_every_object_passes_the_kubernetes_schema(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = overlay
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == [
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Job", "Namespace",
        "PodDisruptionBudget", "Secret", "Service",
    ]  # fmt: skip
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        "tracker"
    }


def test_collectors_are_autoscaled_and_probed_on_readyz_and_healthz(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = overlay
    for name, port in COLLECTORS.items():
        deployment = _one(objects, "Deployment", f"tracker-{name}")
        pod = deployment["spec"]["template"]
        [container] = pod["spec"]["containers"]
        assert container["args"] == ["serve", name]
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        hpa = _one(objects, "HorizontalPodAutoscaler", f"tracker-{name}")
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"tracker-{name}"
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_workers_are_sized_by_partitions_and_drained_one_at_a_time(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objects = overlay
    worker = _one(objects, "Deployment", "tracker-worker")
    partitions = int(_settings(objects)["TRACKER_TOPIC_PARTITIONS"])
    assert 2 <= worker["spec"]["replicas"] <= partitions
    [container] = worker["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["worker"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TRACKER_CONSOLE_HOST"] == "0.0.0.0"  # probes and Prometheus reach the console
    # the worker's own start-up migration does not know the cluster: migrate before it
    [init] = worker["spec"]["template"]["spec"]["initContainers"]
    assert init["args"] == ["migrate"]
    pdb = _one(objects, "PodDisruptionBudget", "tracker-worker")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        worker["spec"]["template"]["metadata"]["labels"].items()
    )
    if name == "cluster":
        assert _settings(objects)["TRACKER_TOPIC_REPLICATION"] == "3"
        assert _settings(objects)["TRACKER_CLICKHOUSE_CLUSTER"] == "tracker"


def test_migrations_run_as_a_job_and_every_container_runs_a_real_role_as_a_user(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = overlay
    job = _one(objects, "Job", "tracker-migrate")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod.get("initContainers", []) + pod["containers"]:
            _parser().parse_args(container["args"])  # exits on an unknown role
            assert container["image"] == "tracker:0.1.0"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
            assert sources == {"tracker-settings", "tracker-secrets"}


def test_secrets_hold_every_secret_setting_and_settings_are_documented(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = overlay
    docs = (ROOT / "docs" / "settings.md").read_text()
    documented = set(re.findall(r"`(TRACKER_[A-Z0-9_]+)`", docs))
    secret_settings = set(re.findall(r"\| `(TRACKER_[A-Z0-9_]+)` \|[^|]*\| \*\*Secret\.\*\*", docs))
    assert {
        "TRACKER_HASH_SALT",
        "TRACKER_API_TOKEN",
        "TRACKER_TWILIO_AUTH_TOKEN",
    } <= secret_settings
    secret = _one(objects, "Secret", "tracker-secrets")["stringData"]
    assert secret_settings <= set(secret), secret_settings - set(secret)
    assert "TRACKER_CLICKHOUSE_URL" in secret  # it carries the ClickHouse password
    assert not (set(secret) | set(_settings(objects))) - documented
