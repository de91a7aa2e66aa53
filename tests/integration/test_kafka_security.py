"""A Kafka cluster that asks for SASL, as managed clusters do: with TRACKER_KAFKA_SECURITY_PROTOCOL
and its credentials, the beacon, the worker (Faust's clients and Tracker's own) and the console
connect to a real broker whose listener refuses anyone else; with a wrong password nothing is
acknowledged, and the beacon says why it is not ready."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Pipeline, component_env, make_event
from tracker.cli.kafka_local import LocalKafka, free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "tracker", "tracker-sasl-secret"


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(
        tmp_path_factory.mktemp("kafka-sasl"), free_port(), sasl_users={USER: PASSWORD}
    )
    broker.start()
    yield broker
    broker.stop()


def sasl_env(broker: LocalKafka, root: Path, password: str) -> dict[str, str]:
    return component_env(
        f"127.0.0.1:{broker.sasl_port}",
        root,
        TRACKER_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        TRACKER_KAFKA_SASL_MECHANISM="PLAIN",
        TRACKER_KAFKA_SASL_USERNAME=USER,
        TRACKER_KAFKA_SASL_PASSWORD=password,
    )


def test_events_are_stitched_through_a_cluster_that_asks_for_sasl(
    sasl_kafka: LocalKafka, tmp_path: Path
) -> None:
    pipeline = Pipeline(sasl_env(sasl_kafka, tmp_path, PASSWORD), tmp_path).start()
    try:
        events = [
            make_event(anonymous_id="sasl-visitor"),
            make_event(type="identify", anonymous_id="sasl-visitor", email="sasl@example.com"),
        ]
        status, body, _ = pipeline.post(events)
        assert status == 200, body
        stitched = "SELECT count(), uniqExact(customer_id) FROM touchpoints WHERE customer_id != ''"
        assert pipeline.wait_for(stitched, "2\t1", timeout=90) == "2\t1"
    finally:
        pipeline.stop()


def test_a_wrong_password_acknowledges_nothing_and_the_beacon_says_why(
    sasl_kafka: LocalKafka, tmp_path: Path
) -> None:
    pipeline = Pipeline(sasl_env(sasl_kafka, tmp_path, "not-the-password"), tmp_path)
    beacon = pipeline.beacon()
    with pytest.raises(RuntimeError, match="not ready"):
        beacon.start(timeout=15)
    try:
        status, body, headers = pipeline.post([make_event(anonymous_id="refused")])
        assert status == 503, body
        assert int(headers["Retry-After"]) >= 1
        reasons = readiness(pipeline.beacon_url)
        assert reasons and all(str(sasl_kafka.sasl_port) in r for r in reasons), reasons
    finally:
        beacon.stop()


def readiness(base_url: str) -> list[str]:
    """The beacon's reasons for not being ready, once it has tried Kafka."""
    deadline = time.monotonic() + 15
    reasons: list[str] = []
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base_url}/readyz", timeout=2)
        except urllib.error.HTTPError as exc:
            reasons = json.loads(exc.read())["reasons"]
            if not any("yet" in r for r in reasons):
                return reasons
        time.sleep(0.5)
    return reasons
