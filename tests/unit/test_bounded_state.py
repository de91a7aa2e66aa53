"""State per key is bounded in bytes whatever the input: a customer's journey, a call's
callbacks and an identity link each fit in one Kafka record, and what is folded is counted."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from agents.calls import CallsPipeline
from agents.customer import _STATE_FIELDS, CustomerJourney, JourneyRules
from agents.ingest import RawMessage, enriched
from agents.journey import JourneyEvent
from agents.stitching import IdentityStage, Outgoing
from tracker.errors import StateTooLarge
from tracker.store.sink import MemorySink
from tracker.touchpoint import Touchpoint

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
LIMIT = 64 * 1024


def big_event(n: int, url_chars: int = 4000) -> JourneyEvent:
    """One of the issue's events: a 256-character name and a page of about 4,000 characters."""
    return JourneyEvent(
        f"e{n:04d}",
        T0 + timedelta(seconds=n),
        "page_view",
        channel="web",
        source="web_beacon",
        name="n" * 256,
        page_path="/" + "p" * url_chars,
    )


def size_of(journey: CustomerJourney, state: Any) -> int:
    return len(orjson.dumps(state)) + len(journey.customer_id)


def folded(state: str) -> float:
    value = REGISTRY.get_sample_value("tracker_state_folded_total", {"state": state})
    return value or 0.0


def test_one_session_of_480_large_events_folds_to_fit_and_keeps_every_count() -> None:
    journey = CustomerJourney("cust-1", JourneyRules(max_state_bytes=LIMIT))
    before = folded("journey")
    for n in range(480):
        journey.add(big_event(n), 0, "anon:same")
    journey.update()

    state = journey.bounded_state()

    assert size_of(journey, state) <= LIMIT
    assert folded("journey") - before == 480 - len(journey.events)
    assert journey.events  # the newest events are still held, as detail
    summary = journey.update().summary
    assert summary["events"] == 480  # folded events are counted, never lost
    restored = CustomerJourney.from_state("cust-1", journey.rules, state)
    assert restored.update().summary["events"] == 480


def test_a_journey_under_the_limit_is_saved_as_it_is() -> None:
    journey = CustomerJourney("cust-2", JourneyRules(max_state_bytes=LIMIT))
    for n in range(5):
        journey.add(big_event(n, url_chars=100), 0, "anon:x")
    journey.update()
    assert journey.bounded_state() == journey.to_state()
    assert len(journey.events) == 5


def test_forwards_are_forgotten_oldest_first_when_events_cannot_make_room() -> None:
    journey = CustomerJourney("cust-3", JourneyRules(max_state_bytes=LIMIT))
    journey.add(big_event(0, url_chars=100), 0, "anon:x")
    for position in range(2000):
        journey.forwards[f"anon:{position:05d}-{'x' * 40}"] = ("elsewhere", position)
    state = journey.bounded_state()
    assert size_of(journey, state) <= LIMIT
    assert "anon:01999-" + "x" * 40 in journey.forwards  # the newest moves are kept
    assert "anon:00000-" + "x" * 40 not in journey.forwards


def test_an_event_too_large_to_fit_alone_is_refused() -> None:
    journey = CustomerJourney("cust-4", JourneyRules(max_state_bytes=LIMIT))
    journey.add(big_event(0, url_chars=LIMIT), 0, "anon:x")
    journey.update()
    with pytest.raises(StateTooLarge):
        journey.bounded_state()


def callback(call_id: str, n: int, agent: str = "") -> RawMessage:
    wire = {
        "provider": "generic",
        "call_id": call_id,
        "callback_id": f"cb-{n}",
        "status": "ringing" if n == 0 else "updated",
        "event_ts": (T0 + timedelta(seconds=n)).isoformat(),
        "received_ts": (T0 + timedelta(seconds=n)).isoformat(),
        "direction": "inbound",
        "caller_hash": "h1",
        "agent": agent,
    }
    return RawMessage(orjson.dumps(wire), "calls", 0, n)


def calls_pipeline() -> CallsPipeline:
    return CallsPipeline(MemorySink(), MemorySink(), MemorySink(), {}, max_state_bytes=LIMIT)


def test_a_call_keeps_callbacks_up_to_the_limit_and_counts_the_rest() -> None:
    pipeline, state = calls_pipeline(), dict[str, Any]()
    before = folded("call")
    messages = [callback("call-1", n, agent="a" * 250) for n in range(400)]
    asyncio.run(pipeline.handle(messages, state))
    (saved,) = state.values()
    assert len(orjson.dumps(saved)) + len(next(iter(state))) <= LIMIT
    assert 0 < len(saved) < 400
    assert folded("call") - before == 400 - len(saved)


def test_a_callback_too_large_for_any_state_is_refused() -> None:
    # Every field of a callback is bounded at the edge, so only a small cap can be too small
    # for one callback: 512 bytes against two fields of 250 characters.
    pipeline = CallsPipeline(MemorySink(), MemorySink(), MemorySink(), {}, max_state_bytes=512)
    state = dict[str, Any]()
    with pytest.raises(StateTooLarge):
        asyncio.run(pipeline.handle([callback("c" * 250, 0, agent="a" * 250)], state))
    assert state == {}  # state last: nothing of the failed batch was kept


class Outbox:
    def __init__(self) -> None:
        self.sent: list[Outgoing] = []

    async def send_all(self, records: list[Outgoing]) -> None:
        self.sent.extend(records)


def test_an_identity_link_too_large_to_save_is_refused_before_the_graph_changes() -> None:
    stage = IdentityStage(
        Outbox(),  # type: ignore[arg-type]
        "journey",
        "aliases",
        MemorySink(),
        MemorySink(),
        max_state_bytes=LIMIT,
    )
    links: dict[str, Any] = {}
    huge = Touchpoint(
        event_id="00000000-0000-4000-8000-000000000001",
        type="identify",
        name="",
        source="web_beacon",
        channel="web",
        ts=T0,
        device_ts=T0,
        received_ts=T0,
        anonymous_id=uuid.uuid4().hex * (LIMIT // 32),
        user_id="u-1",
    )
    with pytest.raises(StateTooLarge):
        asyncio.run(stage.handle([(enriched(huge).to_wire(), 0)], links))
    assert links == {}


def test_a_journey_read_back_from_its_json_saves_the_same_json() -> None:
    """Stored events read from state are saved again as they were read: that holds only while
    the state's form is today's, which the count of its fields pins."""
    journey = CustomerJourney("c1", JourneyRules())
    for n in range(3):
        journey.add(big_event(n, url_chars=10), version=n, primary="anonymous:a1", routed=n)
    journey.update()
    encoded = journey.encoded_state()
    assert all(len(e) == _STATE_FIELDS for e in orjson.loads(encoded)["events"])
    again = CustomerJourney.from_state("c1", JourneyRules(), encoded)
    assert again.encoded_state() == encoded
    assert orjson.loads(encoded) == journey.bounded_state()
