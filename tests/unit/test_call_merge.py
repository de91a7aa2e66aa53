"""Merging a call's callbacks: any order, any retries, one record. Pure logic, in-memory sinks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from agents.calls import CallsPipeline, call_event_id, merge_callbacks
from agents.forget import ForgottenIdentifiers
from agents.ingest import RawMessage
from collectors.calls.records import CALL_STATUSES, CallCallback
from tracker.store.sink import MemorySink
from tracker.store.tables import CALLS

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def callback(callback_id: str, status: str, offset: float, **fields: Any) -> CallCallback:
    return CallCallback(
        provider="twilio",
        call_id="CA-whole-call",
        leg_id=fields.pop("leg_id", "CA-leg-1"),
        callback_id=callback_id,
        status=status,
        event_ts=T0 + timedelta(seconds=offset),
        received_ts=T0 + timedelta(seconds=offset + 1),
        **fields,
    )


INBOUND_ANSWERED = [
    callback(
        "c1",
        "initiated",
        0,
        direction="inbound",
        caller_hash="h-caller",
        tracking_number="+18005550100",
    ),
    callback("c2", "ringing", 1, direction="inbound", caller_hash="h-caller"),
    callback("c3", "answered", 9, direction="inbound", agent="agent-7"),
    callback(
        "c4", "answered", 10, leg_id="CA-leg-2", direction="outbound", caller_hash="h-business"
    ),
    callback("c5", "completed", 190, direction="inbound", talk_seconds=180.0, hangup_by="caller"),
    callback("c6", "updated", 200, recording=True),
]


def test_a_full_inbound_call_merges_to_the_record_people_expect() -> None:
    record = merge_callbacks(INBOUND_ANSWERED)
    assert record.version == 6
    assert (record.status, record.disposition, record.direction) == (
        "completed",
        "answered",
        "inbound",
    )
    assert record.caller_hash == "h-caller"  # the first leg's caller, not the agent leg's
    assert record.tracking_number == "+18005550100"
    assert (record.started_at, record.answered_at, record.ended_at) == (
        T0,
        T0 + timedelta(seconds=9),
        T0 + timedelta(seconds=190),
    )
    assert (record.ring_seconds, record.talk_seconds) == (9.0, 180.0)
    assert (record.agent, record.hangup_by, record.recording) == ("agent-7", "caller", True)
    assert record.leg_ids == ("CA-leg-1", "CA-leg-2")


def test_dispositions() -> None:
    def disposition(*statuses: str, direction: str = "inbound") -> str:
        return merge_callbacks(
            callback(f"c{i}", s, i, direction=direction) for i, s in enumerate(statuses)
        ).disposition

    assert disposition("ringing") == ""  # still going
    assert disposition("ringing", "canceled") == "abandoned"
    assert disposition("ringing", "completed") == "abandoned"  # the caller gave up unanswered
    assert disposition("ringing", "completed", direction="outbound") == "no-answer"
    assert disposition("ringing", "busy") == "busy"
    assert disposition("ringing", "no-answer") == "no-answer"
    assert disposition("initiated", "failed") == "failed"
    assert disposition("ringing", "answered", "voicemail") == "voicemail"


def test_transfers_are_counted_once_and_warm_wins() -> None:
    record = merge_callbacks(
        [
            callback("a", "answered", 1, transfer_ids=("t1",), transfer_kind="cold"),
            callback("b", "completed", 5, transfer_ids=("t1", "t2"), transfer_kind="warm"),
        ]
    )
    assert (record.transfer_count, record.transfer_kind) == (2, "warm")


_statuses = st.sampled_from(CALL_STATUSES)
_callbacks = st.builds(
    callback,
    callback_id=st.sampled_from([f"cb{i}" for i in range(8)]),
    status=_statuses,
    offset=st.integers(min_value=0, max_value=600).map(float),
    direction=st.sampled_from(["", "inbound", "outbound"]),
    caller_hash=st.sampled_from(["", "h1", "h2"]),
    agent=st.sampled_from(["", "a1", "a2"]),
    talk_seconds=st.none() | st.integers(min_value=0, max_value=900).map(float),
    recording=st.none() | st.booleans(),
    transfer_ids=st.sampled_from([(), ("t1",), ("t2",)]),
    transfer_kind=st.sampled_from(["cold", "warm"]),
)


@settings(max_examples=200, deadline=None)
@given(_callbacks, st.sampled_from(["", "leg-9"]))
def test_a_callback_survives_the_trip_through_kafka(callback: CallCallback, leg: str) -> None:
    sent = replace(callback, leg_id=leg)
    assert CallCallback.from_wire(orjson.loads(orjson.dumps(sent.to_wire()))) == sent


@st.composite
def _distinct_callbacks(draw: st.DrawFn) -> list[CallCallback]:
    drawn = draw(st.lists(_callbacks, min_size=1, max_size=8))
    return list({c.callback_id: c for c in drawn}.values())  # a callback id names one callback


@settings(max_examples=300, deadline=None)
@given(callbacks=_distinct_callbacks(), data=st.data())
def test_any_order_and_any_retries_give_the_same_record(
    callbacks: list[CallCallback], data: st.DataObject
) -> None:
    retried = callbacks + data.draw(st.lists(st.sampled_from(callbacks), max_size=8))
    shuffled = data.draw(st.permutations(retried))

    assert merge_callbacks(shuffled) == merge_callbacks(callbacks)
    assert merge_callbacks(shuffled).version == len(callbacks)


def _messages(callbacks: list[CallCallback]) -> list[RawMessage]:
    return [
        RawMessage(orjson.dumps(c.to_wire()), "calls", 0, offset)
        for offset, c in enumerate(callbacks)
    ]


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(range(len(INBOUND_ANSWERED))), cut=st.integers(0, 6))
async def test_the_pipeline_converges_to_one_call_and_one_touchpoint_whatever_the_order(
    order: list[int], cut: int
) -> None:
    calls, touchpoints, dead = MemorySink(), MemorySink(), MemorySink()
    pipeline = CallsPipeline(calls, touchpoints, dead, {"+18005550100": {"source": "billboard"}})
    state: dict[str, Any] = {}
    arriving = [INBOUND_ANSWERED[i] for i in order]

    await pipeline.handle(_messages(arriving[:cut]), state)
    await pipeline.handle(_messages(arriving[cut:] + arriving[:2]), state)  # with two retries

    event_id = call_event_id("twilio", "CA-whole-call")
    assert {key for key, _ in calls.rows} == {event_id}
    latest = calls.rows[(event_id, max(v for _, v in calls.rows))]
    row = CALLS.named(latest)
    assert (row["version"], row["disposition"], row["talk_seconds"]) == (6, "answered", 180.0)
    assert row["campaign_source"] == "billboard"
    assert {key for key, _ in touchpoints.rows} == {event_id}
    assert max(v for _, v in touchpoints.rows) == 6
    assert dead.rows == {}


async def test_a_replayed_batch_writes_nothing_new() -> None:
    # Read from what the pipeline hands its sinks, not from what the in-memory sinks kept: on a
    # replay its own check (the callbacks already merged) must give back the record under the
    # version already written, which the sinks know, and count every callback as a duplicate.
    calls, touchpoints, dead = MemorySink(), MemorySink(), MemorySink()
    pipeline = CallsPipeline(calls, touchpoints, dead, {})
    state: dict[str, Any] = {}
    await pipeline.handle(_messages(INBOUND_ANSWERED), state)
    written_calls, written_touchpoints = list(calls.added), list(touchpoints.added)
    assert [key for key, _, _ in written_calls] == [(call_event_id("twilio", "CA-whole-call"), 6)]
    calls.added.clear()
    touchpoints.added.clear()
    merged, duplicates = _merged("merged"), _merged("duplicate")

    await pipeline.handle(_messages(INBOUND_ANSWERED), state)

    assert calls.added == written_calls and touchpoints.added == written_touchpoints
    assert (_merged("merged"), _merged("duplicate")) == (merged, duplicates + 6)
    assert dead.added == []


def _merged(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("tracker_call_callbacks_merged_total", {"outcome": outcome})
        or 0.0
    )


async def test_a_malformed_record_on_the_topic_becomes_a_dead_letter() -> None:
    calls, touchpoints, dead = MemorySink(), MemorySink(), MemorySink()
    pipeline = CallsPipeline(calls, touchpoints, dead, {})
    await pipeline.handle([RawMessage(b'{"provider": "twilio"}', "calls", 0, 7)], {})
    [(key, _)] = dead.rows
    assert calls.rows == {} and "malformed" in dead.rows[(key, 0)].reason


async def test_a_forgotten_callers_calls_are_not_stored_again() -> None:
    calls, touchpoints, dead = MemorySink(), MemorySink(), MemorySink()
    forgotten = ForgottenIdentifiers(["phone:h-caller"])
    pipeline = CallsPipeline(calls, touchpoints, dead, {}, forgotten)

    await pipeline.handle(_messages(INBOUND_ANSWERED), {})

    assert calls.rows == {} and touchpoints.rows == {} and dead.rows == {}
