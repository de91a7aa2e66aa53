"""Number pools end to end: reserve through the beacon's HTTP API, call the number through a
signed provider webhook, and find the call joined to the web session in ClickHouse (chDB)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.calls import call_event_id
from tests.conftest import Component, Pipeline, component_env, http, make_event, metric_value
from tests.integration.test_calls import PUBLIC, TWILIO_TOKEN, twilio_callback
from tracker.cli.kafka_local import LocalKafka, free_port

pytestmark = pytest.mark.integration

POOLS = {
    "spring": {
        "numbers": ["+1 800 555 0101", "+1 800 555 0102", "+1 800 555 0103"],
        "fallback": "+1 800 555 0100",
        "campaign": {"source": "google", "medium": "cpc", "name": "spring"},
    },
    "tiny": {"numbers": ["+1 800 555 0201"], "fallback": "+1 800 555 0200"},
}


@pytest.fixture
def pools_pipeline(kafka: LocalKafka, tmp_path: Path) -> Iterator[Pipeline]:
    env = component_env(
        kafka.bootstrap,
        tmp_path,
        TRACKER_CALLS_PUBLIC_URL=PUBLIC,
        TRACKER_TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        TRACKER_CALL_NUMBER_POOLS=orjson.dumps(POOLS).decode(),
    )
    running = Pipeline(env, tmp_path)
    running.components = [running.worker().start(), running.beacon().start()]
    running.components.append(running.calls().start())
    yield running
    running.stop()


def second_beacon(pipeline: Pipeline) -> tuple[Component, str]:
    """Another beacon instance on the same topics, as behind a load balancer."""
    port = str(free_port())
    url = f"http://127.0.0.1:{port}"
    component = Component(
        ["serve", "beacon"],
        {**pipeline.env, "TRACKER_BEACON_PORT": port},
        f"{url}/readyz",
        pipeline.data_dir / f"beacon-{port}.log",
    )
    return component, url


def reserve(beacon_url: str, **body: Any) -> tuple[int, Any]:
    status, answer, _ = http("POST", f"{beacon_url}/v1/numbers", orjson.dumps(body))
    return status, answer


def test_a_call_to_a_reserved_number_joins_the_web_session(pools_pipeline: Pipeline) -> None:
    visitor = {"anonymous_id": str(uuid.uuid4()), "session_id": str(uuid.uuid4())}
    campaign = {"source": "news", "medium": "email", "name": "autumn-sale"}
    page_view = make_event(**visitor)
    assert pools_pipeline.post([page_view])[0] == 200
    status, answer = reserve(pools_pipeline.beacon_url, pool="spring", campaign=campaign, **visitor)
    assert status == 200 and answer["reserved"] is True, answer
    number = answer["number"]

    # A second beacon instance gives the same session the same number, and another session
    # another number: the reservations are shared through Kafka.
    beacon, beacon_url = second_beacon(pools_pipeline)
    pools_pipeline.components.append(beacon.start())
    status, again = reserve(beacon_url, pool="spring", **visitor)
    assert status == 200 and again["number"] == number
    status, other = reserve(beacon_url, pool="spring", session_id=str(uuid.uuid4()))
    assert status == 200 and other["reserved"] is True and other["number"] != number

    sid = "CA" + uuid.uuid4().hex
    now = format_datetime(datetime.now(UTC))
    assert (
        twilio_callback(
            pools_pipeline, sid, "ringing", To=number, SequenceNumber="0", Timestamp=now
        )
        == 200
    )
    assert (
        twilio_callback(
            pools_pipeline,
            sid,
            "completed",
            To=number,
            SequenceNumber="1",
            Timestamp=now,
            CallDuration="95",
        )
        == 200
    )

    event_id = call_event_id("twilio", sid)
    expected = "\t".join(
        [
            visitor["anonymous_id"],
            visitor["session_id"],
            "1",
            "news",
            "autumn-sale",
            "spring",
            "session",
            "2",
        ]
    )
    row = pools_pipeline.wait_for(
        "SELECT anonymous_id, properties['web_session_id'], phone_hash != '', campaign_source, "
        "campaign_name, properties['pool'], "
        "properties['pool_attribution'], version FROM touchpoints FINAL "
        f"WHERE event_id = '{event_id}' AND version = 2",
        expected,
        timeout=60,
    )
    assert row == expected
    # The caller's phone hash and the visitor's anonymous id are one customer now: the call and
    # the page view are stitched into the same journey.
    customers = pools_pipeline.wait_for(
        "SELECT uniqExact(customer_id), countIf(customer_id != ''), count() FROM touchpoints FINAL "
        f"WHERE event_id IN ('{event_id}', '{page_view['event_id']}')",
        "1\t2\t2",
        timeout=60,
    )
    assert customers == "1\t2\t2"
    call = pools_pipeline.query(
        f"SELECT campaign_source, tracking_number FROM calls FINAL WHERE call_id = '{sid}'"
    ).strip()
    assert call == f"news\t{number}"


def test_a_dry_pool_answers_its_fallback_with_a_metric_and_an_event(
    pools_pipeline: Pipeline,
) -> None:
    holder = str(uuid.uuid4())
    status, held = reserve(pools_pipeline.beacon_url, pool="tiny", session_id=holder)
    assert status == 200 and held["number"] == "+18005550201"

    late = {"anonymous_id": str(uuid.uuid4()), "session_id": str(uuid.uuid4())}
    status, answer = reserve(pools_pipeline.beacon_url, pool="tiny", **late)
    assert status == 200
    assert (answer["number"], answer["reserved"], answer["reason"]) == (
        "+18005550200",
        False,
        "pool_dry",
    )
    sample = 'tracker_call_pool_dry_total{pool="tiny"}'
    assert metric_value(pools_pipeline.beacon_url, sample) == 1.0

    expected = f"custom\tserver\t{late['anonymous_id']}\ttiny\t+18005550200"
    event = pools_pipeline.wait_for(
        "SELECT type, source, anonymous_id, properties['pool'], properties['fallback_number'] "
        f"FROM touchpoints WHERE name = 'call_pool_dry' AND anonymous_id = '{late['anonymous_id']}'",
        expected,
        timeout=60,
    )
    assert event == expected


def test_a_call_to_a_pool_number_nobody_held_is_kept_unattributed(
    pools_pipeline: Pipeline,
) -> None:
    sid = "CA" + uuid.uuid4().hex
    now = format_datetime(datetime.now(UTC))
    number = "+18005550103"  # the spring pool's last number: no test reserves three at once
    assert (
        twilio_callback(
            pools_pipeline, sid, "completed", To=number, Timestamp=now, SequenceNumber="0"
        )
        == 200
    )
    event_id = call_event_id("twilio", sid)
    expected = "1\t1\tspring\tnone"
    row = pools_pipeline.wait_for(
        "SELECT anonymous_id = '', properties['web_session_id'] = '', properties['pool'], properties['pool_attribution'] "
        f"FROM touchpoints FINAL WHERE event_id = '{event_id}'",
        expected,
        timeout=60,
    )
    assert row == expected
    unattributed = 'tracker_call_pool_calls_total{outcome="unattributed",pool="spring"}'
    assert metric_value(pools_pipeline.console_url, unattributed) == 1.0
