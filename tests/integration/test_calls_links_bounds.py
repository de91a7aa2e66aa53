"""The reproducing requests of the calls and links edge, through the real services: a real Kafka
broker, the worker and the real ClickHouse engine (chDB). Each request is its own case."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from standardwebhooks import Webhook

from tests.conftest import Pipeline, component_env
from tests.integration.test_calls import post
from tests.integration.test_links import TOKEN, call
from tracker.cli.kafka_local import LocalKafka

pytestmark = pytest.mark.integration

GENERIC_SECRET = "whsec_" + base64.b64encode(b"integration-secret-for-bounds!!!").decode()


@pytest.fixture(scope="module")
def edge(kafka: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """One worker, calls collector and links service for the whole module: each case is a
    request and what it leaves behind, on its own call id or slug."""
    data_dir = tmp_path_factory.mktemp("edge")
    env = component_env(
        kafka.bootstrap,
        data_dir,
        TRACKER_GENERIC_WEBHOOK_SECRET=GENERIC_SECRET,
    )
    running = Pipeline(env, data_dir)
    running.components = [
        running.worker().start(),
        running.calls().start(),
        running.links(TRACKER_API_TOKEN=TOKEN).start(),  # the console, on the worker, stays open
    ]
    yield running
    running.stop()


def links_url(pipeline: Pipeline) -> str:
    return f"http://127.0.0.1:{pipeline.env['TRACKER_LINKS_PORT']}"


def signed_generic(pipeline: Pipeline, call_body: dict[str, Any]) -> tuple[int, Any]:
    body = orjson.dumps(call_body)
    msg_id = "msg_" + uuid.uuid4().hex
    now = datetime.now(UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(GENERIC_SECRET).sign(msg_id, now, body.decode()),
        "Content-Type": "application/json",
    }
    return post(f"{pipeline.calls_url}/v1/calls/generic", body, headers)


def a_call(**fields: Any) -> dict[str, Any]:
    return {
        "call_id": "call-" + uuid.uuid4().hex,
        "status": "completed",
        "timestamp": datetime.now(UTC).isoformat(),
        "direction": "inbound",
        **fields,
    }


def assert_worker_up(pipeline: Pipeline) -> None:
    worker = pipeline.components[0].process
    assert worker is not None and worker.poll() is None, "the worker stopped"


# -- calls -----------------------------------------------------------------------------------


def test_a_generic_call_id_of_500000_characters_is_400_and_the_worker_stays_up(
    edge: Pipeline,
) -> None:
    marker = "huge-" + uuid.uuid4().hex
    status, answer = signed_generic(edge, a_call(call_id=marker + "c" * 500_000))
    assert status == 400, answer
    assert [e["field"] for e in answer["errors"]] == ["call_id"]

    # A good callback sent after it lands: the worker went on.
    good = a_call()
    assert signed_generic(edge, good)[0] == 200
    where = f"FROM calls FINAL WHERE call_id = '{good['call_id']}'"
    assert edge.wait_for(f"SELECT status {where}", "completed", timeout=60) == "completed"
    # The refused one is a dead letter with its reason, and nothing of it became a call.
    reason = edge.wait_for(
        f"SELECT substring(reason, 1, 8) FROM dead_letters WHERE payload LIKE '%{marker}%'",
        "call_id:",
        timeout=60,
    )
    assert reason == "call_id:"
    assert edge.query(f"SELECT count() FROM calls WHERE call_id LIKE '{marker}%'").strip() == "0"
    assert_worker_up(edge)


@pytest.mark.parametrize(
    "timestamp",
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "9999-06-01T12:00:00Z",
        " ",
    ],
)
def test_a_signed_generic_call_with_an_odd_timestamp_is_400_with_a_reason(
    edge: Pipeline, timestamp: str
) -> None:
    status, answer = signed_generic(edge, a_call(timestamp=timestamp))
    assert status == 400, answer
    [error] = answer["errors"]
    assert error["field"] == "timestamp" and error["reason"]
    assert_worker_up(edge)


@pytest.mark.parametrize("name", ["started_at", "answered_at", "ended_at"])
def test_a_signed_generic_call_with_a_year_9999_time_is_400(edge: Pipeline, name: str) -> None:
    status, answer = signed_generic(edge, a_call(**{name: "9999-12-31T23:59:59Z"}))
    assert status == 400 and [e["field"] for e in answer["errors"]] == [name]


# -- links -----------------------------------------------------------------------------------


def test_a_slug_ending_in_a_newline_is_refused_and_never_redirects(edge: Pipeline) -> None:
    base = "nl" + uuid.uuid4().hex[:8]
    status, answer, _ = call(
        "POST",
        links_url(edge) + "/api/links",
        {"slug": base + "\n", "target": "https://a.example/"},
    )
    assert status == 400 and [e["field"] for e in answer["errors"]] == ["slug"]
    status, _, headers = call("GET", f"{links_url(edge)}/{base}%0A", follow=False)
    assert status == 404 and "Location" not in headers


def test_a_target_with_a_fragment_gets_the_click_id_before_it(edge: Pipeline) -> None:
    slug = "fr" + uuid.uuid4().hex[:8]
    target = "https://shop.example/page?color=red#reviews"
    assert call("POST", links_url(edge) + "/api/links", {"slug": slug, "target": target})[0] == 201
    for method in ("GET", "HEAD"):
        status, _, headers = call(method, f"{links_url(edge)}/{slug}", follow=False)
        assert status == 302
        location = urlsplit(headers["Location"])
        assert location.fragment == "reviews"
        assert parse_qs(location.query)["color"] == ["red"]
        assert len(parse_qs(location.query)["tc_id"][0]) > 8


def test_a_link_with_fallback_url_null_reaches_the_links_table(edge: Pipeline) -> None:
    slug = "fb" + uuid.uuid4().hex[:8]
    status, link, _ = call(
        "POST",
        links_url(edge) + "/api/links",
        {"slug": slug, "target": "https://a.example/", "fallback_url": None},
    )
    assert status == 201 and link["fallback_url"] == ""
    row = edge.wait_for(
        f"SELECT target, fallback_url = '' FROM links FINAL WHERE slug = '{slug}'",
        "https://a.example/\t1",
        timeout=60,
    )
    assert row == "https://a.example/\t1"
    # And a change that sets it to null again is mirrored too.
    status, _, _ = call(
        "PATCH",
        f"{links_url(edge)}/api/links/{slug}",
        {"fallback_url": None, "target": "https://b.example/"},
    )
    assert status == 200
    assert (
        edge.wait_for(f"SELECT target FROM links FINAL WHERE slug = '{slug}'", "https://b.example/")
        == "https://b.example/"
    )


@pytest.mark.parametrize("target", ["https://a.example:65536/", "https://a.example:99999/x"])
def test_a_target_with_a_port_above_65535_is_400(edge: Pipeline, target: str) -> None:
    status, answer, _ = call("POST", links_url(edge) + "/api/links", {"target": target})
    assert status == 400 and [e["field"] for e in answer["errors"]] == ["target"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("valid_since", "0001-01-01T00:00:00+14:00"),
        ("valid_until", "9999-12-31T23:59:59-14:00"),
        ("valid_until", "9999-12-31T23:59:59Z"),
    ],
)
def test_validity_out_of_range_is_400_on_create_and_change(
    edge: Pipeline, name: str, value: str
) -> None:
    status, answer, _ = call(
        "POST", links_url(edge) + "/api/links", {"target": "https://a.example/", name: value}
    )
    assert status == 400 and [e["field"] for e in answer["errors"]] == [name]
    slug = "vr" + uuid.uuid4().hex[:8]
    assert (
        call(
            "POST", links_url(edge) + "/api/links", {"slug": slug, "target": "https://a.example/"}
        )[0]
        == 201
    )
    status, answer, _ = call("PATCH", f"{links_url(edge)}/api/links/{slug}", {name: value})
    assert status == 400 and [e["field"] for e in answer["errors"]] == [name]
