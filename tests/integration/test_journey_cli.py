"""`tracker journey` as a person runs it, against a running worker on a real Kafka broker."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from typing import Any

import orjson
import pytest

from tests.conftest import Pipeline, make_event

pytestmark = pytest.mark.integration


def tracker(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def journey(pipeline: Pipeline, identifier: str) -> dict[str, Any]:
    done = tracker(pipeline, "journey", identifier, "--format", "json")
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = orjson.loads(done.stdout)
    return answer


def wait_for_journey(
    pipeline: Pipeline, identifier: str, event_ids: list[str], timeout: float = 60.0
) -> dict[str, Any]:
    """Poll until the identifier's timeline is exactly these events; return the last answer."""
    deadline = time.monotonic() + timeout
    answer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        done = tracker(pipeline, "journey", identifier, "--format", "json")
        if done.returncode == 0:
            answer = orjson.loads(done.stdout)
            shown = [e["event_id"] for e in answer["timeline"]]
            summary = answer["journey"] or {}
            if shown == event_ids and summary.get("events") == len(event_ids):
                return answer
        time.sleep(0.5)
    return answer


def test_journey_shows_an_anonymous_visit_and_its_identify_as_one_customer_then_split(
    pipeline: Pipeline,
) -> None:
    anon = "v-" + uuid.uuid4().hex[:10]
    email = f"ada.{uuid.uuid4().hex[:6]}@example.com"
    visit = make_event(anonymous_id=anon, ts="2026-11-20T09:30:00Z")
    identify = make_event(
        type="identify",
        name="signup form",
        anonymous_id=anon,
        email=email.upper(),  # as a person typed it: normalized before hashing
        ts="2026-11-20T09:35:00Z",
    )
    # Identify first: the timeline is in event time, whatever the arrival order.
    assert pipeline.post([identify])[0] == 200
    assert pipeline.post([visit])[0] == 200
    both = [visit["event_id"], identify["event_id"]]

    linked = wait_for_journey(pipeline, f"email:{email}", both)

    assert [e["event_id"] for e in linked["timeline"]] == both
    assert [e["type"] for e in linked["timeline"]] == ["page_view", "identify"]
    assert linked["identifiers"]["anon"] == [anon]
    assert len(linked["identifiers"]["email"]) == 1
    assert email not in orjson.dumps(linked).decode()  # stored and shown as a salted hash only
    assert linked["journey"]["sessions"] == 1
    assert linked["journey"]["stage"] == "consideration"
    assert journey(pipeline, f"anon:{anon}")["customer_id"] == linked["customer_id"]
    assert journey(pipeline, linked["customer_id"])["customer_id"] == linked["customer_id"]

    text = tracker(pipeline, "journey", f"email:{email}")
    assert text.returncode == 0, text.stderr
    assert f"customer     {linked['customer_id']}" in text.stdout
    assert f"anon: {anon}" in text.stdout
    rows = [line for line in text.stdout.splitlines() if line.startswith("2026-11-20")]
    assert [r.split()[2] for r in rows] == ["page_view", "identify"]
    assert rows[0].split()[1] == "09:30:00" and rows[1].split()[1] == "09:35:00"

    split = tracker(pipeline, "journey", "split", f"email:{email}", f"anon:{anon}")
    assert split.returncode == 0, split.stderr
    assert "takes effect within seconds" in split.stdout

    by_email = wait_for_journey(pipeline, f"email:{email}", [identify["event_id"]])
    by_anon = wait_for_journey(pipeline, f"anon:{anon}", [visit["event_id"]])

    assert [e["event_id"] for e in by_email["timeline"]] == [identify["event_id"]]
    assert [e["event_id"] for e in by_anon["timeline"]] == [visit["event_id"]]
    assert by_email["customer_id"] != by_anon["customer_id"]
    assert (by_email["journey"]["events"], by_anon["journey"]["events"]) == (1, 1)
    assert "anon" not in by_email["identifiers"]
    assert "email" not in by_anon["identifiers"]
    # The identify touchpoint keeps the customer it was stitched with; it is re-attributed.
    assert by_email["timeline"][0]["stitched_customer_id"] == by_anon["customer_id"]
    moved = pipeline.query(
        "SELECT current_customer_id FROM customer_touchpoints "
        f"WHERE event_id = '{identify['event_id']}'"
    )
    assert moved.strip() == by_email["customer_id"]
    # The agents kept their state all along: none crashed writing to its table.
    assert "Crashed" not in (pipeline.data_dir / "worker.log").read_text()


def test_journey_of_an_unknown_identifier_says_so_and_exits_1(pipeline: Pipeline) -> None:
    done = tracker(pipeline, "journey", "email:nobody-here@example.com")

    assert done.returncode == 1
    assert "no customer is known by email:nobody-here@example.com" in done.stderr
    assert done.stdout == ""


def test_journey_names_what_is_wrong_with_an_identifier(pipeline: Pipeline) -> None:
    done = tracker(pipeline, "journey", "email:not-an-address")

    assert done.returncode == 1
    assert "is not an email address" in done.stderr
